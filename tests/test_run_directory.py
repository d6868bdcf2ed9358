"""Run directories: a previous run is refused, deleted by --overwrite and nothing else; scripts/demo.sh around it."""

import json
import os
import shutil
import stat
import subprocess

import pytest

import train
from conftest import ROOT, make_model
from lm.checkpoint import load_checkpoint, save_checkpoint
from lm.config import TokenizerConfig, TrainConfig
from lm.tokenizers import CharTokenizer
from lm.train.run_directory import clear_run, previous_run

TINY = ["--preset", "tiny", "--max-minutes", "none", "--eval-max-chars", "2000", "--accuracy-positions", "0", "--quiet"]


def _snapshot(directory):
    """Every file under `directory` with its bytes and modification time."""
    return {str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(directory.rglob("*")) if path.is_file()}


def _fake_run(directory, *entries):
    directory.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if entry.endswith(".jsonl"):
            (directory / entry).write_text('{"kind": "run", "step": 0}\n')
        else:
            (directory / entry).mkdir()
            (directory / entry / "config.json").write_text('{"format": "old run"}')
    return directory


def test_a_run_is_its_checkpoints_and_metrics_and_nothing_else(tmp_path):
    assert previous_run(tmp_path / "missing") == [] and clear_run(tmp_path / "missing") == []
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "plots").mkdir()
    assert previous_run(tmp_path) == []  # unrelated files are not a run
    _fake_run(tmp_path, "best.old", "last", ".best.tmp-x1", "metrics.jsonl")  # .old: a crash between a save's renames
    assert previous_run(tmp_path) == ["best/", "last/", "metrics.jsonl"]
    assert clear_run(tmp_path) == ["best/", "last/", "metrics.jsonl"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt", "plots"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("entries", [("best", "last", "metrics.jsonl"), ("metrics.jsonl",), ("last.old",)])
def test_a_directory_holding_a_run_is_refused_in_one_line_and_left_untouched(tmp_path, capsys, corpus_dir, entries):
    out = _fake_run(tmp_path / "run", *entries)
    before = _snapshot(out)
    assert train.main([*TINY, "--corpus", str(corpus_dir), "--out", str(out), "--max-steps", "2"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"train.py: error: {out} already holds a run (")
    assert f"--resume {out}" in lines[0] and "--overwrite" in lines[0]
    assert _snapshot(out) == before


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        train.main(["--resume", str(tmp_path), "--overwrite"])
    assert caught.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def _old_run(out):
    """A previous run in `out`: best/ and last/ checkpoints of a seeded 12-unit LSTM, and its metrics."""
    tokenizer = CharTokenizer.train("".join(map(chr, range(32, 127))) + "\n", min_count=1)  # 64 units at least
    model = make_model(vocab_size=tokenizer.vocab_size)
    for name in ("best", "last"):
        save_checkpoint(out / name, model, tokenizer, TokenizerConfig(tokenizer="char"), TrainConfig(), corpus={})
    (out / "metrics.jsonl").write_text('{"kind": "run", "step": 0}\n{"kind": "step", "step": 1, "loss": 9.0}\n')
    return out


@pytest.mark.parametrize("notes", [False, True])
def test_an_empty_directory_or_one_with_unrelated_files_is_not_refused(tmp_path, capsys, notes):
    out = tmp_path / "run"
    out.mkdir()
    if notes:
        (out / "notes.txt").write_text("mine")
    # A missing corpus is the next thing train.py meets: it gets that far, and leaves the files alone.
    assert train.main([*TINY, "--corpus", str(tmp_path / "nowhere"), "--out", str(out), "--max-steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "already holds a run" not in err and "does not exist" in err
    assert [path.name for path in out.iterdir()] == (["notes.txt"] if notes else [])


class _StopAfter:
    """Stands in for train.py's GracefulStop: asks to stop (as a first Ctrl-C would) after `steps` steps, and
    records what the run directory held when training asked first."""

    def __init__(self, out, steps):
        self.out, self.steps, self.calls, self.first = out, steps, 0, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def __call__(self):
        if self.first is None:
            self.first = sorted(path.name for path in self.out.iterdir())
        self.calls += 1
        return self.calls > self.steps


def test_overwrite_deletes_the_old_run_before_the_new_one_saves_anything(tmp_path, corpus_dir, monkeypatch, capsys):
    out = _old_run(tmp_path / "run")
    (out / "notes.txt").write_text("mine")  # not the run's: kept
    assert load_checkpoint(out).model.config.hidden_dim == 12  # what a server would load: the old run's best/
    # The new run stops after 3 updates, long before its first evaluation: before this change the old best/ stayed,
    # and was scored and served as this run's.
    stop = _StopAfter(out, steps=3)
    monkeypatch.setattr(train, "GracefulStop", lambda: stop)
    new = [*TINY, "--corpus", str(corpus_dir), "--out", str(out), "--max-steps", "500", "--eval-interval", "1000",
           "--hidden-dim", "48", "--overwrite"]
    assert train.main(new) == 130
    capsys.readouterr()
    assert stop.first == ["metrics.jsonl", "notes.txt"]  # when training began: the old checkpoints already gone
    assert sorted(path.name for path in out.iterdir()) == ["last", "metrics.jsonl", "notes.txt"]
    assert load_checkpoint(out).model.config.hidden_dim == 48  # what a server would load now: the new run's
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records].count("run") == 1 and [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3]
    assert (out / "notes.txt").read_text() == "mine"


def test_demo_sh_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "demo.sh")]).returncode == 0


