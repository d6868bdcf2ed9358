"""The planted-dependency corpus: keys at the stated distances, seeded, normalised, and controls that hide the key."""

from __future__ import annotations

import pytest

from corpora import normalize_line
from corpora.planted import KEYS, QUESTION, planted_corpus, planted_examples


def test_keys_sit_at_the_recorded_distance_in_normalised_lines(corpus):
    examples = planted_examples(corpus.train.text, 200, seed=3, min_distance=40, max_distance=400)
    distances = [example.distance for example in examples]
    assert min(distances) >= 40 and max(distances) <= 400 + 30  # met with whole words: at most one word over
    assert min(distances) < 80 and max(distances) > 250  # drawn across the whole range, short and long
    for example in examples:
        assert example.text[example.key_start : example.key_start + len(example.planted)] == example.planted
        assert example.text.startswith(example.key, example.answer_start)
        assert example.question.endswith(QUESTION) and example.text.endswith(example.key + ".")
        assert example.key == example.planted and not example.control
        assert normalize_line(example.text) == example.text  # offsets survive the predictor's normalisation
        assert "\n" not in example.text
        # The planted key is the only key between the introduction and the answer.
        between = example.text[example.key_start + len(example.planted) : example.answer_start]
        assert not any(key in between.split() for key in KEYS)


def test_examples_are_seeded(corpus):
    first = planted_examples(corpus.train.text, 20, seed=5)
    assert first == planted_examples(corpus.train.text, 20, seed=5)
    assert first != planted_examples(corpus.train.text, 20, seed=6)


def test_controls_ask_for_a_key_the_text_does_not_hold(corpus):
    examples = planted_examples(corpus.valid.text, 300, seed=1, control_share=0.5)
    controls = [example for example in examples if example.control]
    assert 100 < len(controls) < 200
    for example in controls:
        assert example.key != example.planted and example.key in KEYS
        assert example.key not in example.question.split()  # nothing before the answer names it
    answers = {example.key for example in controls}
    assert len(answers) > len(KEYS) // 2  # drawn independently, across the closed set


def test_the_corpus_takes_filler_from_each_split_and_keeps_controls_out_of_training(corpus):
    planted = planted_corpus(corpus, seed=0, counts=(30, 20, 20), control_share=0.5)
    assert planted.chance == pytest.approx(1 / len(KEYS))
    assert not any(example.control for example in planted.examples["train"])
    assert any(example.control for example in planted.examples["test"])
    assert planted.corpus.train.lines == 60  # each example followed by one plain training line
    assert planted.corpus.test.text.splitlines() == [example.text for example in planted.examples["test"]]
    test_words = set(corpus.test.text.split())
    filler = planted.examples["test"][0].text.split()[:8]
    assert all(word in test_words for word in filler)  # test filler comes from the test split


def test_a_dense_corpus_plants_a_key_in_every_training_line(corpus):
    planted = planted_corpus(corpus, seed=0, counts=(30, 5, 5), min_distance=34, max_distance=60, plain_lines=0)
    lines = planted.corpus.train.text.splitlines()
    assert lines == [example.text for example in planted.examples["train"]]
    longest_word = max(map(len, corpus.train.text.split()))
    assert all(34 <= example.distance <= 60 + longest_word + 1 for example in planted.examples["train"])
    assert min(example.distance for example in planted.examples["train"]) < 40


def test_the_test_split_can_ask_at_other_distances(corpus):
    planted = planted_corpus(corpus, seed=0, counts=(20, 10, 10), min_distance=34, max_distance=50, test_distances=(200, 300))
    assert all(34 <= example.distance < 200 for split in ("train", "valid") for example in planted.examples[split])
    assert all(200 <= example.distance for example in planted.examples["test"])


def test_impossible_settings_are_refused(corpus):
    with pytest.raises(ValueError, match="min_distance"):
        planted_examples(corpus.train.text, 5, seed=0, min_distance=10)
    with pytest.raises(ValueError, match="max_distance"):
        planted_examples(corpus.train.text, 5, seed=0, min_distance=100, max_distance=50)
