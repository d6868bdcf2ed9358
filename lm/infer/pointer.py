"""The text cache's part of one predicted word, exactly: which memory entries it copies from, and how far back
removing entries would change it.

Under the mixture (lm/infer/textcache.py) every unit of a word's spelling,
and the boundary after it, is drawn from one row's distribution

    p_r(u) = (1 - weight_r) m_r(u) + sum over entries i visible to row r of C_ri(u),
    C_ri(u) = weight_r * softmax_i(theta * q_r . k_i) * [entry i was followed by u],

read generatively: the row draws from the model with probability 1 - weight_r,
or the cache picks entry i by its vote and copies the unit that followed it.
The word's probability is the sum over its spellings of the product of
their rows' factors. Two exact statements follow, and this module computes
both (no gradient, no approximation beyond float64 arithmetic):

- The pointer. `copy_probability` is the probability that at least one of
  the spelled units (or the boundary) was copied, given the word:
  1 - sum over spellings of prod_r (1 - weight_r) m_r(u_r), over P(word).
  An entry's `share` is its part of the expected number of copies:
  sum over spellings of P(spelling) sum_r C_ri(u_r) / p_r(u_r), over the
  same sum for every entry. Every entry that votes is counted: the context's
  (its positions in the text) and the keys read along the word's own
  spelling (`own_share`: the cache copying from the word itself).
- The deletion curve. Cutting the text to its last d units leaves the
  memory the entries of those d units: each row's softmax is renormalised
  over them and its weight is the one for that many keys. For every d at
  once (cumulative sums from the nearest entry back), `logprob_change[d]`
  is log P(word) with only those entries, minus log P(word) as served,
  the model's own distributions held fixed (the gradient speaks for them).
  The deletion reach at tolerance t is the smallest d from which no deeper
  cut moves log P(word) by more than t nats.

Both are computed from what the prediction read (`PredictionResult.reads`):
the rows' states, logits and the context's memory, so the probabilities are
the served ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lm.config import TextCacheConfig
from lm.infer.predictor import PredictionResult, Predictor, WordPrediction
from lm.infer.reach import distance_in
from lm.infer.scoring import Path

__all__ = ["CacheExplainer", "CacheExplanation", "CacheRow", "DELETION_TOLERANCES", "Pointer", "PointerPosition", "cache_pointer",
           "deletion_reach", "explain_cache", "spelling_groups"]

# log P moves by at most this when the text beyond the deletion reach is cut: about 1% (the 99% figure) and 10%.
DELETION_TOLERANCES = {"99": -math.log(0.99), "90": -math.log(0.90)}
# Pointer positions with less than this share of the expected copies are counted but not listed.
LISTED_SHARE = 1e-3


@dataclass(frozen=True)
class PointerPosition:
    """A context entry the cache copies the word from: the unit that followed it, and its share of the copies."""

    text: str
    start: int  # character offsets into the context
    end: int
    unit: int  # the unit's index among the context's units
    share: float


@dataclass
class CacheRow:
    """One row of a spelling (its state after the context and a prefix of the spelling), as the mixture saw it."""

    depth: int  # units of the spelling read before this row
    model: np.ndarray  # (V,) float64 model probabilities (tempered)
    weight: float  # the cache's share at this row (for its number of visible keys)
    votes: np.ndarray  # (size,) float64 each context entry's vote, 0 beyond the window
    own_votes: np.ndarray  # (depth,) float64 the votes of the keys read along the spelling
    own_values: np.ndarray  # (depth,) the units that followed those keys
    window_start: int  # the first context entry this row can see
    settings: TextCacheConfig
    kept_weights: np.ndarray  # (size + 1,) the row's weight with only the last d context entries kept, d = 0..size
    totals: np.ndarray  # (size + 1,) the votes it sees with only the last d context entries kept (its own keys' too)


@dataclass(frozen=True)
class CacheExplanation:
    """The cache's part of one word: the pointer and the deletion curve (see the module docstring)."""

    copy_probability: float
    positions: list[PointerPosition]  # context entries with at least LISTED_SHARE of the copies, in text order
    entries: int  # context entries that vote for one of the word's units
    own_share: float  # the share of the copies from keys read along the word's own spelling
    logprob_change: np.ndarray  # (size + 1,) log P(word) with the last d context entries only, minus as served
    size: int  # context entries in the memory (the last `window` units of the text at most)
    logprob: float  # log P(word) as served, computed again from the rows (checks the rows are the served ones)


