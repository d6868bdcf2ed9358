"""Memory and start-up time of `train.py` as the corpus grows: the token cache at work.

For each size (MB) it builds a corpus under `--work` (never in the
repository): `train.txt` is the shared training split repeated until it
holds that many bytes; `valid.txt` and `test.txt` are the shared ones. Then
it runs `train.py --preset small --max-minutes 0.3 --accuracy-positions 0`
three times on it: first with an empty token cache, then with the cache
the first run built ("cached": it checks the ids' checksum once and
remembers it), then once more ("again": every digest remembered). A run is ended (SIGKILL) `--train-seconds` after its first
step: what follows (the scoring of valid and test with the best checkpoint)
does not depend on the corpus's size and takes minutes on a loaded machine.
It reports for each run:

- peak resident memory: the largest ru_maxrss of the run's processes (the
  trainer and its encoding workers), from a small wrapper process's
  RUSAGE_CHILDREN; and the peak of the summed proportional set size (PSS)
  of the whole process tree, polled every 0.1 s (shared pages counted once);
- time to the first step: from launch to the first `step` record in
  metrics.jsonl (polled every 0.05 s); and the trainer's CPU time when
  training began (imports included: `cpu_seconds_before_training` in its
  `run` record), which a loaded machine does not inflate as it does wall time;
- encoding throughput: training-text bytes per second of the first run's
  encoding (fingerprint, normalisation, tokenization and writing).

    python bench/corpus_scale.py [--sizes 10 100 500] [--work /tmp/reach-corpus-scale] [--json bench/results/corpus_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora" / "wiki-subset"
# Runs train.py and prints the largest resident set of any process it started (in KiB) as its last line.
WRAPPER = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")


def build_corpus(directory: Path, megabytes: int, source: Path) -> Path:
    """A corpus whose train.txt is `source`'s repeated up to `megabytes` MB (whole copies, the last one cut at a line)."""
    train = directory / "train.txt"
    target = megabytes * 10**6
    if train.is_file() and abs(train.stat().st_size - target) < 2 * 10**6:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    block = (source / "train.txt").read_bytes()
    with open(train, "wb") as out:
        written = 0
        while written + len(block) <= target:
            out.write(block)
            written += len(block)
        rest = block[: target - written]
        out.write(rest[: rest.rfind(b"\n") + 1])
    for name in ("valid", "test"):
        shutil.copy(source / f"{name}.txt", directory / f"{name}.txt")
    return directory


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found += [int(child) for child in children]
        frontier += [int(child) for child in children]
    return found


def _pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def run_once(corpus: Path, cache: Path, out: Path, minutes: float, train_seconds: float) -> dict:
    """One train.py run; its peak memory, time to the first step and what its metrics say of the token cache."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-c", WRAPPER, sys.executable, str(ROOT / "train.py"), "--corpus", str(corpus), "--preset", "small",
               "--max-minutes", str(minutes), "--accuracy-positions", "0", "--token-cache", str(cache), "--quiet", "--out", str(out)]
    begun = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    first_step = None
    peak_pss = 0
    polled = 0.0
    metrics = out / "metrics.jsonl"
    while process.poll() is None:
        now = time.perf_counter()
        if first_step is None and metrics.is_file() and '"kind": "step"' in metrics.read_text(encoding="utf-8"):
            first_step = now - begun
        if first_step is not None and now - begun > first_step + train_seconds:
            for pid in _tree(process.pid)[1:]:  # train.py (and any worker left); the wrapper then reports and exits
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        if now - polled >= 0.1:
            peak_pss = max(peak_pss, _pss_kib(_tree(process.pid)))
            polled = now
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if first_step is None:
        raise SystemExit(f"train.py failed on {corpus}:\n{stderr[-3000:]}")
    run = next(json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if '"kind": "run"' in line)
    steps = sum('"kind": "step"' in line for line in metrics.read_text(encoding="utf-8").splitlines())
    return {"seconds": round(time.perf_counter() - begun, 2), "first_step_s": round(first_step, 2) if first_step else None,
            "max_rss_mb": round(int(stdout.strip().splitlines()[-1]) / 1024), "peak_tree_pss_mb": round(peak_pss / 1024),
            "reused_cache": run["token_cache"]["reused"], "cache_seconds": run["token_cache"]["seconds"],
            "seconds_before_training": run["seconds_before_training"],
            "cpu_seconds_before_training": run["cpu_seconds_before_training"], "train_units": run["train_units"], "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500], help="corpus sizes in MB")
    parser.add_argument("--work", type=Path, default=Path("/tmp/reach-corpus-scale"), help="where corpora, caches and runs go")
    parser.add_argument("--source", type=Path, default=SHARED, help="the corpus whose train split is repeated")
    parser.add_argument("--minutes", type=float, default=0.3, help="each run's training budget")
    parser.add_argument("--train-seconds", type=float, default=10.0, help="end each run this long after its first step")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the corpora, caches and runs under --work")
    args = parser.parse_args(argv)
    if ROOT in args.work.resolve().parents:
        raise SystemExit("--work must be outside the repository")
    results = []
    print(f"{'size':>6} {'run':>7} {'first step':>11} {'CPU before':>11} {'max RSS':>8} {'tree PSS':>9} {'encode':>14} {'units':>12}")
    for size in args.sizes:
        corpus = build_corpus(args.work / f"corpus-{size}MB", size, args.source)
        cache = args.work / f"cache-{size}MB"
        shutil.rmtree(cache, ignore_errors=True)
        train_bytes = (corpus / "train.txt").stat().st_size
        for label in ("first", "cached", "again"):
            figures = run_once(corpus, cache, args.work / f"run-{size}MB-{label}", args.minutes, args.train_seconds)
            if label == "first":
                figures["encode_mb_per_s"] = round(train_bytes / 1e6 / figures["cache_seconds"], 2)
            results.append({"size_mb": size, "train_bytes": train_bytes, "run": label, **figures})
            encode = f"{figures['encode_mb_per_s']:.2f} MB/s" if label == "first" else f"({figures['cache_seconds']:.1f} s check)"
            print(f"{size:>4}MB {label:>7} {figures['first_step_s']:>10}s {figures['cpu_seconds_before_training']:>10}s {figures['max_rss_mb']:>6}MB {figures['peak_tree_pss_mb']:>7}MB "
                  f"{encode:>14} {figures['train_units']:>12,}", flush=True)
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
            for label in ("first", "cached", "again"):
                shutil.rmtree(args.work / f"run-{size}MB-{label}", ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "minutes": args.minutes, "results": results}, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
