"""Load test of the production server (gunicorn over the app factory, server/gunicorn_config.py) on 127.0.0.1.

    python bench/load.py --model runs/base [--clients 4] [--seconds 20] [--workers 2]            # the modes
    python bench/load.py --model runs/base --scenario overload [--clients 16] [--seconds 60]     # then 4x clients
    python bench/load.py --model runs/base --scenario soak [--clients 16] [--seconds 600]
    python bench/load.py --model runs/base --scenario kill [--clients 16] [--seconds 60]

Starts gunicorn on a free port (gthread workers, at most REACH_MAX_IN_FLIGHT
model requests computing per worker). Each client posts 200-word texts from
the test split in a loop, one request at a time; a 429 answer is counted
apart, and the client waits its Retry-After before the next request, as
OpenAI's client does. Reports requests/s, median and 99th percentile
latency, errors (any other non-200 answer or failed connection) and
timeouts (no answer within --client-timeout), and the workers' resident memory.

- modes: for each attribution mode ("none", "summary", "full") C clients for S seconds.
- overload: C clients for S seconds, then 4C clients for S seconds on the same
  server ("summary"): the excess must get 429 quickly, and the accepted
  requests' p99 stay within 2x the first run's.
- soak: C clients for S seconds ("summary", 2,000 different texts so that the
  prefix cache keeps turning over), the workers' memory every 30 s; flat
  means the last sample within 10% of the one after the first minute.
- kill: C clients for S seconds; a third of the way in one worker gets kill -9:
  how many requests failed and how (a reset connection is clean; a hang or a
  5xx is not), and how long until gunicorn's replacement serves.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from predict_speed import contexts  # noqa: E402

from corpora import load_corpus  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_memory(master: int) -> list[float]:
    """Resident memory (MiB) of the gunicorn workers, children of `master`."""
    sizes = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("PPid", "0").strip()) == master:
            sizes.append(int(fields["VmRSS"].split()[0]) / 1024)
    return sorted(sizes)


TIMEOUT = -1  # the status of a request that got no answer within the client's timeout
CLIENT_TIMEOUT = 120.0


@dataclass(frozen=True)
class Answer:
    """One request as a client saw it: status (0: the connection failed, TIMEOUT: no answer in time), seconds."""

    status: int
    seconds: float
    retry_after: float = 0.0
    failure: str = ""  # the exception's class when the connection failed


def post(url: str, body: dict, timeout: float = CLIENT_TIMEOUT) -> Answer:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    begun = time.perf_counter()
    retry_after, failure = 0.0, ""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
        error.read()
        retry_after = float(error.headers.get("Retry-After") or 0)
    except (TimeoutError, socket.timeout):
        status = TIMEOUT
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None)
        status = TIMEOUT if isinstance(reason, (TimeoutError, socket.timeout)) else 0
        failure = type(reason if isinstance(reason, BaseException) else error).__name__
    return Answer(status, time.perf_counter() - begun, retry_after, failure)


def percentile(values: list[float], share: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(share * len(values)))] if values else float("nan")


def drive(url: str, texts: list[str], mode: str, clients: int, seconds: float,
          during=None) -> tuple[list[tuple[float, Answer]], float]:
    """C clients posting for `seconds`: (start time since the beginning, answer) of every request, and the elapsed
    time; `during(begun)`, when given, runs in this thread meanwhile (a soak's samples, a kill)."""
    answers: list[tuple[float, Answer]] = []
    lock = threading.Lock()
    begun = time.perf_counter()
    stop = begun + seconds

    def client(index: int) -> None:
        position = index
        while time.perf_counter() < stop:
            sent = time.perf_counter() - begun
            answer = post(url, {"text": texts[position % len(texts)], "k": 5, "attribution": mode})
            position += clients
            with lock:
                answers.append((sent, answer))
            if answer.status == 429:
                time.sleep(min(answer.retry_after or 1.0, max(0.0, stop - time.perf_counter())))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    if during is not None:
        during(begun)
    for thread in threads:
        thread.join()
    return answers, time.perf_counter() - begun


def summary(answers: list[tuple[float, Answer]], elapsed: float) -> dict:
    accepted = [a.seconds for _, a in answers if a.status == 200]
    refused = [a.seconds for _, a in answers if a.status == 429]
    failed = [a for _, a in answers if a.status not in (200, 429)]
    return {"requests": len(answers), "rps": len(accepted) / elapsed, "median_ms": 1000 * percentile(accepted, 0.5),
            "p99_ms": 1000 * percentile(accepted, 0.99), "accepted": len(accepted), "refused": len(refused),
            "refused_median_ms": 1000 * percentile(refused, 0.5), "refused_p99_ms": 1000 * percentile(refused, 0.99),
            "errors": len(failed), "timeouts": sum(a.status == TIMEOUT for a in failed),
            "failures": dict(collections.Counter(a.failure or str(a.status) for a in failed))}


def line(label: str, figures: dict) -> str:
    text = (f"{label}: {figures['rps']:6.2f} req/s accepted  median {figures['median_ms']:7.1f} ms  p99 "
            f"{figures['p99_ms']:7.1f} ms  accepted {figures['accepted']}/{figures['requests']}  429 {figures['refused']}")
    if figures["refused"]:
        text += f" (median {figures['refused_median_ms']:.1f} ms, p99 {figures['refused_p99_ms']:.1f} ms)"
    return text + f"  errors {figures['errors']} {figures['failures'] or ''}  timeouts {figures['timeouts']}"


def run_mode(url: str, texts: list[str], mode: str, clients: int, seconds: float) -> dict:
    return summary(*drive(url, texts, mode, clients, seconds))


def wait_ready(base: str, server: subprocess.Popen, log: Path, seconds: float = 180) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
        if server.poll() is not None:
            print(log.read_text(), file=sys.stderr)
            return False
    return False


def workers_serving(log: Path) -> int:
    """How many workers have loaded their models so far (create_app's "serving" line, one per worker start)."""
    return sum(line.startswith("serving ") for line in log.read_text(errors="replace").splitlines())


def mib(sizes: list[float]) -> list[int]:
    return [round(size) for size in sizes]


def overload(base: str, texts: list[str], clients: int, seconds: float) -> None:
    first = run_mode(base + "/v1/predict", texts, "summary", clients, seconds)
    print(line(f"{clients:>3} clients", first))
    second = run_mode(base + "/v1/predict", texts, "summary", 4 * clients, seconds)
    print(line(f"{4 * clients:>3} clients", second))
    print(f"accepted p99 at {4 * clients} clients / at {clients}: {second['p99_ms'] / first['p99_ms']:.2f} (bound: 2)")


def prefix_cache_mib(base: str) -> float:
    """What the workers' prefix caches hold now (MiB), from /metrics (nan when it cannot be read)."""
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return float("nan")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("reach_prefix_cache_bytes{")) / 2**20


