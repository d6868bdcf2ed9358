"""torchrun + DistributedDataParallel: 2 processes on 127.0.0.1 against 1 process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, train_tiny

pytestmark = pytest.mark.slow

SETTINGS = ["--preset", "tiny", "--max-steps", "16", "--max-minutes", "none", "--eval-interval", "8", "--batch-size", "16",
            "--dropout", "0", "--input-dropout", "0", "--accuracy-positions", "0", "--bptt", "16", "--bptt-stride", "8",
            "--eval-max-chars", "5000", "--quiet"]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(processes: int, args: list[str], corpus_dir: Path) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [str(torchrun), "--nnodes", "1", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
               "--master_port", str(_port()), str(ROOT / "train.py"), "--corpus", str(corpus_dir), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, corpus_dir):
    out = tmp_path_factory.mktemp("ddp") / "two"
    result = _torchrun(2, [*SETTINGS, "--out", str(out)], corpus_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_two_processes_train_and_end_with_identical_weights(two_process_run):
    out, result = two_process_run
    records = _records(out)
    assert records[0]["processes"] == 2
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == 16 and steps[-1]["loss"] < steps[0]["loss"]  # the loss falls
    check = [r for r in records if r["kind"] == "processes"]
    assert check and check[0]["max_weight_difference"] == 0.0  # every rank holds rank 0's weights
    assert result.stdout.count("run: ") == 1  # rank 0 alone reports
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["best", "last", "metrics.jsonl"]


def test_two_processes_equal_one_process_with_the_same_global_batch(two_process_run, tmp_path, corpus):
    out, _ = two_process_run
    args = dict(max_steps=16, max_minutes=None, eval_interval=8, batch_size=16, dropout=0.0, input_dropout=0.0,
                accuracy_positions=0, bptt=16, bptt_stride=8, eval_max_chars=5000)
    single = train_tiny(tmp_path / "one", corpus, **args)
    assert single.state.step == 16
    one = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    two = load_file(str(out / "last" / "model.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    losses_one = [r["loss"] for r in _records(tmp_path / "one") if r["kind"] == "step"]
    losses_two = [r["loss"] for r in _records(out) if r["kind"] == "step"]
    assert losses_two == pytest.approx(losses_one, rel=1e-4)
    carried_one = load_file(str(tmp_path / "one" / "last" / "training.safetensors"))["state.carried"]
    carried_two = load_file(str(out / "last" / "training.safetensors"))["state.carried"]
    torch.testing.assert_close(carried_two, carried_one, rtol=1e-4, atol=1e-5)  # all ranks' rows, in order


def test_resume_with_another_number_of_processes(two_process_run, tmp_path, corpus_dir):
    out, _ = two_process_run
    copy = tmp_path / "resumed"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--resume", str(copy), "--max-steps", "20", "--quiet"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((copy / "last" / "config.json").read_text())["metrics"]["steps"] == 20
    refused = _torchrun(3, ["--resume", str(copy), "--max-steps", "24", "--quiet"], corpus_dir)
    assert refused.returncode != 0
    assert "must be divisible by the number of processes (3)" in refused.stderr
    assert "Traceback" not in "\n".join(line for line in refused.stderr.splitlines() if "train.py: error" in line)


def test_the_backend_and_its_collectives_follow_the_training_device():
    """nccl with each rank's own GPU for a CUDA run; gloo with CPU tensors for any other (MPS included)."""
    from lm.train.distributed import Distributed, backend_for

    assert backend_for(torch.device("cuda", 1)) == ("nccl", torch.device("cuda", 1))
    assert backend_for(torch.device("cpu")) == ("gloo", torch.device("cpu"))
    assert backend_for(torch.device("mps")) == ("gloo", torch.device("cpu"))
    assert Distributed().device == torch.device("cpu")


def test_collectives_take_tensors_from_another_device_and_return_cpu_ones(tmp_path):
    """Two gloo processes: what the collectives take is moved to the backend's device (the CPU for gloo), what the
    gathers give back is on the CPU (it goes into checkpoints), and the scalar decisions agree."""
    script = tmp_path / "collectives.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from lm.train.distributed import init_distributed, shutdown\n"
        "ranks = init_distributed(torch.device('cpu'))\n"
        "rows = ranks.gather_rows(torch.full((1, 2, 3), float(ranks.rank), dtype=torch.float64))\n"
        "stack = ranks.gather_stack(torch.tensor([ranks.rank], dtype=torch.uint8))\n"
        "stop, elapsed, loss = ranks.agree(ranks.rank == 1, 1.0 + ranks.rank, 2.0 * ranks.rank)\n"
        "values = ranks.broadcast_floats([float(ranks.rank), 5.0])\n"
        "torch.manual_seed(ranks.rank)\n"
        "spread = ranks.weight_spread(torch.nn.Linear(2, 2))  # different weights on each rank\n"
        "assert ranks.backend == 'gloo' and ranks.device.type == 'cpu'\n"
        "assert rows.device.type == 'cpu' and rows[0, :, 0].tolist() == [0, 0, 1, 1], rows\n"
        "assert stack.device.type == 'cpu' and stack.view(-1).tolist() == [0, 1]\n"
        "assert (stop, elapsed, loss) == (True, 2.0, 1.0) and values == [0.0, 5.0]\n"
        "sys.stdout.write(f'ok {ranks.rank} {spread > 0}\\n')  # one write: the two ranks share the pipe\n"
        "shutdown(ranks)\n")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", str(_port()), str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(line for line in done.stdout.splitlines() if line.startswith("ok")) == ["ok 0 True", "ok 1 True"]
