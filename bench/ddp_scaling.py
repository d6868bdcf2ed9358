"""Training tokens/s with 1 and 2 processes (torchrun, DDP over gloo), and the communication cost per step.

    python bench/ddp_scaling.py [--corpus DIR] [--steps 40] [--preset small]

Each configuration trains the same global batch for `--steps` updates; the
figure is the median of the per-step tokens/s that rank 0 logs (whole job).
The communication cost is the median time to all-reduce one step's gradients
(a float32 tensor as large as the model) between 2 processes on 127.0.0.1.
On a 2-core machine two processes share the cores that one process already
used, so do not expect a speed-up here: the point is the overhead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(processes: int, args: argparse.Namespace, out: Path) -> float:
    command = [str(Path(sys.executable).with_name("torchrun")), "--nnodes", "1", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "train.py"),
               "--corpus", args.corpus, "--preset", args.preset, "--max-steps", str(args.steps), "--max-minutes", "none",
               "--eval-interval", "100000", "--accuracy-positions", "0", "--eval-max-chars", "5000", "--quiet", "--out", str(out)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in steps if r.get("kind") == "step"][5:]  # skip warm-up steps
    return statistics.median(rates)


def _allreduce_worker(rank: int, port: int, numel: int, repeats: int, result) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    tensor = torch.randn(numel)
    times = []
    for _ in range(repeats + 3):
        dist.barrier()
        begun = time.perf_counter()
        dist.all_reduce(tensor)
        times.append(time.perf_counter() - begun)
    if rank == 0:
        result.put(statistics.median(times[3:]))
    dist.destroy_process_group()


def allreduce_seconds(numel: int, repeats: int = 20) -> float:
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    workers = [context.Process(target=_allreduce_worker, args=(rank, port, numel, repeats, queue)) for rank in range(2)]
    for worker in workers:
        worker.start()
    seconds = queue.get(timeout=300)
    for worker in workers:
        worker.join()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        one = train(1, args, Path(scratch) / "one")
        two = train(2, args, Path(scratch) / "two")
        meta = json.loads((Path(scratch) / "two" / "last" / "config.json").read_text())
        parameters = meta["parameters"]
        step_seconds = 1 / two * meta["train"]["batch_size"] * meta["train"]["bptt"]
    cost = allreduce_seconds(parameters)
    print(f"preset {args.preset}: {parameters:,} parameters, global batch {meta['train']['batch_size']} x {meta['train']['bptt']}, "
          f"{os.cpu_count()} cores")
    print(f"1 process: {one:,.0f} tokens/s; 2 processes: {two:,.0f} tokens/s (x{two / one:.2f})")
    print(f"all-reduce of one step's gradients ({parameters * 4 / 2**20:.1f} MiB, gloo, 127.0.0.1): {cost * 1000:.1f} ms "
          f"({cost / step_seconds:.1%} of a 2-process step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
