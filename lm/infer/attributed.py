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
