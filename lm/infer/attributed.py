"""What attribution returns: each prediction with its influence over the text, its reach and (with the text cache) its
pointer, and the text's units and words those refer to (`lm/infer/attribution.py: attribute` makes them).

Plain data: the gradients are taken in lm/infer/word_gradients.py, the reach figures in lm/infer/reach.py, the
pointer in lm/infer/pointer.py, and the views (lm/reports/views.py) and answers read these objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lm.infer.pointer import Pointer
from lm.infer.predictor import PredictionResult, WordPrediction
from lm.infer.reach import Reach

__all__ = ["Attribution", "AttributedPrediction"]


@dataclass
class AttributedPrediction:
    """A prediction with its influence over the text and its reach (and, with the cache, its pointer)."""

    prediction: WordPrediction
    influence: np.ndarray  # (n,) per context unit, in text order
    reach: Reach  # what holds for the prediction as served: the gradient's, widened by the cache's deletion reach
    gradient_reach: Reach  # the gradient's alone
    faithfulness: dict | None = None
    pointer: Pointer | None = None

    def profile(self) -> list[float]:
        """Influence by distance 1..n (the last unit first), divided by the largest."""
        top = float(self.influence.max()) if self.influence.size else 0.0
        return [float(v) / top if top > 0 else 0.0 for v in self.influence[::-1]]


@dataclass
class Attribution:
    """Every attributed prediction for one text, with the text's units and words."""

    result: PredictionResult
    method: str
    threshold: float
    units: list[tuple[str, int, int]]  # (text, start, end) of each context unit, offsets into the read text (result.query.text)
    words: list[tuple[str, int, int]]  # whitespace-separated words of the context
    unit_word: list[int]  # the word of each unit
    predictions: list[AttributedPrediction] = field(default_factory=list)

    def context_summary(self) -> dict:
        """What was read: units, words and characters of the context, and what an input limit left unread (the
        prediction's own summary: the attribution reads the same units)."""
        return self.result.context_summary()

    def word_scores(self, influence: np.ndarray) -> list[float]:
        """Per-unit influence (n,) summed over each word of the context."""
        scores = [0.0] * len(self.words)
        for unit, word in enumerate(self.unit_word):
            if word >= 0:
                scores[word] += float(influence[unit])
        return scores

    def as_dict(self, full: bool = True) -> dict:
        """The HTTP API's structure (`full` adds per-unit and per-word influence and the decay profile). Its `text`
        is the whole text and its offsets index into it, also when an input limit left its start unread."""
        from lm.infer.attribution import HOW  # how the gradient is taken belongs to the entry point, which imports this

        shift = self.result.cut.chars  # offsets here are into the read text, which starts there in the whole text
        predictions = []
        for item in self.predictions:
            entry = {**item.prediction.as_dict(), "reach": item.reach.as_dict(), "gradient_reach": item.gradient_reach.as_dict(),
                     "pointer": item.pointer.as_dict(full, shift) if item.pointer is not None else None}
            if item.faithfulness is not None:
                entry["faithfulness"] = item.faithfulness
            if full:
                entry["influence"] = [
                    {"text": text, "start": start + shift, "end": end + shift, "score": float(score), "word": word}
                    for (text, start, end), score, word in zip(self.units, item.influence, self.unit_word)
                ]
                entry["word_influence"] = [
                    {"text": text, "start": start + shift, "end": end + shift, "score": score}
                    for (text, start, end), score in zip(self.words, self.word_scores(item.influence))
                ]
                entry["profile"] = item.profile()
            predictions.append(entry)
        return {
            "text": self.result.cut.text,
            "context": self.context_summary(),
            "completing": self.result.completing,
            "partial": self.result.query.partial,
            "attribution": {"method": self.method, "threshold": self.threshold, **HOW},
            "predictions": predictions,
            "cache": self.result.text_cache,
        }
