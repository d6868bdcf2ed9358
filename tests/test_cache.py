"""The text cache (the continuous cache over the text read) in evaluation: its probabilities by brute force,
causality, the mixture, tuning, and the evaluate CLI."""

import math

import pytest
import torch

from lm.__main__ import main as lm_main
import numpy as np

from lm.eval.cache import (TextCacheConfig, StreamScores, mixed_nll, score_prompts, score_stream, stream_weights,
                           text_cache_logprobs, tune_size_weights, tune_text_cache_on_stream, word_starts)
from lm.eval.figures import evaluate_ids, evaluate_text
from conftest import make_model


def _random_scores(count=53, width=6, vocab=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(count, width, generator=generator)
    targets = torch.randint(0, vocab, (count,), generator=generator)
    return StreamScores(features, targets, torch.log(torch.rand(count, generator=generator, dtype=torch.float64)))


def _brute_force(scores, window, theta):
    values = []
    for t in range(len(scores.targets)):
        earlier = [i for i in range(max(0, t - window), t)]
        weights = [math.exp(theta * float(scores.features[t] @ scores.features[i])) for i in earlier]
        hit = sum(w for w, i in zip(weights, earlier) if scores.targets[i] == scores.targets[t])
        values.append(math.log(hit / sum(weights)) if hit > 0 else -math.inf)
    return torch.tensor(values, dtype=torch.float64)


def test_cache_probabilities_equal_a_brute_force_sum():
    scores = _random_scores()
    got = text_cache_logprobs(scores, window=7, theta=0.7, block=16)  # several blocks, each looking back past its start
    torch.testing.assert_close(got, _brute_force(scores, 7, 0.7), rtol=1e-6, atol=1e-9)
    assert got[0] == -math.inf  # nothing to point to yet


def test_the_cache_sees_only_earlier_positions():
    scores = _random_scores()
    before = text_cache_logprobs(scores, window=50, theta=0.5, block=8)
    later = StreamScores(scores.features.clone(), scores.targets.clone(), scores.model_logprobs)
    later.features[30:] = torch.randn(later.features[30:].shape)
    later.targets[31:] = (later.targets[31:] + 1) % 5
    after = text_cache_logprobs(later, window=50, theta=0.5, block=8)
    torch.testing.assert_close(after[:30], before[:30])


def test_the_mixture_and_evaluation_with_a_cache(char_tokenizer, corpus):
    model = make_model("lstm", vocab_size=char_tokenizer.vocab_size).eval()
    text = corpus.valid.text[:3000]
    ids = char_tokenizer.encode(text)
    scores = score_stream(model, ids, char_tokenizer.newline_id, chunk=700)
    nll, units = evaluate_ids(model, ids, char_tokenizer.newline_id)
    assert units == len(scores.targets) and scores.model_nll == pytest.approx(nll, rel=1e-5)
    assert mixed_nll(scores, text_cache_logprobs(scores, 100, 1.0), 0.0) == scores.model_nll
    config = TextCacheConfig(window=500, theta=2.0, weight=0.3)
    cached = text_cache_logprobs(scores, 500, 2.0)
    # The first position sees no key: the model alone there (a weight of 0 without keys).
    by_hand = -sum(math.log(0.7 * math.exp(m) + 0.3 * math.exp(c)) if t else m
                   for t, (m, c) in enumerate(zip(scores.model_logprobs.tolist(), cached.tolist())))
    result = evaluate_text(model, char_tokenizer, text, raw_words=500, text_cache=config)
    assert result.nll == pytest.approx(by_hand, rel=1e-6) and result.units == units


def test_tuning_picks_the_best_grid_point():
    scores = _random_scores(count=120)
    config, best, trials = tune_text_cache_on_stream(scores, windows=(5, 50), thetas=(0.5, 2.0), weights=(0.1, 0.5))
    assert len(trials) == 8 and best == min(trial["nll"] for trial in trials)
    chosen = [t for t in trials if (t["window"], t["theta"], t["weight"]) == (config.window, config.theta, config.weight)]
    assert chosen[0]["nll"] == best
    with pytest.raises(ValueError, match="weight"):
        TextCacheConfig(weight=1.0)


def test_evaluate_cli_reports_the_cache_row(tiny_run, corpus_dir, capsys):
    assert lm_main(["evaluate", "--model", str(tiny_run.out), "--corpus", str(corpus_dir), "--positions", "5",
                    "--text-cache", "500,2,0.3"]) == 0
    out = capsys.readouterr().out
    assert "with the text cache (window 500 units, theta 2, weight 0.3), as given:" in out
    with pytest.raises(SystemExit):
        lm_main(["evaluate", "--model", str(tiny_run.out), "--text-cache", "500,2"])
    assert "WINDOW,THETA,WEIGHT" in capsys.readouterr().err


def test_the_weight_by_memory_size_interpolates_in_log_keys_and_is_zero_without_keys():
    settings = TextCacheConfig(window=100, theta=1.0, weight=0.5, size_weights=[[4, 0.0], [16, 0.2], [64, 0.4]])
    assert settings.length_aware and settings.size_weights == ((4, 0.0), (16, 0.2), (64, 0.4))  # JSON lists, one form
    got = settings.weights(np.array([0, 1, 4, 8, 16, 32, 64, 1000]))
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    plain = TextCacheConfig(window=100, theta=1.0, weight=0.5)
    assert not plain.length_aware and plain.weights(np.array([0, 1, 99])).tolist() == [0.0, 0.5, 0.5]
    torch.testing.assert_close(stream_weights(settings, 5), torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="increasing"):
        TextCacheConfig(size_weights=((16, 0.1), (4, 0.2)))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        TextCacheConfig(size_weights=((16, 1.0),))


def test_prompt_scores_read_each_prompt_from_a_zero_state_and_its_own_keys(char_tokenizer, corpus):
    model = make_model("lstm", vocab_size=char_tokenizer.vocab_size, num_layers=1).eval()
    ids = char_tokenizer.encode(corpus.valid.text[:400])
    length, window, theta = 16, 10, 1.5
    scores = score_prompts(model, ids, char_tokenizer.newline_id, length, window, theta, prompts=3)
    assert len(scores.sizes) == 3 * length and scores.sizes.tolist()[:length] == [min(t, window) for t in range(length)]
    starts = torch.linspace(0, len(ids) - length, 3).long().tolist()  # spread over the ids
    for number, start in enumerate(starts):
        prompt = ids[start : start + length]
        alone = score_stream(model, prompt, char_tokenizer.newline_id)  # one prompt, read from a zero state
        row = slice(number * length, (number + 1) * length)
        torch.testing.assert_close(scores.model_logprobs[row], alone.model_logprobs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scores.text_cache_logprobs[row], text_cache_logprobs(alone, window, theta), rtol=1e-5, atol=1e-6)
        assert scores.targets[row].tolist() == prompt and scores.previous[row].tolist()[0] == char_tokenizer.newline_id


def test_word_starts_are_where_a_word_begins_for_both_tokenizers(char_tokenizer, subword_tokenizer):
    text = "The cat, the dog"
    for tokenizer in (char_tokenizer, subword_tokenizer):
        ids, spans = tokenizer.encode_with_offsets(text)
        previous = torch.tensor([tokenizer.newline_id, *ids[:-1]])
        starts = word_starts(tokenizer, previous, torch.tensor(ids))
        # a unit begins a word when its first word character is the first of a word of the text
        firsts = {0, text.index("cat"), text.index("the"), text.index("dog")}
        for (start, end), begins in zip(spans, starts.tolist()):
            piece = text[start:end]
            letter = start + len(piece) - len(piece.lstrip())
            assert begins == (letter in firsts and letter < end), (tokenizer.kind, piece)


def test_tuning_by_memory_size_picks_each_ranges_best_weight_anchored_inside_it(char_tokenizer, corpus):
    model = make_model("lstm", vocab_size=char_tokenizer.vocab_size, num_layers=1).eval()
    ids = char_tokenizer.encode(corpus.valid.text[:6000])
    settings, report = tune_size_weights(model, ids, char_tokenizer, TextCacheConfig(window=200, theta=1.0, weight=0.3),
                                         edges=(1, 4, 16, 64, 256), weights=(0.0, 0.1, 0.3), positions=2000)
    assert [row["keys"] for row in report] == [[1, 4], [4, 16], [16, 64], [64, 256]]
    assert settings.size_weights == tuple((row["anchor"], row["weight"]) for row in report)
    assert [row["anchor"] for row in report] == [2, 8, 32, 113]  # the last range ends at the window (200 keys)
    for row in report:
        over_units = min(row["trials"], key=lambda trial: trial["nll"])["weight"]
        at_starts = min(row["trials"], key=lambda trial: trial["word_start_nll"])["weight"]
        assert (row["weight_over_units"], row["weight_at_word_starts"]) == (over_units, at_starts)
        assert row["weight"] == min(over_units, at_starts)  # trusted only as far as both want it
        assert 0 < row["word_starts"] < row["positions"]
    assert (settings.window, settings.theta, settings.weight) == (200, 1.0, 0.3)
