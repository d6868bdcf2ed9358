"""bench/quality.py's measuring parts: the served path's figures, the textbook's open vocabulary and its alignment."""

import math
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from lm.checkpoint import load_checkpoint  # noqa: E402
from lm.config import TextCacheConfig  # noqa: E402
from lm.eval.figures import evaluate_text  # noqa: E402
from lm.infer.accuracy import word_positions  # noqa: E402
from lm.infer.predictor import Predictor  # noqa: E402
from lm.infer.query import word_at  # noqa: E402

import quality  # noqa: E402
from textbook import CharNgram  # noqa: E402


def test_the_served_path_scores_a_text_as_evaluation_does(tiny_run, corpus):
    checkpoint = load_checkpoint(str(tiny_run.out))
    text = corpus.valid.text[:1500]
    settings = TextCacheConfig(window=300, theta=2.0, weight=0.3)  # a window shorter than the text: keys drop out of it
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0, text_cache_settings=settings)
    alone, units = quality.served_nll(predictor, text, text_cache=False, chunk=40)
    mixed, _ = quality.served_nll(predictor, text, chunk=40)
    assert units == len(checkpoint.tokenizer.encode(text))
    assert alone == pytest.approx(evaluate_text(checkpoint.model, checkpoint.tokenizer, text, 100).nll, rel=1e-5)
    # The text's first unit has no earlier position: serving and evaluation both predict it with the model alone.
    evaluated = evaluate_text(checkpoint.model, checkpoint.tokenizer, text, 100, text_cache=settings).nll
    assert mixed == pytest.approx(evaluated, rel=1e-5)
    assert abs(mixed - alone) > 1  # the cache does move the figure


def test_the_character_model_is_a_distribution_at_every_history():
    speller = CharNgram(["the", "then", "than", "at", "a", "hat"], order=3)
    symbols = sorted(set("thenaх")) + [CharNgram.END]  # "х" (Cyrillic) was never seen: it stands for the escape
    for history in (CharNgram.START * 2, "\x01t", "th", "ha", "zz"):
        assert sum(math.exp(speller.char_logprob(history, char)) for char in symbols) == pytest.approx(1.0)
    assert speller.logprob("the") > speller.logprob("teh") > speller.logprob("txq")


def test_the_open_vocabulary_is_train_words_seen_twice(corpus_dir):
    splits = {name: quality.published_words(corpus_dir / f"{name}.txt") for name in ("train", "valid", "test")}
    closed, open_ = quality.textbook_vocabulary(splits, False), quality.textbook_vocabulary(splits, True)
    counts = Counter(word for line in splits["train"] for word in line)
    test_words = {word for line in splits["test"] for word in line}
    assert test_words <= set(closed)  # the published recipe: all three splits
    assert set(open_) == {quality.UNK} | {word for word, count in counts.items() if count >= 2}
    assert test_words - set(open_)  # so some test tokens must be spelled


def test_published_tokens_are_aligned_with_the_normalised_word_starts(corpus_dir, corpus):
    raw_lines = (corpus_dir / "test.txt").read_text(encoding="utf-8").splitlines()
    stream = [word for line in quality.published_words(corpus_dir / "test.txt") for word in line]
    text = corpus.test.text
    starts = quality.align_tokens(raw_lines, text)
    positions = word_positions(text)
    aligned = [position for position in positions if position in starts]
    assert len(aligned) / len(positions) > 0.99
    # The published token there begins with the word lm evaluate scores ("Eliot" of "Eliot's"; "1" of "1,000").
    assert all(stream[starts[position]].startswith(word_at(text, position)) for position in aligned)