def _demo(tmp_path, train_exit, make_best, *args, **env):
    """Run scripts/demo.sh in a copy of the project whose set-up, train.py and server are stubs that record their
    arguments; the stub train.py exits with `train_exit`, after writing best/ when `make_best`."""
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "scripts" / "demo.sh", project / "scripts" / "demo.sh")
    (project / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    stubs = {
        project / "scripts" / "setup.sh": "#!/usr/bin/env bash\nexit 0\n",
        project / ".venv" / "bin" / "python": (
            '#!/usr/bin/env bash\necho "$*" >> "$CALLS"\n'
            'if [ "$1" = train.py ]; then\n'
            '    if [ "$MAKE_BEST" = 1 ]; then mkdir -p "$RUN/best" && echo "{}" > "$RUN/best/config.json"; fi\n'
            '    exit "$TRAIN_EXIT"\nfi\n'),
    }
    for path, text in stubs.items():
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "calls.txt"
    environment = {**os.environ, "CALLS": str(calls), "RUN": str(tmp_path / "run"), "TRAIN_EXIT": str(train_exit),
                   "MAKE_BEST": "1" if make_best else "0", "REACH_CORPUS": "/corpus", **env}
    done = subprocess.run(["bash", str(project / "scripts" / "demo.sh"), *args], capture_output=True, text=True,
                          env=environment, timeout=60)
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_demo_trains_afresh_then_serves(tmp_path):
    done, calls = _demo(tmp_path, 0, True, "--max-minutes", "1")
    run = tmp_path / "run"
    assert done.returncode == 0, done.stderr
    assert calls == [f"train.py --preset small --out {run} --overwrite --max-minutes 1", f"-m server --model {run} --port 8000"]


def test_demo_serves_what_an_interrupted_training_saved(tmp_path):
    done, calls = _demo(tmp_path, 130, True, PORT="8123")
    assert done.returncode == 0, done.stderr
    assert calls[-1] == f"-m server --model {tmp_path / 'run'} --port 8123" and "training was stopped" in done.stdout


def test_demo_without_a_best_checkpoint_says_so_and_serves_nothing(tmp_path):
    done, calls = _demo(tmp_path, 130, False)
    assert done.returncode == 1 and len(calls) == 1
    assert "nothing to serve" in done.stderr and "RESUME=1" in done.stderr


def test_demo_resumes_when_asked_and_stops_on_a_training_error(tmp_path):
    done, calls = _demo(tmp_path, 0, True, "--max-minutes", "5", RESUME="1")
    assert done.returncode == 0 and calls[0] == f"train.py --resume {tmp_path / 'run'} --max-minutes 5"
    (tmp_path / "calls.txt").unlink()
    done, calls = _demo(tmp_path, 2, True)  # e.g. a bad flag: train.py has said why; nothing is served
    assert done.returncode == 2 and len(calls) == 1
