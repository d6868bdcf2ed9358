"""gunicorn's settings for Reach: `gunicorn -c python:server.gunicorn_config --bind ADDRESS 'server:create_app()'`.

- gthread workers, each with twice REACH_MAX_IN_FLIGHT threads and as many
  connections: the app computes at most REACH_MAX_IN_FLIGHT requests at once
  per worker and answers the next ones 429 at once from the spare threads
  (server/access.py). With sync workers, or with more connections than
  threads, the excess would wait where the app cannot see it (the listen
  queue, the thread pool's queue) for as long as the requests before it take.
- Keep-alive off: a kept-alive connection would hold one of those
  connections between requests.
- At most 2 malloc arenas per worker (glibc), set as each worker starts:
  the memory of a long varied load stays flatter (post_fork below).
- Metrics of every worker: PROMETHEUS_MULTIPROC_DIR (a new temporary folder
  when unset, emptied at start and removed at exit), and a dead worker's
  live gauges are dropped (server/metrics.py).
Flags given on the command line win over these (`--workers`, `--bind`, ...).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from server.settings import DEFAULTS, settings_from_environment

_in_flight = settings_from_environment(os.environ).get("REACH_MAX_IN_FLIGHT", DEFAULTS["REACH_MAX_IN_FLIGHT"])

worker_class = "gthread"
threads = 2 * _in_flight
worker_connections = threads
keepalive = 0
timeout = 120  # seconds a worker may go silent (a gthread worker's main loop stays alive while requests compute)
graceful_timeout = 30

_made_folder = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _made_folder:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="reach-metrics-")
_metrics_folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_starting(server) -> None:
    """Start from no figures: files left by an earlier run would be added to this one's."""
    _metrics_folder.mkdir(parents=True, exist_ok=True)
    for stale in _metrics_folder.glob("*.db"):
        stale.unlink()


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
MALLOC_ARENAS = 2


def post_fork(server, worker) -> None:
    """Before the worker starts its threads: at most MALLOC_ARENAS malloc arenas (glibc; nothing elsewhere).

    glibc gives each thread that meets a busy arena a new one, up to 8 per core; a gthread worker's threads each
    computing with different tensor sizes then keep memory in many arenas, and the worker's memory creeps up
    under a long varied load (docs/BENCHMARKS.md, the soak). MALLOC_ARENA_MAX in the environment wins."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass


def child_exit(server, worker) -> None:
    """A worker ended (or was killed): its live gauges (requests in flight, prefix-cache bytes) no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, path=str(_metrics_folder))


def on_exit(server) -> None:
    if _made_folder:
        shutil.rmtree(_metrics_folder, ignore_errors=True)
