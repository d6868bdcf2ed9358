"""Recall of planted keys and the truthfulness figures, on tiny trained models (lm/reports/recall.py)."""

from __future__ import annotations

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