class CacheExplainer:
    """Explains the predictions of one result (predicted with the text cache): the rows of the mixture after each
    prefix, their factors and the healed part's curve are computed once and shared by every prediction (the
    context's own row and the required part's thousands of one-unit spellings are the same for all k)."""

    def __init__(self, predictor: Predictor, result: PredictionResult, spans: list[tuple[int, int]], context: str,
                 temperature: float = 1.0):
        reads = result.reads
        if reads is None or reads.text_cache is None:
            raise ValueError("the prediction was not mixed with the text cache")
        self.predictor, self.result, self.spans, self.context, self.temperature = predictor, result, spans, context, temperature
        memory = reads.text_cache.memory
        self.size = len(memory.values)
        self.keys = memory.keys.double().numpy()  # (n, H)
        self.values = memory.values.numpy()
        self.hidden = reads.text_cache.hidden_dim
        self.boundary_mask = predictor.units.ends  # (V,) bool: the units that begin with a boundary
        self.rows: dict[tuple[int, ...], CacheRow] = {}
        self.factors: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[np.ndarray, np.ndarray, float, float]] = {}
        self._required: _Curve | None = None
        self._groups: dict[int, tuple[list[Path], list]] = {}  # id(paths) -> (paths, their spelling groups)
        self._prepared = False

    def row(self, prefix: tuple[int, ...]) -> CacheRow:
        found = self.rows.get(prefix)
        if found is None:
            self.prepare([prefix])
            found = self.rows[prefix]
        return found

    def prepare(self, prefixes: list[tuple[int, ...]]) -> None:
        """Make the rows after `prefixes` not made yet, as one batch (`_rows`)."""
        missing = list(dict.fromkeys(prefix for prefix in prefixes if prefix not in self.rows))
        if missing:
            self.rows.update(zip(missing, _rows(self.result.reads, missing, self.keys, self.hidden, self.temperature)))

    def factor(self, prefix: tuple[int, ...], targets: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray, float, float]:
        # Spellings share prefixes: each (row, targets) factor is computed once (targets None: the boundary units).
        found = self.factors.get((prefix, targets))
        if found is None:
            chosen = self.boundary_mask if targets is None else np.array(targets, dtype=np.int64)
            found = self.factors[(prefix, targets)] = _factor(self.row(prefix), chosen, self.values, self.size)
        return found

    def groups(self, paths: list[Path]) -> list[tuple[tuple[int, ...], tuple[int, ...] | None]]:
        """`spelling_groups(paths)`, made once per list of spellings (the required part's: thousands)."""
        found = self._groups.get(id(paths))
        if found is None or found[0] is not paths:
            found = self._groups[id(paths)] = (paths, spelling_groups(paths))
        return found[1]

    def required(self) -> _Curve:
        """The curve of the healed part (the required spellings), the same for every prediction."""
        if self._required is None:
            self._required = _paths_curve(self.groups(self.result.required_paths), self.factor, self.size)
        return self._required

    def explain(self, prediction: WordPrediction) -> CacheExplanation:
        """The pointer and the deletion curve of `prediction`, one of the result's."""
        size, spans, context = self.size, self.spans, self.context
        if not self._prepared:  # every row the result's predictions (and the healed part) use, as one batch
            self._prepared = True
            lists = [other.paths for other in self.result.predictions]
            if self.result.query.required:
                lists.append(self.result.required_paths)
            self.prepare([row for paths in lists for group in self.groups(paths) for row, _ in _group_steps(*group)])
        word = _paths_curve(self.groups(prediction.paths), self.factor, size)
        required = self.required() if self.result.query.required else None
        change = word.logprob - word.logprob[-1]
        logprob = float(word.logprob[-1])
        if required is not None:
            change = change - (required.logprob - required.logprob[-1])
            logprob -= float(required.logprob[-1])
        offset = len(spans) - size  # context entry i is followed by context unit offset + i
        total_copies = word.copies.sum() + word.own_copies
        positions = []
        if total_copies > 0:
            for i in np.flatnonzero(word.copies / total_copies >= LISTED_SHARE):
                start, end = spans[offset + i]
                positions.append(PointerPosition(context[start:end], start, end, offset + int(i),
                                                 float(word.copies[i] / total_copies)))
        copy_probability = 1.0 - math.exp(word.model_only - word.logprob[-1]) if word.logprob[-1] > -math.inf else 0.0
        return CacheExplanation(max(0.0, copy_probability), positions, int(np.count_nonzero(word.copies)),
                                float(word.own_copies / total_copies) if total_copies > 0 else 0.0, change, size, logprob)