def soak(base: str, texts: list[str], clients: int, seconds: float, master: int) -> None:
    samples: list[tuple[float, list[float]]] = []

    cached: list[float] = []

    def sample(begun: float) -> None:
        while True:
            samples.append((time.perf_counter() - begun, worker_memory(master)))
            cached.append(prefix_cache_mib(base))
            if time.perf_counter() - begun >= seconds:
                break
            time.sleep(min(30.0, max(0.0, seconds - (time.perf_counter() - begun))))

    figures = summary(*drive(base + "/v1/predict", texts, "summary", clients, seconds, during=sample))
    print(line(f"{clients} clients {seconds:.0f} s", figures))
    for (at, sizes), held in zip(samples, cached):
        print(f"  {at:6.0f} s  worker RSS MiB {mib(sizes)}  prefix caches (both workers) {held:.0f} MiB")
    settled = next((sizes for at, sizes in samples if at >= 60), samples[0][1])
    last = samples[-1][1]
    change = [100 * (b - a) / a for a, b in zip(settled, last)]
    print(f"worker RSS from the first minute's end to the end: {mib(settled)} -> {mib(last)} MiB "
          f"({', '.join(f'{c:+.1f}%' for c in change)}; flat means within 10%)")


def kill(base: str, texts: list[str], clients: int, seconds: float, master: int, log: Path) -> None:
    events: dict[str, float] = {}

    def kill_one(begun: float) -> None:
        time.sleep(seconds / 3)
        serving = workers_serving(log)
        victim = max(worker_pid for worker_pid in worker_pids(master))
        os.kill(victim, signal.SIGKILL)
        events["killed"] = time.perf_counter() - begun
        events["victim"] = victim
        while time.perf_counter() - begun < seconds:
            if workers_serving(log) > serving:
                events["replaced"] = time.perf_counter() - begun
                break
            time.sleep(0.1)

    answers, elapsed = drive(base + "/v1/predict", texts, "summary", clients, seconds, during=kill_one)
    print(line(f"{clients} clients {seconds:.0f} s", summary(answers, elapsed)))
    killed = events["killed"]
    failed = [(sent, a) for sent, a in answers if a.status not in (200, 429)]
    print(f"worker {events['victim']} killed at {killed:.1f} s; its replacement served "
          + (f"{events['replaced'] - killed:.1f} s later" if "replaced" in events else "not within the run"))
    print(f"failed requests: {len(failed)}, all sent before the kill: {all(sent <= killed for sent, _ in failed)}, "
          f"how: {dict(collections.Counter(a.failure or str(a.status) for _, a in failed))}, "
          f"slowest failure {max((a.seconds for _, a in failed), default=0):.1f} s")
    after = [a for sent, a in answers if sent > killed + 1]
    print(f"requests sent a second or more after the kill: {len(after)}, of them failed "
          f"{sum(a.status not in (200, 429) for a in after)}")


