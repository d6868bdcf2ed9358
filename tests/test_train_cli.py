"""train.py end to end: real training on the local corpus, resume, Ctrl-C, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

import train
from conftest import ROOT, train_tiny
from lm.checkpoint import CheckpointError, read_meta, resolve_checkpoint
from lm.train.run import seed_everything, train_run
from lm.config import apply_preset


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "step"]


def test_a_tiny_model_lowers_its_validation_loss(tiny_run, corpus):
    records = [json.loads(line) for line in (tiny_run.out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval" and r["split"] == "valid"]
    assert len(evals) >= 2 and evals[-1]["loss"] < evals[0]["loss"]
    # A uniform guess over ~120 characters costs 6.9 bpc, their unigram frequencies about 4.4 (the shipped
    # excerpt's one valid article, a biography dense in names, costs the same run 3.58 bpc).
    assert tiny_run.valid.bpc < 3.7
    assert (tiny_run.test.words, tiny_run.test.chars) == (corpus.test.raw_words, len(corpus.test.text))
    steps = [r for r in records if r["kind"] == "step"]
    assert {"step", "loss", "grad_norm", "clipped", "lr", "tokens_per_s"} <= set(steps[0])


def test_the_end_of_training_tunes_the_text_cache_on_valid_and_stores_it_with_the_figures(tiny_run, corpus, tmp_path):
    from lm.checkpoint import load_checkpoint
    from lm.eval.cache import score_stream, tune_text_cache_on_stream

    best = load_checkpoint(tiny_run.out)
    stored = best.metrics["text_cache"]
    written = json.loads((best.directory / "config.json").read_text())["metrics"]
    assert "text_cache" in written and "cache" not in written  # the name since issue 27's naming pass
    expected, _, _ = tune_text_cache_on_stream(score_stream(best.model, best.tokenizer.encode(corpus.valid.text), best.tokenizer.newline_id))
    settings = best.text_cache_settings
    assert replace(settings, size_weights=()) == expected  # window, theta, stream weight: as `lm evaluate --text-cache tune`
    assert settings.length_aware and stored["chosen"] == "tuned on the valid split, the weight by memory size on prompts of it"
    # Then the weight by memory size, on prompts of the valid split: none over the first few keys.
    assert [row["anchor"] for row in stored["size_tuning"]] == [keys for keys, _ in settings.size_weights]
    assert settings.weights(np.array([1, 3])).max() < 0.01  # 0.003 at 3 keys on the shipped excerpt's one valid article
    # The text cache is tuned to lower the valid loss; the plain figures stay beside the cached ones.
    assert stored["valid"]["bpc"] <= best.metrics["valid"]["bpc"] + 1e-12
    assert stored["test"]["words"] == best.metrics["test"]["words"] and stored["test"]["bpc"] > 0
    skipped = train_tiny(tmp_path / "untuned", corpus, max_steps=5, accuracy_positions=0)  # tune_text_cache=False
    assert "text_cache" not in load_checkpoint(skipped.out).metrics and load_checkpoint(skipped.out).text_cache_settings is None


def test_resumed_run_equals_the_uninterrupted_one(tmp_path, corpus):
    settings = dict(max_steps=24, eval_interval=8, dropout=0.2, input_dropout=0.1, variable_bptt=True, optimizer="adamw")
    whole = train_tiny(tmp_path / "whole", corpus, **settings)
    stops = iter(range(10**6))
    tokenizer_config, model_config, train_config = apply_preset("tiny", {"max_minutes": None, "eval_max_chars": 20_000, **settings})
    seed_everything(train_config.seed)
    first = train_run(tokenizer_config, model_config, train_config, tmp_path / "split", corpus=corpus,
                      should_stop=lambda: next(stops) >= 11)
    assert first.stopped_early and 0 < first.state.step < 24
    seed_everything(12345)  # resuming must not depend on the seed of the new process
    second = train_run(tokenizer_config, model_config, train_config, tmp_path / "split", corpus=corpus, resume=True)
    assert second.state.step == whole.state.step == 24
    assert _losses(tmp_path / "split") == pytest.approx(_losses(tmp_path / "whole"), rel=1e-6, abs=1e-7)
    assert second.test.nll == pytest.approx(whole.test.nll, rel=1e-6)


def test_bad_arguments_end_in_one_clear_sentence(capsys):
    assert train.main(["--bptt", "8", "--bptt-stride", "16"]) == 2
    err = capsys.readouterr().err
    assert "bptt_stride (k1) must be between 1 and bptt" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as caught:
        train.main(["--cell", "lstm", "--batch-size", "many"])
    assert caught.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_missing_corpus_ends_in_one_clear_sentence(capsys, tmp_path):
    assert train.main(["--preset", "tiny", "--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "does not exist" in errors[0] and "--corpus" in errors[0]


def test_resume_of_nothing_is_explained(capsys, tmp_path):
    assert train.main(["--resume", str(tmp_path / "none")]) == 1
    assert "cannot resume" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_saves_and_the_run_resumes(tmp_path, corpus_dir):
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), "--preset", "tiny", "--corpus", str(corpus_dir), "--out", str(out),
               "--max-minutes", "5", "--eval-interval", "100000", "--no-tune-text-cache"]  # the text cache's tuning is tested apart
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count('"kind": "step"') >= 50:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"python train.py --resume {out}" in stdout
    meta = json.loads((out / "last" / "config.json").read_text())
    steps = meta["metrics"]["steps"]
    assert steps >= 50
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--resume", str(out), "--max-steps", str(steps + 20), "--quiet"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "last" / "config.json").read_text())["metrics"]["steps"] == steps + 20


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as caught:
        train.main([*argv, "--help"])
    assert caught.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines; compare with single spaces


def test_help_shows_the_chosen_presets_defaults_once(capsys):
    tiny = _help(capsys, "--preset", "tiny")
    assert "--hidden-dim N hidden size of every recurrent layer (default: 64)" in tiny
    assert "--batch-size N number of parallel streams B (default: 16)" in tiny
    assert "--eval-max-chars N" in tiny and "(default: 20000)" in tiny
    base = _help(capsys)
    assert "--hidden-dim N hidden size of every recurrent layer (default: 512)" in base
    for text in (tiny, base):
        assert "(default: all cores)" in text and text.count("(default: all cores) (default") == 0
        assert "non-overlapping windows)" in text and "windows) (default: None)" not in text


def test_resume_says_in_one_line_which_flags_it_ignores(capsys, tmp_path):
    assert train.main(["--resume", str(tmp_path / "none"), "--lr", "0.5", "--cell", "gru", "--max-steps", "5"]) == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "ignoring --lr, --cell" in warnings[0] and "--max-steps" not in warnings[0]
    assert train.main(["--resume", str(tmp_path / "none"), "--max-steps", "5", "--threads", "1"]) == 1
    assert "warning" not in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_ends_in_one_clear_line(tmp_path, corpus_dir):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "tiny", "--corpus", str(corpus_dir),
                           "--out", str(tmp_path / "r"), "--device", "cuda"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "train.py: error: --device cuda: CUDA is not available here (a CPU-only build of torch, 0 GPUs visible); "
        "use --device cpu or auto"]
    assert not (tmp_path / "r").exists()


def test_bad_device_or_precision_is_one_sentence(capsys):
    assert train.main(["--device", "gpu"]) == 2
    assert capsys.readouterr().err.strip() == "train.py: error: device must be one of auto, cpu, cuda, cuda:N, mps, not 'gpu'"
    assert train.main(["--precision", "fp8"]) == 2
    assert "precision must be one of fp32, bf16, fp16" in capsys.readouterr().err


def test_auto_trains_on_the_cpu_here_and_says_so(tmp_path, corpus_dir):
    out = tmp_path / "auto"
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "tiny", "--corpus", str(corpus_dir), "--out", str(out),
                           "--max-steps", "2", "--max-minutes", "none", "--eval-max-chars", "2000", "--accuracy-positions", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"training in {out} on cpu in fp32" in done.stderr
    run = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert (run["device"], run["precision"]) == ("cpu", "fp32")


def test_resume_may_change_the_device_but_not_the_precision(capsys, tmp_path):
    assert train.main(["--resume", str(tmp_path / "none"), "--device", "cpu", "--precision", "bf16"]) == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "ignoring --precision" in warnings[0] and "--device" not in warnings[0]


def test_token_cache_flag_keeps_the_encoded_corpus_there_for_the_next_run(tmp_path, corpus_dir):
    def run(name):
        code = train.main(["--corpus", str(corpus_dir), "--preset", "tiny", "--max-steps", "2", "--max-minutes", "none",
                           "--eval-interval", "1000", "--eval-max-chars", "1000", "--accuracy-positions", "0", "--threads", "1",
                           "--quiet", "--token-cache", str(tmp_path / "cache"), "--out", str(tmp_path / name)])
        assert code == 0
        return json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["token_cache"]

    first, second = run("first"), run("second")
    assert not first["reused"] and second["reused"] and first["path"] == second["path"]
    assert first["path"].startswith(str(tmp_path / "cache")) and (tmp_path / "cache" / "tokenizers").is_dir()


def test_resume_help_names_every_flag_it_honours(capsys, monkeypatch):
    from lm.train.run import BUDGET_FIELDS

    monkeypatch.setenv("COLUMNS", "1000")  # argparse would break --max-steps at its hyphen
    text = _help(capsys)
    resume = text[text.index("--resume DIR continue"):text.index("--overwrite start")]
    for name in BUDGET_FIELDS:
        assert "--" + name.replace("_", "-") in resume, name


def _saved_step(out):
    """The step of the run's last/ checkpoint (or of last.old/, where a save was cut between its two renames)."""
    for _ in range(100):
        try:
            return read_meta(resolve_checkpoint(out / "last"))["metrics"]["steps"]
        except CheckpointError:  # a save renamed the directory while it was read: read the new one
            time.sleep(0.05)
    raise AssertionError(f"no readable last/ checkpoint in {out}")


