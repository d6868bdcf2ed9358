"""`python -m lm plot`: a run's training curves to a PNG, given the run directory or its metrics file."""

import subprocess
import sys

import pytest

from conftest import ROOT


def _plot(*args):
    return subprocess.run([sys.executable, "-m", "lm", "plot", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("given", ["run", "metrics file"])
def test_plot_draws_beside_the_metrics_given_a_run_or_its_file(tiny_run, tmp_path, given):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes((tiny_run.out / "metrics.jsonl").read_bytes())
    done = _plot(run if given == "run" else run / "metrics.jsonl")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and done.stdout.strip() == str(run / "metrics.png")
    assert (run / "metrics.png").read_bytes().startswith(b"\x89PNG")


def test_plot_of_missing_metrics_is_one_line(tmp_path):
    done = _plot(tmp_path / "nothing" / "metrics.jsonl")
    assert done.returncode == 1 and done.stderr.strip().startswith("lm plot: error: no metrics at")
