"""The text cache's pointer and deletion curve (lm/infer/pointer.py) against brute force on a tiny trained model."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lm.checkpoint import load_checkpoint
from lm.config import TextCacheConfig
from lm.infer.pointer import LISTED_SHARE, deletion_reach, explain_cache, spelling_groups
from lm.infer.predictor import Predictor

TEXT = "The cat sat on the mat. The dog saw the cat. A bird sang to the cat and the dog. The "
SETTINGS = {
    "one weight, a window shorter than the text": TextCacheConfig(window=60, theta=2.0, weight=0.4),
    "weights by memory size": TextCacheConfig(window=200, theta=2.0, weight=0.4,
                                          size_weights=((4, 0.0), (32, 0.1), (64, 0.35), (128, 0.5))),
}


CASES = [("char", name) for name in SETTINGS] + [("subword", "weights by memory size")]
# A subword text that asks for a next word with nothing left to spell (no healed part): it ends in punctuation.
SUBWORD_TEXT = "The album was released, and the album was a hit. The band, the album,"


@pytest.fixture(scope="module", params=CASES, ids=[f"{kind}, {name}" for kind, name in CASES])
def cached(request, tiny_run, tiny_subword_run):
    """(a predictor with the text cache, the text it predicts after)."""
    kind, name = request.param
    checkpoint = load_checkpoint((tiny_run if kind == "char" else tiny_subword_run).out)
    return (Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=SETTINGS[name]),
            TEXT if kind == "char" else SUBWORD_TEXT)


def _rows(predictor: Predictor, text: str, units: tuple[int, ...]):
    """The mixture's parts written plainly: for each depth along `units` (and after them), the model's
    distribution, the weight, and every visible key's vote with the unit that followed it (None for the keys read
    along the spelling: they are the word's own)."""
    model, tokenizer, settings = predictor.model, predictor.tokenizer, predictor.text_cache_settings
    hidden = model.config.hidden_dim
    ids = [tokenizer.newline_id, *tokenizer.encode(text)]
    with torch.no_grad():
        features, state = model.features(torch.tensor([ids]), model.init_state(1))
        keys = list(features[0, :-1].double())  # output t is followed by unit t + 1
        values = [(unit, place) for place, unit in enumerate(ids[1:])]  # (unit, its place among the context's units)
        keys, values = keys[-settings.window:], values[-settings.window:]  # the memory keeps the last `window`
        rows = []
        for depth in range(len(units) + 1):
            query = state[-1, 0, :hidden].double()
            p_model = torch.softmax(model.output(state[-1, 0, :hidden]).double(), -1).numpy()
            visible = min(len(keys), settings.window)
            seen_keys, seen_values = keys[-visible:], values[-visible:]
            votes = torch.softmax(settings.theta * (torch.stack(seen_keys) @ query), -1).numpy()
            weight = float(settings.weights(np.array([visible]))[0])
            rows.append((p_model, weight, votes, seen_values))
            if depth < len(units):
                keys, values = keys + [query], values + [(units[depth], None)]
                _, state = model.step(torch.tensor([units[depth]]), state)
    return rows


def _brute_force(predictor: Predictor, text: str, paths) -> tuple[float, float, dict, float]:
    """Enumerate every draw of every spelling: each unit (and the boundary) from the model or copied from one
    entry. Returns P(word), the probability that something was copied, each context place's expected copies and the
    word's own keys' (both times P, unnormalised)."""
    ends = set(np.flatnonzero(predictor.units.ends).tolist())
    total = copied = own = 0.0
    copies: dict[int, float] = {}
    for units, boundary in paths:
        rows = _rows(predictor, text, units)
        factors = []  # per factor: [(probability, source)] with source None for the model
        for depth, (p_model, weight, votes, values) in enumerate(rows):
            if depth < len(units):
                targets = {units[depth]}
            elif boundary:
                targets = ends
            else:
                break
            options = [((1 - weight) * float(p_model[sorted(targets)].sum()), None)]
            options += [(weight * float(vote), value[1] if value[1] is not None else "own")
                        for vote, value in zip(votes, values) if value[0] in targets]
            factors.append(options)
        for draw in itertools.product(*factors):
            probability = math.prod(p for p, _ in draw)
            total += probability
            sources = [source for _, source in draw if source is not None]
            if sources:
                copied += probability
            for source in sources:
                if source == "own":
                    own += probability
                else:
                    copies[source] = copies.get(source, 0.0) + probability
    return total, copied, copies, own


def test_the_pointer_counts_every_entry_that_votes_as_brute_force_does(cached):
    cached, text = cached
    result = cached.predict(text, k=3, text_cache=True)
    assert result.text_cache and result.query.required == ""
    ids, spans = cached.tokenizer.encode_with_offsets(result.query.context)
    copying = 0
    for prediction in result.predictions:
        explanation = explain_cache(cached, result, prediction, spans, result.query.context)
        total, copied, copies, own = _brute_force(cached, text, prediction.paths)
        copying += explanation.copy_probability > 0.01
        assert math.log(total) == pytest.approx(prediction.logprob, abs=1e-5)
        # The same mixture computed twice, float32 rounding apart (1.1e-6 for the model trained on the shipped excerpt).
        assert explanation.logprob == pytest.approx(prediction.logprob, abs=1e-5)
        assert explanation.copy_probability == pytest.approx(copied / total, abs=1e-6)
        expected = sum(copies.values()) + own
        if expected == 0:  # nothing in the memory votes for this word's units
            assert explanation.positions == [] and explanation.own_share == 0 and explanation.copy_probability == 0
            continue
        listed = {position.unit: position.share for position in explanation.positions}
        assert set(listed) == {place for place, value in copies.items() if value / expected >= LISTED_SHARE}
        for place, share in listed.items():
            assert share == pytest.approx(copies[place] / expected, rel=1e-5)
            start, end = spans[place]
            assert (start, end) == next((p.start, p.end) for p in explanation.positions if p.unit == place)
        assert explanation.own_share == pytest.approx(own / expected, rel=1e-5, abs=1e-12)
        assert explanation.entries == len(copies)
    assert copying  # the cache copies some of these words: the check is not of zeros


