"""The continuous cache: its probabilities by brute force, causality, the mixture, tuning, and the evaluate CLI."""

import math

import pytest
import torch

from lm.__main__ import main as lm_main
from lm.eval.cache import CacheConfig, StreamScores, cache_logprobs, mixed_nll, score_stream, tune_cache
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
    got = cache_logprobs(scores, window=7, theta=0.7, block=16)  # several blocks, each looking back past its start
    torch.testing.assert_close(got, _brute_force(scores, 7, 0.7), rtol=1e-6, atol=1e-9)
    assert got[0] == -math.inf  # nothing to point to yet


def test_the_cache_sees_only_earlier_positions():
    scores = _random_scores()
    before = cache_logprobs(scores, window=50, theta=0.5, block=8)
    later = StreamScores(scores.features.clone(), scores.targets.clone(), scores.model_logprobs)
    later.features[30:] = torch.randn(later.features[30:].shape)
    later.targets[31:] = (later.targets[31:] + 1) % 5
    after = cache_logprobs(later, window=50, theta=0.5, block=8)
    torch.testing.assert_close(after[:30], before[:30])


def test_the_mixture_and_evaluation_with_a_cache(char_tokenizer, corpus):
    model = make_model("lstm", vocab_size=char_tokenizer.vocab_size).eval()
    text = corpus.valid.text[:3000]
    ids = char_tokenizer.encode(text)
    scores = score_stream(model, ids, char_tokenizer.newline_id, chunk=700)
    nll, units = evaluate_ids(model, ids, char_tokenizer.newline_id)
    assert units == len(scores.targets) and scores.model_nll == pytest.approx(nll, rel=1e-5)
    assert mixed_nll(scores, cache_logprobs(scores, 100, 1.0), 0.0) == scores.model_nll
    config = CacheConfig(window=500, theta=2.0, weight=0.3)
    cached = cache_logprobs(scores, 500, 2.0)
    by_hand = -sum(math.log(0.7 * math.exp(m) + 0.3 * math.exp(c)) for m, c in zip(scores.model_logprobs.tolist(), cached.tolist()))
    result = evaluate_text(model, char_tokenizer, text, raw_words=500, cache=config)
    assert result.nll == pytest.approx(by_hand, rel=1e-6) and result.units == units


def test_tuning_picks_the_best_grid_point():
    scores = _random_scores(count=120)
    config, best, trials = tune_cache(scores, windows=(5, 50), thetas=(0.5, 2.0), weights=(0.1, 0.5))
    assert len(trials) == 8 and best == min(trial["nll"] for trial in trials)
    chosen = [t for t in trials if (t["window"], t["theta"], t["weight"]) == (config.window, config.theta, config.weight)]
    assert chosen[0]["nll"] == best
    with pytest.raises(ValueError, match="weight"):
        CacheConfig(weight=1.0)


def test_evaluate_cli_reports_the_cache_row(tiny_run, corpus_dir, capsys):
    assert lm_main(["evaluate", "--model", str(tiny_run.out), "--corpus", str(corpus_dir), "--positions", "5",
                    "--cache", "500,2,0.3"]) == 0
    out = capsys.readouterr().out
    assert "with a continuous cache (window 500 units, theta 2, weight 0.3), as given:" in out
    with pytest.raises(SystemExit):
        lm_main(["evaluate", "--model", str(tiny_run.out), "--cache", "500,2"])
    assert "WINDOW,THETA,WEIGHT" in capsys.readouterr().err