def explain_cache(predictor: Predictor, result: PredictionResult, prediction: WordPrediction, spans: list[tuple[int, int]],
                  context: str, temperature: float = 1.0) -> CacheExplanation:
    """The pointer and the deletion curve of `prediction`, one of `result`'s (predicted with the text cache), whose
    context's units span `spans` of `context` (one prediction; `CacheExplainer` explains several sharing work)."""
    return CacheExplainer(predictor, result, spans, context, temperature).explain(prediction)


@dataclass(frozen=True)
class Pointer:
    """Where the text cache's copies of a predicted word come from, and how far back cutting the text changes it.

    `positions`, `copy_probability` and `own_share` as in `CacheExplanation`.
    The pointer reach counts back to the farthest listed entry whose share
    is at least `threshold` times the largest. The deletion reach (`deletion`)
    is the exact statement: cutting the text to its last `tokens` units
    moves log P(word) through the cache by at most `tolerance` nats (model
    distributions held fixed), for the 99% (0.01 nats) and 90% (0.105 nats)
    tolerances.
    """

    positions: list[PointerPosition]  # in text order
    copy_probability: float
    entries: int
    own_share: float
    tokens: int
    words: int
    chars: int
    threshold: float
    deletion: dict[str, dict[str, float | int]]  # "99" / "90" -> tolerance (nats), tokens, words, chars

    def deletion_tokens(self, level: str) -> int:
        """The deletion reach in units at a level ("99" or "90")."""
        return int(self.deletion[level]["tokens"])


def cache_pointer(explanation: CacheExplanation, spans: list[tuple[int, int]], unit_word: list[int], text_length: int,
                  threshold: float) -> Pointer:
    """The pointer of a word from its cache explanation: its threshold reach over the positions' shares and its
    deletion reach at each tolerance, in units, words and characters."""
    n = len(spans)

    def figures(tokens: int) -> dict[str, int]:
        words, chars = distance_in(tokens, spans, unit_word, text_length) if tokens else (0, 0)
        return {"tokens": tokens, "words": words, "chars": chars}

    top = max((p.share for p in explanation.positions), default=0.0)
    strong = [p.unit for p in explanation.positions if top > 0 and p.share >= threshold * top]
    reach = figures(n - min(strong) if strong else 0)
    deletion = {level: {"tolerance": tolerance, **figures(deletion_reach(explanation.logprob_change, tolerance))}
                for level, tolerance in DELETION_TOLERANCES.items()}
    return Pointer(explanation.positions, explanation.copy_probability, explanation.entries, explanation.own_share,
                   reach["tokens"], reach["words"], reach["chars"], threshold, deletion)


def deletion_reach(change: np.ndarray, tolerance: float) -> int:
    """The smallest d (context entries kept) from which no deeper cut, d' >= d, moves log P by more than `tolerance`."""
    moved = np.flatnonzero(~(np.abs(change) <= tolerance))  # nan counts as moved
    return int(moved.max()) + 1 if moved.size else 0


@dataclass
class _Curve:
    """Over a set of spellings: log P for every number d of context entries kept, (size + 1,); log P with every unit
    drawn from the model; each context entry's expected copies times P (size,), and the keys along the spellings'."""

    logprob: np.ndarray
    model_only: float
    copies: np.ndarray
    own_copies: float


