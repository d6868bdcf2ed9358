"""Recall of planted keys and the truthfulness figures, on tiny trained models (lm/reports/recall.py)."""

from __future__ import annotations

import html
import json
import math

import pytest

from corpora.planted import KEYS, planted_examples
from lm.checkpoint import load_checkpoint
from lm.infer.predictor import Predictor
from lm.reports.recall import measure_recall, recall_by_distance, truthfulness


@pytest.mark.parametrize("run", ["tiny_run", "tiny_subword_run"])
def test_every_question_is_measured_consistently(run, request, corpus):
    checkpoint = load_checkpoint(request.getfixturevalue(run).out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)
    examples = planted_examples(corpus.test.text, 6, seed=2, min_distance=40, max_distance=200, control_share=0.5)
    measures = measure_recall(predictor, examples)
    assert len(measures) == len(examples)
    for example, measure in zip(examples, measures):
        context = example.question if not checkpoint.tokenizer.heals_words else example.question.rstrip(" ")
        assert measure.distance == len(context) - example.key_start  # counted like the reach: from the context's end
        assert measure.control == example.control and measure.key == example.key
        assert measure.recalled == (measure.predicted == example.key)
        assert measure.key_logprob == pytest.approx(predictor.score_word(example.question, example.key), abs=1e-9)
        assert measure.key_logprob < 0
        assert 0.0 <= measure.key_share <= 1.0 + 1e-9
        assert measure.key_inside == (measure.distance <= measure.reach_chars)
        assert measure.key_inside_mass99 == (measure.distance <= measure.mass99_chars)
        assert measure.ablation_change is not None and math.isfinite(measure.ablation_change)


def test_buckets_and_truthfulness_count_what_was_measured(tiny_run, corpus):
    checkpoint = load_checkpoint(tiny_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)
    examples = planted_examples(corpus.test.text, 10, seed=4, min_distance=40, max_distance=400, control_share=0.3)
    measures = measure_recall(predictor, examples, ablate=False)
    rows = recall_by_distance(measures)
    assert sum(row["examples"] for row in rows) == sum(not m.control for m in measures)
    assert sum(row["controls"] for row in rows) == sum(m.control for m in measures)
    assert all(row["chance"] == pytest.approx(1 / len(KEYS)) for row in rows)
    figures = truthfulness(measures)
    assert figures["confident_recalls"] == sum(1 for m in measures if not m.control and m.recalled and m.key_logprob >= math.log(0.5))
    assert math.isnan(figures["ablation_agreement"])  # not run


def test_questions_closer_than_the_first_bucket_are_counted(tiny_run, corpus):
    checkpoint = load_checkpoint(tiny_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)
    # 12 examples: 8 drawn from the shipped excerpt's test article all land at 40 characters or more.
    examples = planted_examples(corpus.test.text, 12, seed=5, min_distance=34, max_distance=45)
    measures = measure_recall(predictor, examples, ablate=False)
    assert min(m.distance for m in measures) < 40
    rows = recall_by_distance(measures)
    assert rows[0]["from"] == min(m.distance for m in measures) and rows[0]["to"] == 80
    assert sum(row["examples"] for row in rows) == len(measures)
    assert [row["from"] for row in recall_by_distance(measures, edges=(40, 80, 10**9))] == [40, 80]


@pytest.mark.slow
def test_a_small_recall_lab_writes_every_figure_and_a_self_contained_page(tmp_path, corpus):
    from conftest import external_references
    from lm.reports.lab import LabSettings
    from lm.reports.recall_lab import RecallSettings, run_recall_lab

    settings = LabSettings.quick_mode(cells=("lstm", "rnn_tanh"), k2s=(16,), clipping=("off",))
    recall = RecallSettings(train_examples=200, heldout_examples=24, measured=12)
    page_path = run_recall_lab("unused", tmp_path / "recall", settings, recall, corpus=corpus)
    lab = json.loads((tmp_path / "recall" / "recall.json").read_text())
    names = [run["run"]["name"] for run in lab["runs"]]
    assert names == ["lstm-k32-clip-norm", "rnn_tanh-k32-clip-norm", "lstm-k16-clip-norm", "rnn_tanh-k16-clip-norm",
                     "rnn_tanh-k32-clip-off"]
    assert lab["task"] == "recall" and lab["chance"] == pytest.approx(1 / len(KEYS))
    for run in lab["runs"]:
        figures = run["recall"]
        assert len(figures["measures"]) == 12 and run["steps"] > 0 and run["grad_norm"]["series"]
        assert sum(row["examples"] + row["controls"] for row in figures["by_distance"]) == 12
        assert {"key_inside_reach_when_recalled", "ablation_agreement", "key_share_recalled"} <= set(figures["truthfulness"])
        assert all(m["ablation_change"] is not None for m in figures["measures"])
    page = page_path.read_text()
    assert page.count("data:image/png;base64,") == 2 and external_references(page) == []
    for section in ("Findings", "Runs", "Recall by distance", "Reach at the question", "Every bucket"):
        assert f">{section}" in page
    assert "The LSTM recalls the key" in html.unescape(page)
    for name in ("recall_accuracy.png", "recall_reach.png"):
        assert (tmp_path / "recall" / name).stat().st_size > 10_000
