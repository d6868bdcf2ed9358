"""Recall of planted keys, and whether the reach figures tell the truth about it (corpora/planted.py).

For every planted example the model reads the question (the text up to the
answer) and is measured at the prediction point:

- recall: is the key its top-1 word, and the exact log P(key | question);
- reach: the threshold and 99%-mass reach of its top prediction, in
  characters, and whether the planted key lies inside each (the key's
  distance is counted like the reach: from the end of the context the
  model read back to the key's first character);
- the key's share: the fraction of the top prediction's gradient influence
  that falls on the units spelling the planted key;
- ablation: the planted key replaced by another key, how far log P(top
  word) moves. A truthful reach says the key matters exactly when
  replacing it changes the answer.

`recall_by_distance` and `truthfulness` summarise the measures; controls
(whose answer the text does not hold) are kept apart and give the chance
level that the real examples are compared with.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np

from corpora.planted import KEYS, PlantedExample
from lm.infer.attribution import attribute
from lm.infer.predictor import Predictor

__all__ = ["RecallMeasure", "measure_recall", "recall_by_distance", "truthfulness"]


@dataclass(frozen=True)
class RecallMeasure:
    """What one planted question showed."""

    distance: int  # characters from the end of the read context back to the planted key
    control: bool
    key: str
    predicted: str  # the model's top-1 word ("" when it predicted nothing)
    recalled: bool  # predicted == key
    key_logprob: float  # exact log P(key | question)
    top_logprob: float  # exact log P(predicted | question)
    reach_chars: int  # threshold reach of the top prediction
    mass99_chars: int  # 99%-mass reach
    key_inside: bool  # distance <= reach_chars
    key_inside_mass99: bool
    key_share: float  # share of the top prediction's influence on the planted key's units
    ablation_change: float | None  # log P(top word) after replacing the planted key, minus before; None if not run

    def as_dict(self) -> dict:
        return asdict(self)


def measure_recall(predictor: Predictor, examples: list[PlantedExample], threshold: float = 0.01, ablate: bool = True,
                   seed: int = 0) -> list[RecallMeasure]:
    """Measure every example (see the module docstring); `ablate` also runs the key-replacement check."""
    rng = random.Random(seed)
    measures = []
    for example in examples:
        attribution = attribute(predictor, example.question, k=1, threshold=threshold)
        context_length = len(attribution.result.query.context)
        distance = context_length - example.key_start
        key_logprob = predictor.score_word(example.question, example.key)
        if not attribution.predictions:
            measures.append(RecallMeasure(distance, example.control, example.key, "", False, key_logprob, -math.inf, 0, 0,
                                          False, False, 0.0, None))
            continue
        top = attribution.predictions[0]
        influence = top.influence
        key_end = example.key_start + len(example.planted)
        on_key = [index for index, (_, start, end) in enumerate(attribution.units) if start < key_end and end > example.key_start]
        total = float(influence.sum())
        share = float(influence[on_key].sum()) / total if total > 0 and on_key else 0.0
        change = None
        if ablate:
            other = rng.choice([key for key in KEYS if key != example.planted])
            replaced = example.question[: example.key_start] + other + example.question[key_end:]
            change = predictor.score_word(replaced, top.prediction.word) - top.prediction.logprob
        reach = top.reach
        measures.append(RecallMeasure(
            distance=distance, control=example.control, key=example.key, predicted=top.prediction.word,
            recalled=top.prediction.word == example.key, key_logprob=key_logprob, top_logprob=top.prediction.logprob,
            reach_chars=reach.chars, mass99_chars=reach.mass99_chars, key_inside=distance <= reach.chars,
            key_inside_mass99=distance <= reach.mass99_chars, key_share=share, ablation_change=change))
    return measures


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def recall_by_distance(measures: list[RecallMeasure], edges: tuple[int, ...] | None = None) -> list[dict]:
    """Per distance bucket [edges[i], edges[i+1]): the real examples' and the controls' figures side by side.

    The default buckets are 40-80, 80-160, 160-320 and 320+ characters; the first starts lower when a
    question is closer than 40 (a task planted at shorter distances), so that every question is counted."""
    if edges is None:
        edges = (min([40] + [m.distance for m in measures]), 80, 160, 320, 10**9)
    rows = []
    for low, high in zip(edges, edges[1:]):
        inside = [m for m in measures if low <= m.distance < high]
        real = [m for m in inside if not m.control]
        controls = [m for m in inside if m.control]
        rows.append({
            "from": low, "to": high if high < 10**9 else None, "examples": len(real), "controls": len(controls),
            "top1": sum(m.recalled for m in real) / len(real) if real else math.nan,
            "key_probability": _median([math.exp(m.key_logprob) for m in real]),
            "control_top1": sum(m.recalled for m in controls) / len(controls) if controls else math.nan,
            "chance": 1 / len(KEYS),
            "reach_chars": _median([m.reach_chars for m in real]),
            "mass99_chars": _median([m.mass99_chars for m in real]),
            "key_share": _median([m.key_share for m in real]),
        })
    return rows


def truthfulness(measures: list[RecallMeasure], confidence: float = 0.5, moved: float = 0.1) -> dict:
    """Does the reach tell the truth? Over the real (non-control) examples:

    - of those recalled with P(key) >= `confidence`, the fraction whose key lies inside the threshold reach;
    - the key's influence share of the recalled against the missed ones (medians);
    - ablation: how often "replacing the key moves log P(top word) by more than `moved` nats" agrees with "the key
      is inside the threshold reach", and the median |change| inside and outside.
    """
    real = [m for m in measures if not m.control]
    confident = [m for m in real if m.recalled and m.key_logprob >= math.log(confidence)]
    missed = [m for m in real if not m.recalled]
    ablated = [m for m in real if m.ablation_change is not None and math.isfinite(m.ablation_change)]
    agree = [(abs(m.ablation_change) > moved) == m.key_inside for m in ablated]
    return {
        "confidence": confidence,
        "confident_recalls": len(confident),
        "key_inside_reach_when_recalled": sum(m.key_inside for m in confident) / len(confident) if confident else math.nan,
        "key_share_recalled": _median([m.key_share for m in real if m.recalled]),
        "key_share_missed": _median([m.key_share for m in missed]),
        "ablation_threshold_nats": moved,
        "ablation_agreement": sum(agree) / len(agree) if agree else math.nan,
        "ablation_change_inside": _median([abs(m.ablation_change) for m in ablated if m.key_inside]),
        "ablation_change_outside": _median([abs(m.ablation_change) for m in ablated if not m.key_inside]),
    }