def spelling_groups(paths: list[Path]) -> list[tuple[tuple[int, ...], tuple[int, ...] | None]]:
    """`paths` as (prefix, last targets) groups whose probabilities add up to theirs: spellings that differ only in
    their last unit (no boundary after it) form one group, drawing any of those units after the shared prefix;
    a spelling ending at a boundary is its own group, `last targets` None (the boundary units after all of it).

    Exact because every factor of the text cache's mixture, (1 - w) m(T) + w copies(T), and each part of it, is a
    sum over the units of T: the probability of a group is the sum of its spellings'. The constraint "a new word
    starts" is thousands of one-unit spellings and becomes one group. A spelling with no units and no boundary is
    the group ((), ()), with no factor (probability 1)."""
    groups: dict[tuple[tuple[int, ...], bool], list[int]] = {}
    for units, boundary in paths:
        if len(units) == 1 and not boundary:  # most spellings: a healed text's thousands of one-unit ones
            groups.setdefault(((), False), []).append(int(units[0]))
            continue
        units = tuple(map(int, units))
        if boundary:
            groups.setdefault((units, True), [])
        elif units:
            groups.setdefault((units[:-1], False), []).append(units[-1])
        else:
            groups.setdefault(((), False), [])
    return [(prefix, None if boundary else tuple(last)) for (prefix, boundary), last in groups.items()]


def _group_steps(prefix: tuple[int, ...], last: tuple[int, ...] | None
                 ) -> list[tuple[tuple[int, ...], tuple[int, ...] | None]]:
    """The draws of a spelling group, as (the prefix whose row draws, the units drawn; None: a boundary unit): each
    unit of the prefix after the one before it, then the last units or the boundary after all of it (none for a
    group that draws nothing there)."""
    steps = [(prefix[:depth], (prefix[depth],)) for depth in range(len(prefix))]
    if last is None or last:
        steps.append((prefix, last))
    return steps


def _paths_curve(groups: list[tuple[tuple[int, ...], tuple[int, ...] | None]], factor, size: int) -> _Curve:
    """The deletion curve, the model-only probability and the expected copies of a set of spellings, given as their
    `spelling_groups`; `factor(prefix, targets)` is `_factor` at the row after `prefix` for drawing one of `targets`
    (None: the boundary units)."""
    logprobs, model_only, copies, own = [], [], np.zeros(size), 0.0
    for prefix, last in groups:
        curve = np.zeros(size + 1)  # log P(group) with the last d entries, d = 0..size
        full, alone = 0.0, 0.0
        entry_parts, own_parts = [], 0.0  # sum over rows of C_ri / p_r, per entry
        for row_prefix, targets in _group_steps(prefix, last):
            mass, part_of_entries, own_part, alone_mass = factor(row_prefix, targets)
            curve += np.log(mass)
            full += math.log(mass[-1])
            alone += math.log(alone_mass)
            entry_parts.append(part_of_entries / mass[-1])
            own_parts += own_part / mass[-1]
        logprobs.append(curve)
        model_only.append(alone)
        probability = math.exp(full)
        if entry_parts:
            copies += probability * np.sum(entry_parts, axis=0)
        own += probability * own_parts
    if not logprobs:
        return _Curve(np.full(size + 1, -math.inf), -math.inf, copies, own)
    stacked = np.array(logprobs)  # (paths, size + 1)
    top = stacked.max(axis=0)
    safe = np.where(np.isfinite(top), top, 0.0)
    summed = safe + np.log(np.exp(stacked - safe).sum(axis=0))
    best_alone = max(model_only)
    alone_total = best_alone + math.log(sum(math.exp(a - best_alone) for a in model_only)) \
        if best_alone > -math.inf else -math.inf
    return _Curve(np.where(np.isfinite(top), summed, -math.inf), alone_total, copies, own)


