"""Served next-word quality by prompt length (lm/infer/accuracy.py), and the length-aware text cache measured by it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from lm.__main__ import main as lm_main
from lm.checkpoint import load_checkpoint
from lm.infer.accuracy import prompt_length_accuracy, prompt_of, prompt_positions, word_positions
from lm.infer.predictor import Predictor
from lm.infer.query import word_at

TEXT = "The film was directed by "


def test_a_prompt_is_the_words_typed_before_the_position():
    text = "a bc  d\nef g h"
    assert prompt_of(text, 8, 2) == "bc  d\n" and prompt_of(text, 8, 10) == "a bc  d\n" and prompt_of(text, 13, 1) == "g "
    assert prompt_of(text, 13, 2, word_positions(text)) == "ef g "


def test_prompt_positions_are_seeded_word_starts_of_words_with_letters_after_enough_words():
    text = "one , two three . four five six , seven eight"
    chosen = prompt_positions(text, 3, seed=1, min_words=2)
    assert chosen == sorted(chosen) and chosen == prompt_positions(text, 3, seed=1, min_words=2)
    starts = word_positions(text)
    for position in chosen:
        assert starts.index(position) >= 2 and word_at(text, position).isalpha()
    assert len(prompt_positions(text, 100, min_words=2)) == 7  # every word with letters after the first two words


def test_short_prompts_are_no_worse_with_the_tuned_text_cache(tiny_run, corpus):
    """Measured as the bench measures it: the N words before seeded test positions sent as requests."""
    checkpoint = load_checkpoint(tiny_run.out)
    tuned = checkpoint.text_cache_settings
    assert tuned is not None and tuned.length_aware  # training tunes the weight by memory size
    rows = prompt_length_accuracy(Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=tuned), corpus.test.text,
                                  lengths=(5, 12), positions=60, stream=False)
    for row in rows:
        assert row["positions"] == 60
        for comparison in row["text_cache_against_alone"]:
            assert comparison["gained"] >= comparison["lost"] or comparison["p_value"] >= 0.05, (row["prompt"], comparison)
        # Log loss within 0.05 nats per word (a weight of 0.02 or less over these few keys costs each letter a little).
        assert row["text_cache"]["nats_per_word"] <= row["alone"]["nats_per_word"] + 0.05, row
    # The same cache at one weight for every memory size (as checkpoints stored it before) copies a short prompt back:
    # the check above would fail for it.
    fixed = replace(tuned, weight=0.5, size_weights=())
    (five,) = prompt_length_accuracy(Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=fixed), corpus.test.text,
                                     lengths=(5,), positions=60, stream=False)
    assert five["text_cache"]["nats_per_word"] > five["alone"]["nats_per_word"] + 0.5
    assert five["text_cache"]["repeats_prompt_word"] > rows[0]["text_cache"]["repeats_prompt_word"]


def test_the_stream_row_reads_all_of_the_text_before_each_position(tiny_subword_run, corpus):
    checkpoint = load_checkpoint(tiny_subword_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)  # no cache settings: the model alone only
    text = corpus.test.text[:6000]
    rows = prompt_length_accuracy(predictor, text, lengths=(3,), positions=12, seed=2)
    assert [row["prompt"] for row in rows] == ["3 words", "stream"] and "text_cache" not in rows[0]
    # Every true word gets an exact, finite log-probability, after 3 words and after the whole text before it.
    assert all(row["alone"]["unscored"] == 0 and row["alone"]["nats_per_word"] > 0 for row in rows)
    first = prompt_positions(text, 12, 2, min_words=3)[0]
    stream = predictor.predict(text[:first], k=5)
    assert rows[1]["alone"]["top5"] * 12 >= (word_at(text, first) in [p.word for p in stream.predictions])


def test_stream_only_cache_settings_serve_the_model_alone_until_tuned_by_prompt_length(tiny_run, tmp_path, corpus_dir,
                                                                                        capsys):
    old = tmp_path / "old"
    shutil.copytree(tiny_run.out / "best", old)
    meta = json.loads((old / "config.json").read_text())
    stored = meta["metrics"]["text_cache"]
    for key in ("size_weights", "size_tuning"):  # what a checkpoint stored before the weight was tuned by length
        del stored[key]
    (old / "config.json").write_text(json.dumps(meta))
    settings = load_checkpoint(old).text_cache_settings
    assert settings is not None and not settings.length_aware
    predictor = Predictor(*_model_and_tokenizer(old), text_cache_settings=settings)
    assert not predictor.predict(TEXT, k=3).text_cache  # by default: the model alone
    assert predictor.predict(TEXT, k=3, text_cache=True).text_cache  # asked for: mixed in
    assert lm_main(["predict", "--model", str(old), "--json", TEXT]) == 0
    assert json.loads(capsys.readouterr().out)["text_cache"] is False
    assert lm_main(["predict", "--model", str(old), "--json", "--text-cache", TEXT]) == 0
    assert json.loads(capsys.readouterr().out)["text_cache"] is True
    assert lm_main(["tune-text-cache", "--model", str(old), "--corpus", str(corpus_dir)]) == 0
    out = capsys.readouterr().out
    assert "memory of 1-3 keys: weight" in out and "predictions now mix it in by default" in out
    tuned = load_checkpoint(old).text_cache_settings
    assert tuned.length_aware and (tuned.window, tuned.theta, tuned.weight) == (settings.window, settings.theta, settings.weight)
    assert lm_main(["predict", "--model", str(old), "--json", TEXT]) == 0
    assert json.loads(capsys.readouterr().out)["text_cache"] is True
    assert lm_main(["predict", "--model", str(old), "--json", "--no-cache", TEXT]) == 0  # the old flag still works
    assert json.loads(capsys.readouterr().out)["text_cache"] is False


@pytest.mark.parametrize("command", ["evaluate", "tune-text-cache"])
def test_a_missing_corpus_is_one_clear_line(tiny_run, tmp_path, capsys, command):
    assert lm_main([command, "--model", str(tiny_run.out), "--corpus", str(tmp_path / "nowhere")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"lm {command}: error:") and "does not exist" in errors[0]
    assert lm_main([command, "--model", str(tmp_path / "no-run")]) == 1  # the checkpoint first
    assert capsys.readouterr().err.startswith("lm: error:")


def test_evaluate_prints_the_prompt_length_table(tiny_run, corpus_dir, capsys):
    assert lm_main(["evaluate", "--model", str(tiny_run.out), "--corpus", str(corpus_dir), "--positions", "8",
                    "--prompt-words", "5,30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["by_prompt_length"]
    assert [row["prompt"] for row in rows] == ["5 words", "30 words", "stream"]
    assert all(row["positions"] == 8 and {"alone", "text_cache", "text_cache_against_alone"} <= set(row) for row in rows)
    assert lm_main(["evaluate", "--model", str(tiny_run.out), "--corpus", str(corpus_dir), "--positions", "4",
                    "--prompt-words", "5"]) == 0
    assert "served next-word quality by prompt length" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        lm_main(["evaluate", "--model", str(tiny_run.out), "--prompt-words", "5,x"])
    assert "positive word counts" in capsys.readouterr().err


def _model_and_tokenizer(directory):
    checkpoint = load_checkpoint(directory)
    return checkpoint.model, checkpoint.tokenizer