def worker_pids(master: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{master}\n" in status:
                pids.append(int(entry.name))
    return pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/base")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    parser.add_argument("--scenario", choices=("modes", "overload", "soak", "kill"), default="modes")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="per run (at most 900)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--max-in-flight", type=int, default=None, help="REACH_MAX_IN_FLIGHT (default: the server's)")
    args = parser.parse_args(argv)
    seconds = min(args.seconds, 900.0)
    count = 2000 if args.scenario == "soak" else 64
    texts = [context for context, _ in contexts(load_corpus(args.corpus).test.text, 200, count, seed=3)]
    port = free_port()
    env = {**os.environ, "REACH_MODELS": f"model={args.model}", "REACH_THREADS": str(args.threads_per_worker)}
    if args.max_in_flight:
        env["REACH_MAX_IN_FLIGHT"] = str(args.max_in_flight)
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log = Path(tempfile.mkdtemp(prefix="reach-load-")) / "gunicorn.log"
    with open(log, "w") as stderr:  # a file, not a pipe: the access log would fill a pipe and stall the workers
        server = subprocess.Popen([str(gunicorn), "-c", "python:server.gunicorn_config", "--workers", str(args.workers),
                                   "--bind", f"127.0.0.1:{port}", "server:create_app()"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(base, server, log):
            return 1
        while workers_serving(log) < args.workers:  # every worker has loaded its models
            time.sleep(0.5)
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            limit = next(l for l in response.read().decode().splitlines() if l.startswith("reach_requests_in_flight_limit"))
        print(f"gunicorn (gthread): {args.workers} workers x {args.threads_per_worker} torch threads, "
              f"{limit.split()[-1]} requests in flight per worker; {args.clients} clients; {seconds:.0f} s; "
              f"200-word texts ({len(texts)}), k = 5")
        if args.scenario == "modes":
            for mode in ("none", "summary", "full"):
                before = worker_memory(server.pid)
                figures = run_mode(base + "/v1/predict", texts, mode, args.clients, seconds)
                after = worker_memory(server.pid)
                print(line(f"{mode:>8}", figures) + f"  worker RSS MiB {mib(before)} -> {mib(after)}")
        elif args.scenario == "overload":
            overload(base, texts, args.clients, seconds)
        elif args.scenario == "soak":
            soak(base, texts, args.clients, seconds, server.pid)
        else:
            kill(base, texts, args.clients, seconds, server.pid, log)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