def _logprob_with_last(predictor: Predictor, text: str, paths, keep: int) -> float:
    """log P(word) with only the last `keep` context entries in the memory (each row's softmax over them, its weight
    for that many keys), the model's distributions as they are: written plainly."""
    settings = predictor.text_cache_settings
    ends = np.flatnonzero(predictor.units.ends)
    totals = []
    for units, boundary in paths:
        rows = _rows(predictor, text, units)
        logprob = 0.0
        for depth, (p_model, _, _, _) in enumerate(rows):
            if depth == len(units) and not boundary:
                break
            targets = [units[depth]] if depth < len(units) else ends.tolist()
            model, tokenizer, hidden = predictor.model, predictor.tokenizer, predictor.model.config.hidden_dim
            ids = [tokenizer.newline_id, *tokenizer.encode(text)]
            with torch.no_grad():
                features, state = model.features(torch.tensor([ids]), model.init_state(1))
                memory_keys, memory_values = list(features[0, :-1].double())[-settings.window:], ids[1:][-settings.window:]
                keys = memory_keys[len(memory_keys) - keep:] if keep else []  # the entries of the last `keep` units
                values = memory_values[len(memory_values) - keep:] if keep else []
                for unit in units[:depth]:
                    keys.append(state[-1, 0, :hidden].double())
                    values.append(unit)
                    _, state = model.step(torch.tensor([unit]), state)
                keys, values = keys[-settings.window:], values[-settings.window:]
                query = state[-1, 0, :hidden].double()
            weight = float(settings.weights(np.array([len(keys)]))[0])
            if keys:
                votes = torch.softmax(settings.theta * (torch.stack(keys) @ query), -1).numpy()
                cache = sum(float(v) for v, value in zip(votes, values) if value in targets)
            else:
                cache = 0.0
            logprob += math.log((1 - weight) * float(p_model[targets].sum()) + weight * cache)
        totals.append(logprob)
    return float(np.logaddexp.reduce(totals))


def test_the_deletion_curve_equals_removing_the_entries_and_scoring_again(cached):
    cached, text = cached
    result = cached.predict(text, k=2, text_cache=True)
    ids, spans = cached.tokenizer.encode_with_offsets(result.query.context)
    size = min(len(ids), cached.text_cache_settings.window)
    for prediction in result.predictions:
        explanation = explain_cache(cached, result, prediction, spans, result.query.context)
        assert explanation.size == size and explanation.logprob_change[-1] == 0.0
        for keep in (0, 1, 5, size // 2, size - 3, size):
            brute = _logprob_with_last(cached, text, prediction.paths, keep)
            assert explanation.logprob_change[keep] + prediction.logprob == pytest.approx(brute, abs=1e-5), keep
        assert abs(explanation.logprob_change[0]) > 0.01  # removing every entry matters: the check is not of zeros


def test_deletion_reach_is_where_no_deeper_cut_moves_the_word_more_than_the_tolerance():
    change = np.array([-2.0, -0.5, 0.02, -0.03, 0.004, 0.0])
    assert deletion_reach(change, 0.1) == 2
    assert deletion_reach(change, 0.01) == 4
    assert deletion_reach(change, 5.0) == 0
    assert deletion_reach(np.array([np.nan, 0.0]), 0.1) == 1


def test_spellings_differing_only_in_their_last_unit_are_one_group():
    paths = [((1, 2), False), ((1, 3), False), ((1, 2), True), ((), True), ((4,), False), ((5,), False)]
    assert spelling_groups(paths) == [((1,), (2, 3)), ((1, 2), None), ((), None), ((), (4, 5))]


def test_one_explainer_for_every_word_makes_its_rows_once_and_explains_each_word_as_alone(cached, monkeypatch):
    """CacheExplainer makes the rows of all k words (and of a healed part) as one batch at the first word; each
    word's explanation equals that of an explainer made for it alone, which batches only that word's rows."""
    from lm.infer import pointer

    cached, text = cached
    for prompt in (text, text + "ca"):  # the second asks to complete a word: a healed part every word shares
        result = cached.predict(prompt, k=3, text_cache=True)
        _, spans = cached.tokenizer.encode_with_offsets(result.query.context)
        alone = [explain_cache(cached, result, prediction, spans, result.query.context) for prediction in result.predictions]
        batches = []
        made = pointer._rows
        monkeypatch.setattr(pointer, "_rows", lambda reads, prefixes, *rest: batches.append(len(prefixes)) or made(reads, prefixes, *rest))
        explainer = pointer.CacheExplainer(cached, result, spans, result.query.context)
        together = [explainer.explain(prediction) for prediction in result.predictions]
        monkeypatch.setattr(pointer, "_rows", made)
        assert len(batches) == 1 and batches[0] == len(explainer.rows) > 1
        for one, other in zip(alone, together):
            assert [p.unit for p in one.positions] == [p.unit for p in other.positions]
            np.testing.assert_allclose([p.share for p in one.positions], [p.share for p in other.positions], atol=1e-12)
            assert one.copy_probability == pytest.approx(other.copy_probability, abs=1e-12)
            assert one.own_share == pytest.approx(other.own_share, abs=1e-12)
            assert one.logprob == pytest.approx(other.logprob, abs=1e-12)
            np.testing.assert_allclose(one.logprob_change, other.logprob_change, atol=1e-12)
