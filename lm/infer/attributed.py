"""What attribution returns: each prediction with its influence over the text, its reach and (with the text cache) its
pointer, and the text's units, words and sentences those refer to (`lm/infer/attribution.py: attribute` makes them).

Plain data: the influence comes from the chosen method (lm/infer/methods), the reach figures from lm/infer/reach.py,
the pointer from lm/infer/pointer.py; the views (lm/reports/views.py) and answers (lm/answers.py) read these objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lm.infer.methods import MethodFigures, MethodOptions
from lm.infer.pointer import Pointer
from lm.infer.predictor import PredictionResult, WordPrediction
from lm.infer.reach import Reach, distance_in

__all__ = ["Attribution", "AttributedPrediction", "Cost", "Foil"]


@dataclass
class AttributedPrediction:
    """A prediction with its influence over the text and its reach (and, with the cache, its pointer)."""

    prediction: WordPrediction
    influence: np.ndarray  # (n,) per context unit, in text order
    reach: Reach  # what holds for the prediction as served: the method's, widened by the cache's deletion reach
    gradient_reach: Reach  # the method's alone (the name is the gradient methods')
    faithfulness: dict | None = None
    pointer: Pointer | None = None
    figures: MethodFigures = field(default_factory=MethodFigures)  # the method's own figures (completeness, ladder)

    def profile(self) -> list[float]:
        """Influence by distance 1..n (the last unit first), divided by the largest."""
        top = float(self.influence.max()) if self.influence.size else 0.0
        return [float(v) / top if top > 0 else 0.0 for v in self.influence[::-1]]


@dataclass(frozen=True)
class Foil:
    """The foil of a contrastive attribution: the word the predictions are explained against."""

    word: str
    logprob: float | None  # exact log P(foil | text), scored as the predictions were; None: probability 0


@dataclass(frozen=True)
class Cost:
    """What one attribution cost, in milliseconds of wall time: the prediction (the read of the text, the search and
    the exact scoring) and the method (every prediction's influence together)."""

    prediction_ms: float
    method_ms: float


@dataclass
class Attribution:
    """Every attributed prediction for one text, with the text's units, words and sentences."""

    result: PredictionResult
    method: str
    threshold: float
    units: list[tuple[str, int, int]]  # (text, start, end) of each context unit, offsets into the read text (result.query.text)
    words: list[tuple[str, int, int]]  # whitespace-separated words of the context
    unit_word: list[int]  # the word of each unit
    predictions: list[AttributedPrediction] = field(default_factory=list)
    sentences: list[tuple[str, int, int]] = field(default_factory=list)  # the context's sentences (reach.sentences_of)
    word_sentence: list[int] = field(default_factory=list)  # the sentence of each word
    options: MethodOptions = field(default_factory=MethodOptions)
    foil: Foil | None = None
    cost: Cost = field(default_factory=lambda: Cost(0.0, 0.0))
    description: str = ""  # the method's one-line description

    def context_summary(self) -> dict:
        """What was read: units, words and characters of the context, and what an input limit left unread (the
        prediction's own summary: the attribution reads the same units)."""
        return self.result.context_summary()

    def distance(self, tokens: int) -> tuple[int, int]:
        """The last `tokens` units of the context in words and characters ((0, 0) for none)."""
        if not tokens:
            return 0, 0
        spans = [(start, end) for _, start, end in self.units]
        return distance_in(tokens, spans, self.unit_word, len(self.result.query.context))

    def word_scores(self, influence: np.ndarray) -> list[float]:
        """Per-unit influence (n,) summed over each word of the context."""
        scores = [0.0] * len(self.words)
        for unit, word in enumerate(self.unit_word):
            if word >= 0:
                scores[word] += float(influence[unit])
        return scores

    def sentence_scores(self, influence: np.ndarray) -> list[float]:
        """Per-unit influence (n,) summed over each sentence of the context (its words' scores summed)."""
        scores = [0.0] * len(self.sentences)
        for word, score in enumerate(self.word_scores(influence)):
            scores[self.word_sentence[word]] += score
        return scores
