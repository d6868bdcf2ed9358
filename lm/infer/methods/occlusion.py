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
the last rung, d = n, change 0), duplicates dropped. Every rung is read in
one batch with the model's fused layers (R rows of n units), then scored.

Influence per unit comes from the ladder: the change between consecutive
rungs, |c(d_i) - c(d_(i+1))|, spread evenly over the units between them (at
distances d_i + 1 .. d_(i+1)). `exact_reach` is the shortest kept distance
from which on every rung moves the objective by less than
OCCLUSION_TOLERANCE (0.1 nats): beyond it, replacing the text changes little.
With a foil the objective is log P(word) - log P(foil), both re-scored.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lm.infer.faithfulness import FILLER
from lm.infer.methods.base import Method, MethodContext, MethodFigures, MethodOutput, Rung
from lm.infer.scoring import NEG, score_words
from lm.infer.textcache import read_memory

__all__ = ["OCCLUSION_TOLERANCE", "ladder", "METHOD"]

OCCLUSION_TOLERANCE = 0.1  # nats: a cut that moves log P by less than this leaves the prediction as it was


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


def rung_values(ctx: MethodContext, distances: list[int], words: list[str]) -> np.ndarray:
    """Exact log P(word | the text with the units farther back than d replaced by filler): (R, W) float64."""
    predictor, units = ctx.predictor, ctx.units
    n = len(units)
    filler = filler_units(ctx, n)
    rows = torch.tensor([[predictor.tokenizer.newline_id, *filler[: n - d], *units[n - d:]] for d in distances],
                        dtype=torch.long)  # (R, n + 1)
    model = predictor.model
    settings = predictor.text_cache_settings if ctx.result.text_cache else None
    with torch.inference_mode():
        outputs, states = model.features(rows, model.init_state(len(distances)))  # (R, n + 1, H), (L, R, S)
        logits = predictor.output_from_state(states).float()  # (R, V)
    values = np.empty((len(distances), len(words)))
    for index in range(len(distances)):
        kept = tuple(int(unit) for unit in rows[index, 1:])
        memory = None
        if settings is not None:  # the text cache over the replaced text, as a served prediction would build it
            memory = read_memory(None, None, outputs[index].float(), rows[index].tolist(), settings.window)
        context = predictor.context_from(kept, states[:, index : index + 1].contiguous(), logits[index], memory)
        reads = predictor.reads_after(context, ctx.temperature, settings is not None)
        exact, _ = score_words(predictor.units, reads, context.line_start, ctx.query, words)
        values[index] = [spelling.logprob for spelling in exact]
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
    words = [prediction.word for prediction in predictions] + ([ctx.foil.word] if ctx.foil is not None else [])
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
