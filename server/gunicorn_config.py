"""gunicorn's settings for Reach: `gunicorn -c python:server.gunicorn_config --bind ADDRESS 'server:create_app()'`.

- gthread workers, each with twice REACH_MAX_IN_FLIGHT threads and as many
  connections: the app computes at most REACH_MAX_IN_FLIGHT requests at once
  per worker and answers the next ones 429 at once from the spare threads
  (server/access.py). With sync workers, or with more connections than
  threads, the excess would wait where the app cannot see it (the listen
  queue, the thread pool's queue) for as long as the requests before it take.
- Keep-alive off: a kept-alive connection would hold one of those
  connections between requests.
- glibc's malloc set as each worker starts: at most 2 arenas, and blocks of
  8 MiB or more mapped on their own, so that the memory of a long varied
  load levels off (post_fork below).
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


M_ARENA_MAX = -8  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MALLOC_ARENAS = 2
MMAP_THRESHOLD_BYTES = 8 * 2**20


def post_fork(server, worker) -> None:
    """Before the worker starts its threads, glibc's malloc (nothing elsewhere): at most MALLOC_ARENAS arenas, and
    blocks of MMAP_THRESHOLD_BYTES or more always mapped on their own (returned to the system when freed).

    By default glibc gives each thread that meets a busy arena a new one (up to 8 per core), and raises its mmap
    threshold up to 32 MiB as large blocks are freed, so that later large tensors come from the arenas; a gthread
    worker's threads, each computing with tensors of a different size, then keep more and more memory there. In a
    10-minute soak (docs/BENCHMARKS.md, "Operating limits") a worker grew 12-17% with the defaults, 8-11% with 2
    arenas, and 5-8% with 2 arenas and the 8 MiB threshold, at the same throughput (a 1 MiB threshold: flat too,
    but 16% slower). MALLOC_ARENA_MAX and MALLOC_MMAP_THRESHOLD_ in the environment win."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if not os.environ.get("MALLOC_ARENA_MAX"):
            libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        if not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


def child_exit(server, worker) -> None:
    """A worker ended (or was killed): its live gauges (requests in flight, prefix-cache bytes) no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, path=str(_metrics_folder))


def on_exit(server) -> None:
    if _made_folder:
        shutil.rmtree(_metrics_folder, ignore_errors=True)
