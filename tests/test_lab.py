"""The BPTT lab: the plan of runs, equal parameter counts, and the quick lab end to end with its report."""

import html
import json
import re

import pytest

from conftest import external_references
from lm.__main__ import main as lm_main
from lm.reports.lab import LabSettings, hidden_for_parameters, lab_parameters, plan_runs


def test_cells_are_sized_to_equal_parameter_counts():
    settings = LabSettings(parameters=400_000, embed_dim=64)
    counts = {cell: lab_parameters(cell, hidden_for_parameters(cell, 120, settings), 120, settings) for cell in settings.cells}
    assert all(abs(count - 400_000) / 400_000 < 0.01 for count in counts.values()), counts
    hidden = {cell: hidden_for_parameters(cell, 120, settings) for cell in settings.cells}
    assert hidden["rnn_tanh"] > hidden["gru"] > hidden["lstm"]


def test_the_plan_trains_each_configuration_once():
    runs = plan_runs(LabSettings(), vocab=120)
    names = [run.name for run in runs]
    assert len(names) == len(set(names)) == 10  # 4 cells + 2 x 2 other k2 + 2 other clipping modes
    shared = next(run for run in runs if run.name == "rnn_tanh-k32-clip-norm")
    assert set(shared.groups) == {"cells", "truncation", "clipping"}
    assert {run.bptt for run in runs if run.cell == "lstm"} == {8, 32, 128}
    assert {run.clipping for run in runs if run.cell == "rnn_tanh" and run.bptt == 32} == {"off", "norm", "value"}
    subset = plan_runs(LabSettings(cells=("lstm",), k2s=(16, 64)), vocab=120)
    assert [run.name for run in subset] == ["lstm-k32-clip-norm", "lstm-k16-clip-norm", "lstm-k64-clip-norm"]
    # `lm lab --k2 128 --k2s 128 --clipping norm`: the cells compared at one truncation length, nothing else.
    focused = plan_runs(LabSettings(cells=("lstm", "gru", "rnn_tanh"), default_k2=128, k2s=(128,), clipping=("norm",)),
                        vocab=120)
    assert [run.name for run in focused] == ["lstm-k128-clip-norm", "gru-k128-clip-norm", "rnn_tanh-k128-clip-norm"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "tpu"])
def test_a_lab_on_a_device_this_machine_lacks_stops_before_training(tmp_path, corpus_dir, capsys, device):
    out = tmp_path / "lab"
    assert lm_main(["lab", "--quick", "--task", "recall", "--device", device, "--corpus", str(corpus_dir), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"lm lab: error: --device {device}") and len(error.strip().splitlines()) == 1
    assert not (out / "runs").exists()  # nothing was trained


@pytest.mark.parametrize("flags, code, message", [
    (["--task", "recall", "--distances", "20", "100"], 1, "the shortest distance is 34 characters"),
    (["--task", "recall", "--distances", "200", "100"], 1, "the longest distance (100) is below the shortest (200)"),
    (["--task", "recall", "--test-distances", "20", "100"], 1, "the question), not 20"),
    (["--plain-lines", "0", "--test-distances", "50", "60"], 2, "--test-distances, --plain-lines apply only to --task recall"),
])
def test_recall_settings_are_checked_before_anything_is_read(tmp_path, capsys, flags, code, message):
    out = tmp_path / "lab"
    assert lm_main(["lab", "--quick", "--corpus", str(tmp_path / "missing"), "--out", str(out), *flags]) == code
    error = capsys.readouterr().err
    assert error.startswith("lm lab: error: ") and message in error and len(error.strip().splitlines()) == 1
    assert not (out / "runs").exists()


@pytest.mark.slow
def test_the_quick_lab_writes_a_report_with_every_section(tmp_path, corpus_dir):
    out = tmp_path / "lab"
    assert lm_main(["lab", "--quick", "--corpus", str(corpus_dir), "--out", str(out)]) == 0
    lab = json.loads((out / "lab.json").read_text())
    assert len(lab["runs"]) == 10
    for run in lab["runs"]:
        assert run["steps"] > 0 and run["test"]["bpc"] > 0 and run["valid_curve"]
        assert run["reach"]["samples"] == 3 and run["reach"]["reach"]["tokens"]["median"] >= 1
        assert len(run["grad_norm"]["series"]) == run["steps"] and run["jacobian"]["jacobian_norm"]
        assert 0 <= run["accuracy"]["top1"] <= run["accuracy"]["top5"] <= 1
    page = (out / "report.html").read_text()
    for section in ("Findings", "Summary", "Validation curves", "Exploding gradients", "Vanishing gradients"):
        assert f">{section}" in page
    assert page.count("data:image/png;base64,") == 3 and external_references(page) == []
    text = html.unescape(page)
    assert re.search(r"At equal parameters and k2 = 32, the LSTM's median threshold reach \(\d+ units\)", text)
    assert "tanh RNN clipping: off:" in text and lab["settings"]["minutes"] == 0.05
    # The faithfulness column says what was measured: filler beyond the 99% mass reach, not a cut at the threshold reach.
    assert "|Δ log P|, filler beyond 99% mass</th>" in text and "farther back than its 99% mass reach" in text
    for name in ("validation.png", "gradients.png", "reach.png"):
        assert (out / name).stat().st_size > 10_000
