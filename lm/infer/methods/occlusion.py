"""Occlusion by distance: the exact change in the objective when the text farther back than d units is replaced by
neutral filler, for a ladder of distances d (Zeiler and Fergus 2014's occlusion, by distance rather than by patch).

This is the method that is true by construction: each rung is an exact
re-scoring (lm/infer/scoring.py, with the text cache when the words were
predicted with it) of the same text with its start replaced. The filler is
lm/infer/faithfulness.py's FILLER (frequent function words), tokenised once and
laid over the replaced units unit for unit, so every rung reads exactly n
units and only the replaced ones differ.

The ladder: distance 0 (the whole text replaced), then `rungs - 1` distances
geometric from 1 unit to the text's length (exclusive; the unchanged text is
the last rung, d = n, change 0), duplicates dropped. The rungs share their
filler prefix, whose states are read once per model and kept for every
request (`FillerStates`); each rung reads only its kept text (the short ones
as one batch of the fused layers, `read_rungs`), and every word is scored on
every rung in one batched pass (see `rung_values`).

Influence per unit comes from the ladder: the change between consecutive
rungs, |c(d_i) - c(d_(i+1))|, spread evenly over the units between them (at
distances d_i + 1 .. d_(i+1)). `exact_reach` is the shortest kept distance
from which on every rung moves the objective by less than
OCCLUSION_TOLERANCE (0.1 nats): beyond it, replacing the text changes little.
With a foil the objective is log P(word) - log P(foil), both re-scored.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import NamedTuple

import numpy as np
import torch

from lm.infer.faithfulness import FILLER
from lm.infer.methods.base import Method, MethodContext, MethodFigures, MethodOutput, Rung
from lm.infer.predictor import WordPrediction
from lm.infer.scoring import NEG, score_words_many
from lm.infer.textcache import read_memory
from lm.infer.word_gradients import target_logprobs

__all__ = ["FILLER_STATES_BYTES", "OCCLUSION_TOLERANCE", "TOGETHER_UNITS", "FillerStates", "RungRead",
           "filler_states", "filler_states_bytes", "ladder", "read_rungs", "rung_values", "METHOD"]

OCCLUSION_TOLERANCE = 0.1  # nats: a cut that moves log P by less than this leaves the prediction as it was
# The most bytes one model's kept filler states may hold (the default 1 x 512 LSTM: 4 KB a unit, so 16,000 units);
# a longer filler is read for its request alone.
FILLER_STATES_BYTES = 64 * 2**20
# Rungs keeping at most this many units are read as one batch, longer ones alone (`read_rungs`). Measured on
# runs/base (2 cores, 5 texts x 3, mean of median ms of occlusion) with 24 / 48 / 96 / every rung in the batch:
# without the cache 49.0 / 47.2 / 45.6 / 48.2 at 20 words, 112.6 / 111.8 / 108.5 / 107.8 at 200 and
# 337.6 / 299.4 / 299.6 / 337.6 at 1,000; with it 79.5 / 74.0 / 75.5 / 77.2, 171.1 / 162.8 / 168.0 / 172.3 and
# 410.6 / 410.5 / 403.8 / 466.1.
TOGETHER_UNITS = 48


def ladder(n: int, rungs: int) -> list[int]:
    """The kept distances (in units) of a ladder of `rungs` rungs over an n-unit text: 0, then geometric in [1, n)."""
    if n <= 0:
        return []
    distances = {0}
    for index in range(rungs - 1):
        distance = int(round(n ** (index / max(rungs - 1, 1))))
        if distance < n:
            distances.add(distance)
    return sorted(distances)


def filler_units(ctx: MethodContext, count: int) -> list[int]:
    """`count` units of neutral filler, as the tokenizer spells FILLER repeated."""
    tokenizer = ctx.predictor.tokenizer
    units: list[int] = []
    repeat = 1
    while len(units) < count:
        repeat *= 2
        units = tokenizer.encode(FILLER * repeat)
    return units[:count]


class FillerStates:
    """Every state along the filler, kept for one predictor's model: the filler is the same text for every request,
    so its read (as long as the text occluded) is done once, not once per request.

    `along(predictor, units)` gives (len(units) + 1, L, 1, S): the state after
    the line break and the first m of `units`, for every m. It assumes:
    - the states depend only on the model's weights and the units: they are
      read again when a parameter of the model changes (its storage or version
      counter, as the step engine checks its packed weights);
    - fillers of different lengths share their start (`filler_units` cuts
      them from the same repeated text): units are compared with the kept
      ones, and only those past the first difference are read;
    - the top layer's output at each position is the first H numbers of its
      top state row (as the step engine's `output_from_state` takes it), so the
      text cache's memory over the filler comes from the same states.
    States past FILLER_STATES_BYTES are read for the request and not kept.
    The states come from single cell steps (`Predictor.read_states`), which
    agree with the fused layers' read to float32 rounding."""

    def __init__(self) -> None:
        self._units: list[int] = []
        self._states: torch.Tensor | None = None  # (len(_units) + 1, L, 1, S)
        self._weights: tuple = ()
        self._lock = threading.Lock()

    @staticmethod
    def _weights_key(model: torch.nn.Module) -> tuple:
        return tuple((id(p), p.data_ptr(), p._version) for p in model.parameters())  # as StepEngine.packed checks

    @property
    def nbytes(self) -> int:
        """The bytes its kept states hold."""
        states = self._states
        return 0 if states is None else states.numel() * states.element_size()

    def along(self, predictor, units: list[int]) -> torch.Tensor:
        with self._lock:
            key = self._weights_key(predictor.model)
            if key != self._weights or self._states is None:
                start = predictor.read_states([predictor.tokenizer.newline_id], predictor.zero_state())  # (1, L, 1, S)
                self._units, self._states, self._weights = [], start, key
            kept = self._units[: len(units)]
            same = len(kept) if kept == units[: len(kept)] else next(i for i, (a, b) in enumerate(zip(kept, units)) if a != b)
            if same == len(units):
                return self._states[: len(units) + 1]
            more = predictor.read_states(units[same:], self._states[same])  # (len(units) - same, L, 1, S)
            states = torch.cat([self._states[: same + 1], more])
            if states.numel() * states.element_size() <= FILLER_STATES_BYTES:
                self._units, self._states = list(units), states
            return states


_FILLERS: "weakref.WeakKeyDictionary[object, FillerStates]" = weakref.WeakKeyDictionary()
_FILLERS_LOCK = threading.Lock()


def filler_states_bytes(predictor) -> int:
    """Bytes of filler states kept for `predictor` (0 before its first occlusion); for operators' metrics."""
    with _FILLERS_LOCK:
        kept = _FILLERS.get(predictor)
    return kept.nbytes if kept is not None else 0


def filler_states(predictor, units: list[int]) -> torch.Tensor:
    """The states along the filler `units` (len + 1, L, 1, S), from the predictor's kept `FillerStates`."""
    with _FILLERS_LOCK:
        kept = _FILLERS.setdefault(predictor, FillerStates())
    return kept.along(predictor, units)


class RungRead(NamedTuple):
    """One rung's text read: its units (the line break first), the state after them and, with the text cache, the
    top layer's output after each (the cache's keys)."""

    ids: list[int]  # (n + 1,)
    state: torch.Tensor  # (L, 1, S)
    outputs: torch.Tensor | None  # (n + 1, H), or None without the text cache


def read_rungs(predictor, along: torch.Tensor, filler: list[int], units: tuple[int, ...], distances: list[int],
               with_outputs: bool) -> list[RungRead]:
    """Each rung's text, the units farther back than its distance replaced by filler, read with the model's fused
    layers from a kept filler state (`along`, from `filler_states`); the filler part's outputs are those states' top
    rows.

    The rungs' texts end together. Those keeping at most TOGETHER_UNITS units are read as one batch, every row as
    long as the longest of them: from the filler state where that one begins, each shorter rung reading filler
    up to where its own text begins (what its kept state holds, to float32 rounding). Each longer rung is read
    alone, from its own kept state. It assumes what makes this pay (runs/base, 2 cores): a fused read costs about
    1 ms to set up and 0.07 ms a unit for one row, 0.13-0.16 ms a unit for two to eight rows, against 0.4-0.5 ms
    for a cell step; so the short rungs of a geometric ladder cost one set-up and the longest one's length, and a
    long rung's own length is not paid twice over."""
    n = len(units)
    hidden = predictor.model.config.hidden_dim
    starts = [n - distance for distance in distances]
    reading = [row for row, distance in enumerate(distances) if distance > 0]
    together = [row for row in reading if distances[row] <= TOGETHER_UNITS]
    groups = ([together] if together else []) + [[row] for row in reading if distances[row] > TOGETHER_UNITS]
    finals: dict[int, torch.Tensor] = {}  # row -> (L, 1, S)
    own_outputs: dict[int, torch.Tensor] = {}  # row -> the rung's own outputs (distance, H)
    for group in groups:
        begin = min(starts[row] for row in group)
        ids = torch.tensor([[*filler[begin : starts[row]], *units[starts[row] :]] for row in group], dtype=torch.long)
        outputs, state = predictor.model.features(ids, along[begin].expand(-1, len(group), -1).contiguous())
        for column, row in enumerate(group):
            finals[row] = state[:, column : column + 1]
            own_outputs[row] = outputs[column, starts[row] - begin :]
    reads = []
    for row, start in enumerate(starts):
        ids = [predictor.tokenizer.newline_id, *filler[:start], *units[start:]]
        state = finals.get(row, along[start])  # a rung of distance 0 is the filler alone
        own = None
        if with_outputs:
            own = along[: start + 1, -1, 0, :hidden]
            if row in own_outputs:
                own = torch.cat([own, own_outputs[row]])
        reads.append(RungRead(ids, state, own))
    return reads


def rung_values(ctx: MethodContext, distances: list[int], words: list[WordPrediction]) -> np.ndarray:
    """Exact log P(word | the text with the units farther back than d replaced by filler): (R, W) float64.

    The rungs share their filler, and so does every request: its states are
    read once per model and kept (`FillerStates`); each rung's kept text is
    read from the state where it begins (`read_rungs`: the work is the
    longest short rung's length in one batched read plus each long rung's own
    length, not R times the text).

    Without the text cache, the rungs that keep part of the text (d >= 1)
    are scored along the spellings the exact scoring found for the unchanged
    text (`target_logprobs`), in one batched pass: they end with the same
    units, and those spellings are the ones with mass (against a fresh
    search of every rung, the largest difference over 19 texts of 20 and 200
    words on runs/base was 2e-4 nats). The rung that replaces the whole text
    (d = 0) ends differently, so other spellings can carry its mass (0.024
    nats off on "The capital of France is "): it is scored afresh
    (`score_words`), a search of its own. With the text
    cache every rung's mixture copies from its own text, so every rung is
    scored afresh, with its own memory, as a served prediction would be;
    the rungs' searches run side by side (`score_words_many`: one batched
    step per round for all of them)."""
    predictor, units = ctx.predictor, ctx.units
    n = len(units)
    filler = filler_units(ctx, n)
    cached = ctx.result.text_cache
    settings = predictor.text_cache_settings if cached else None
    with torch.inference_mode():
        along = filler_states(predictor, filler)  # along[m]: after the line break and m filler units
        reads = read_rungs(predictor, along, filler, units, distances, cached)
        states = torch.cat([read.state for read in reads], dim=1)  # (L, R, S), in ladder order
        logits = predictor.output_from_state(states).float()  # (R, V)
    fresh = [cached or d == 0 for d in distances]
    values = np.full((len(distances), len(words)), NEG)
    batched = [rung for rung, alone in enumerate(fresh) if not alone]
    spellings = [word.paths for word in words] + ([ctx.result.required_paths] if ctx.query.required else [])
    if batched and any(spellings):
        with torch.no_grad():
            chosen = torch.tensor(batched, dtype=torch.long)
            first = torch.log_softmax(logits[chosen].double() / ctx.temperature, dim=-1)
            ends = torch.from_numpy(predictor.units.ends)
            targets = [(row, paths) for row in range(len(batched)) for paths in spellings]
            sums = target_logprobs(predictor, states[:, chosen], first, targets, ends, ctx.temperature).numpy()
            sums = sums.reshape(len(batched), len(spellings))  # (rungs, targets)
            found = sums[:, : len(words)] - (sums[:, len(words):] if ctx.query.required else 0.0)
            found[~np.isfinite(found)] = NEG
            values[batched] = found
    searched = [rung for rung, alone in enumerate(fresh) if alone]
    knowns, line_starts = [], []
    for rung in searched:
        read = reads[rung]
        memory = None if settings is None else read_memory(None, None, read.outputs.float(), read.ids, settings.window)
        context = predictor.context_from(tuple(read.ids[1:]), read.state.contiguous(), logits[rung], memory)
        knowns.append(predictor.reads_after(context, ctx.temperature, cached))
        line_starts.append(context.line_start)
    # The rungs' searches side by side: each round's reads of every rung in one batched step.
    scored = score_words_many(predictor.units, knowns, line_starts, ctx.query, [word.word for word in words])
    for rung, (exact, _) in zip(searched, scored):
        values[rung] = [spelling.logprob for spelling in exact]
    return values


def influence_from_ladder(distances: list[int], changes: np.ndarray, n: int) -> np.ndarray:
    """Per-unit influence (n,) in text order from the changes c(d) at the ladder's distances (c(n) = 0)."""
    influence = np.zeros(n)
    points = [*distances, n]
    values = [*changes, 0.0]
    for (near, far), (c_near, c_far) in zip(zip(points, points[1:]), zip(values, values[1:])):
        if far > near:  # units at distances near + 1 .. far, i.e. text positions n - far .. n - near - 1
            influence[n - far : n - near] = abs(c_near - c_far) / (far - near)
    return influence


def exact_reach(distances: list[int], changes: np.ndarray, n: int) -> int:
    """The shortest kept distance from which every rung moves the objective by less than OCCLUSION_TOLERANCE."""
    reach = n
    for distance, change in sorted(zip(distances, changes), reverse=True):
        if not abs(change) < OCCLUSION_TOLERANCE:
            break
        reach = distance
    return reach


def compute(ctx: MethodContext) -> MethodOutput:
    """Re-score every prediction (and the foil) after each rung's replacement; influence from the ladder."""
    predictions = ctx.result.predictions
    n = len(ctx.units)
    distances = ladder(n, ctx.options.rungs)
    if not distances:
        return MethodOutput(np.zeros((len(predictions), 0)), [MethodFigures(ladder=[], exact_reach=0, tolerance=OCCLUSION_TOLERANCE) for _ in predictions])
    if ctx.foil is not None and ctx.foil.logprob == NEG:  # no contrast with a word of probability 0
        return MethodOutput(np.zeros((len(predictions), n)), [MethodFigures(ladder=[], exact_reach=0, tolerance=OCCLUSION_TOLERANCE) for _ in predictions])
    words = list(predictions) + ([ctx.foil] if ctx.foil is not None else [])
    values = rung_values(ctx, distances, words)  # (R, W)
    original = np.array([prediction.logprob for prediction in predictions])  # (k,)
    spellable = (values > NEG / 2).all(axis=1, keepdims=True) if ctx.foil is not None else values > NEG / 2
    objective = values[:, : len(predictions)]
    if ctx.foil is not None:
        objective = objective - values[:, len(predictions):]
        original = original - ctx.foil.logprob
    # A word (or foil) of probability 0 after a replacement has no finite change: such a rung counts as decisive.
    changes = np.where(spellable[:, : len(predictions)] if ctx.foil is None else spellable, objective - original[None, :],
                       -np.inf)  # (R, k)
    influence, figures = np.zeros((len(predictions), n)), []
    for row in range(len(predictions)):
        column = changes[:, row]
        usable = np.where(np.isfinite(column), column, -1e3)  # bounded stand-in: ranks the rung as decisive
        influence[row] = influence_from_ladder(distances, usable, n)
        rungs = [Rung(d, float(objective[i, row]) if math.isfinite(column[i]) else None,
                      float(column[i]) if math.isfinite(column[i]) else None) for i, d in enumerate(distances)]
        figures.append(MethodFigures(ladder=rungs, exact_reach=exact_reach(distances, usable, n),
                                     tolerance=OCCLUSION_TOLERANCE))
    return MethodOutput(influence, figures)


METHOD = Method("occlusion", "the exact change of log P(word) when the text farther back than d units is replaced by "
                "neutral filler, for a ladder of d, spread over the units between rungs", compute, order=40,
                gradient=False)