def _factor(cache_row: CacheRow, targets: np.ndarray, values: np.ndarray, size: int
            ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One row's factor for drawing one of `targets` (units, or a boolean mask over the vocabulary: the boundary
    units): its value with the last d context entries for d = 0..size, (size + 1,); each entry's term C_ri at full
    memory, (size,); the spelling's own keys' term; and the model's term (1 - weight) m(targets)."""
    model = float(cache_row.model[targets].sum())
    if targets.dtype == np.bool_:  # a mask (the boundary units, thousands): membership is a lookup, not a sort
        hit, own_hit = targets[values], targets[cache_row.own_values]
    elif len(targets) == 1:  # most factors: one unit of a spelling (np.isin sorts, for any number of targets)
        hit, own_hit = values == targets[0], cache_row.own_values == targets[0]  # (size,): entries followed by it
    else:
        hit, own_hit = np.isin(values, targets), np.isin(cache_row.own_values, targets)
    own_numerator = float(cache_row.own_votes[own_hit].sum())
    totals = cache_row.totals  # (size + 1,) kept d = 0..size
    numerators = np.zeros(size + 1)
    np.cumsum(cache_row.votes[::-1] * hit[::-1], out=numerators[1:])  # entry size-1 (distance 1) first
    numerators += own_numerator
    cached = np.divide(numerators, totals, out=np.zeros(size + 1), where=totals > 0)
    weights = cache_row.kept_weights
    mass = (1 - weights) * model + weights * cached
    full_total = totals[-1]
    entry_terms = cache_row.weight * cache_row.votes * hit / full_total if full_total > 0 else np.zeros(size)
    own_term = cache_row.weight * own_numerator / full_total if full_total > 0 else 0.0
    return mass, entry_terms, own_term, (1 - cache_row.weight) * model


def _rows(reads, prefixes: list[tuple[int, ...]], keys: np.ndarray, hidden: int, temperature: float) -> list[CacheRow]:
    """The mixture's parts at the row after each prefix (the context's own row for ()), as TextCache.mix computes
    them. One batch: the rows' model distributions are one (P, V) array and their scores against the context's keys
    one product, where a row at a time cost a few hundred microseconds each (a short prompt's k words read tens)."""
    settings = reads.text_cache.settings
    size = len(keys)
    afters = [reads.after(prefix) for prefix in prefixes]
    queries = torch.stack([state[-1, 0, :hidden] for state, _ in afters]).double()  # (P, H)
    # The keys read along a row's own spelling are the outputs after its shorter prefixes: the products of the rows'
    # queries with the output after every prefix of theirs, (P, A), the prefixes themselves included (never empty).
    place = {}
    for prefix in prefixes:
        for depth in range(len(prefix) + 1):
            place.setdefault(prefix[:depth], len(place))
    outputs = torch.stack([reads.state(prefix)[-1, :hidden] for prefix in place]).double()  # (A, H)
    own_products = queries.mm(outputs.T).numpy()
    scaled = torch.stack([logits for _, logits in afters]).double().numpy() / temperature  # (P, V)
    models = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    models /= models.sum(axis=1, keepdims=True)
    # Products in torch: numpy's BLAS would start threads of its own beside torch's (see TextCache).
    scores = settings.theta * torch.from_numpy(keys).mm(queries.T).T.contiguous().numpy()  # (P, n)
    depths = np.array([len(prefix) for prefix in prefixes])
    weights = settings.weights(np.minimum(size + depths, settings.window))  # (P,)
    kept_weights = {}  # depth -> (size + 1,): a row's weight with the last d context keys kept depends on its depth alone
    rows = []
    for index, prefix in enumerate(prefixes):
        depth = len(prefix)
        window_start = max(0, size + depth - settings.window)  # older context keys are beyond the window
        if depth not in kept_weights:
            kept = np.minimum(np.arange(size + 1), size - window_start)  # the context keys still visible
            kept_weights[depth] = settings.weights(kept + depth)  # its own keys are always visible
        # The keys read along the spelling: the outputs after its shorter prefixes (columns of own_products).
        own_scores = settings.theta * own_products[index, [place[prefix[:j]] for j in range(depth)]]
        row_scores = scores[index]
        visible = np.arange(size) >= window_start
        top = max(row_scores[visible].max(initial=-math.inf), own_scores.max(initial=-math.inf))
        votes = np.where(visible, np.exp(row_scores - top), 0.0) if np.isfinite(top) else np.zeros(size)
        own_votes = np.exp(own_scores - top) if np.isfinite(top) else np.zeros(depth)
        totals = np.zeros(size + 1)
        np.cumsum(votes[::-1], out=totals[1:])  # the nearest entry (distance 1) first
        totals += float(own_votes.sum())
        rows.append(CacheRow(depth, models[index], float(weights[index]), votes, own_votes,
                             np.array(prefix, dtype=np.int64), window_start, settings, kept_weights[depth], totals))
    return rows
