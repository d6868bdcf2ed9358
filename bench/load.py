"""Load test of the production server (gunicorn over the app factory) on 127.0.0.1.

    python bench/load.py --model runs/base [--clients 4] [--seconds 20] [--workers 2]

Starts gunicorn on a free port, then for each attribution mode ("none",
"summary", "full") runs C concurrent clients for S seconds, each posting
200-word texts from the test split. Reports requests/s, median and 99th
percentile latency, errors (any non-200 answer or failed connection), and
the resident memory of the workers before and after each mode.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
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


def post(url: str, body: dict) -> tuple[int, float]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    begun = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        status = 0
    return status, time.perf_counter() - begun


def run_mode(url: str, texts: list[str], mode: str, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(index: int) -> None:
        nonlocal errors
        position = index
        while time.perf_counter() < stop:
            status, latency = post(url, {"text": texts[position % len(texts)], "k": 5, "attribution": mode})
            position += clients
            with lock:
                latencies.append(latency)
                errors += status != 200

    begun = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begun
    latencies.sort()
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "median_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/base")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="per attribution mode (at most 300)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args(argv)
    seconds = min(args.seconds, 300.0)
    texts = [context for context, _ in contexts(load_corpus(args.corpus).test.text, 200, 64, seed=3)]
    port = free_port()
    env = {**os.environ, "REACH_MODELS": f"model={args.model}", "REACH_THREADS": str(args.threads_per_worker)}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    server = subprocess.Popen([str(gunicorn), "--workers", str(args.workers), "--bind", f"127.0.0.1:{port}", "--timeout", "120",
                               "server:create_app()"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
            if server.poll() is not None:
                print(server.stderr.read().decode(), file=sys.stderr)
                return 1
        time.sleep(2)  # let every worker finish loading
        print(f"gunicorn: {args.workers} workers x {args.threads_per_worker} torch threads; {args.clients} clients; "
              f"{seconds:.0f} s per mode; 200-word texts")
        for mode in ("none", "summary", "full"):
            before = worker_memory(server.pid)
            figures = run_mode(base + "/v1/predict", texts, mode, args.clients, seconds)
            after = worker_memory(server.pid)
            print(f"{mode:>8}: {figures['rps']:6.2f} req/s  median {figures['median_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms  "
                  f"errors {figures['errors']}/{figures['requests']}  worker RSS MiB before {[round(m) for m in before]} "
                  f"after {[round(m) for m in after]}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