@pytest.mark.slow
def test_a_run_killed_after_a_timed_save_resumes_exactly_from_it(tmp_path, corpus_dir, capsys):
    """--checkpoint-minutes saves last/ on the clock with no evaluation in sight; SIGKILL (no chance to save) loses only
    what came after, and --resume repeats the killed run's own later steps exactly."""
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), "--preset", "tiny", "--corpus", str(corpus_dir), "--out", str(out),
               "--max-minutes", "none", "--max-steps", "1000000", "--schedule", "constant", "--eval-interval", "1000000",
               "--checkpoint-minutes", "0.05", "--no-tune-text-cache", "--accuracy-positions", "0", "--threads", "2", "--quiet"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def steps_logged():
        text = (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else ""
        return [json.loads(line) for line in text.splitlines() if '"kind": "step"' in line and line.endswith("}")]

    try:
        deadline = time.time() + 120
        while not (out / "last" / "config.json").is_file() and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        if process.poll() is not None:
            pytest.fail(f"train.py ended before a timed save: {process.communicate()[1]}")
        first = _saved_step(out)  # after 3 s of training
        while len(steps_logged()) < first + 20 and time.time() < deadline:  # go on past it (most often before the next save, 3 s on)
            time.sleep(0.05)
    finally:
        process.kill()  # SIGKILL
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr
    killed = {record["step"]: record for record in steps_logged()}
    saved = _saved_step(out)
    timed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"kind": "checkpoint"' in line and line.endswith("}")]  # not a line the kill cut short
    assert saved in [record["step"] for record in timed] and not (out / "best").exists()  # saved on the clock alone
    after = [step for step in killed if step > saved]
    assert after, "the run was killed right at a save: nothing to compare"

    assert train.main(["--resume", str(out), "--max-steps", str(saved + 20), "--quiet"]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if record["kind"] == "step"]
    assert [record["step"] for record in steps] == list(range(1, saved + 21))  # the count continues from the save
    resumed = {record["step"]: record for record in steps if record["step"] > saved}
    compared = [step for step in after if step in resumed]
    # The resumed steps repeat the killed run's: same window, same state, same weights, so the same loss and norm.
    assert [resumed[step]["loss"] for step in compared] == pytest.approx([killed[step]["loss"] for step in compared], rel=1e-6, abs=1e-7)
    assert [resumed[step]["grad_norm"] for step in compared] == pytest.approx([killed[step]["grad_norm"] for step in compared], rel=1e-5)
    assert [resumed[step]["position"] for step in compared] == [killed[step]["position"] for step in compared]
    assert json.loads((out / "last" / "config.json").read_text())["train"]["checkpoint_minutes"] == 0.05  # kept with the run
