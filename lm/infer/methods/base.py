"""What an attribution method is given and what it returns (the registry's contract; see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lm.infer.context_grad import ContextTrace
from lm.infer.predictor import PredictionResult, Predictor, WordPrediction
from lm.infer.query import Query

__all__ = ["BASELINES", "Completeness", "MAX_RUNGS", "MAX_STEPS", "Method", "MethodContext", "MethodFigures",
           "MethodOptions", "MethodOutput", "Rung"]

BASELINES = ("zero", "pad")  # integrated gradients' baseline input: the zero embedding, or the pad unit's embedding
MAX_STEPS = 128  # integrated gradients' steps at most (each is a backward pass over the text)
MAX_RUNGS = 32  # occlusion's ladder at most (each rung is a read of the text)


@dataclass(frozen=True)
class MethodOptions:
    """The methods' options; each method reads those it understands and ignores the rest."""

    steps: int = 16  # integrated gradients: points on the path from the baseline to the input
    baseline: str = "zero"  # integrated gradients: "zero" (zero embeddings) or "pad" (the pad unit's embedding)
    rungs: int = 10  # occlusion: distances in its ladder (0, then geometric from 1 unit to the text's length)

    def __post_init__(self):
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, not {self.steps}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, not {self.baseline!r}")
        if not 2 <= self.rungs <= MAX_RUNGS:
            raise ValueError(f"rungs must be between 2 and {MAX_RUNGS}, not {self.rungs}")


@dataclass
class MethodContext:
    """Everything a method may use about one attributed text (built once by lm/infer/attribution.py: attribute)."""

    predictor: Predictor
    trace: ContextTrace  # the one read of the text: ids (n + 1,) with the leading line break, every layer's in/outputs
    result: PredictionResult  # the k predictions being attributed (result.text_cache: mixed with the text cache)
    query: Query  # result.query: the read part of the text
    spans: list[tuple[int, int]]  # (start, end) of each of the n context units in query.context
    temperature: float
    options: MethodOptions
    foil: WordPrediction | None = None  # the foil word, scored exactly as the predictions were (paths included)

    @property
    def contrastive(self) -> bool:
        """Whether the objective is log P(word) - log P(foil) rather than log P(word)."""
        return self.foil is not None

    @property
    def units(self) -> tuple[int, ...]:
        """The n context units read (without the leading line break)."""
        return tuple(int(unit) for unit in self.trace.ids[1:])


@dataclass(frozen=True)
class Completeness:
    """Integrated gradients' check (Sundararajan et al. 2017): the attributions sum to the objective's change from
    the baseline to the input."""

    attribution_sum: float  # the signed attributions summed over every unit
    input_value: float  # the objective at the input (log P(word), or minus log P(foil) when contrastive)
    baseline_value: float  # the objective at the baseline

    @property
    def gap(self) -> float:
        """attribution_sum - (input_value - baseline_value): 0 for exact integration."""
        return self.attribution_sum - (self.input_value - self.baseline_value)


@dataclass(frozen=True)
class Rung:
    """One rung of occlusion's ladder: the text farther back than `distance` units replaced by neutral filler."""

    distance: int  # units kept, counted back from the prediction point
    value: float | None  # the objective (log P(word), less log P(foil) when contrastive) after the replacement
    change: float | None  # value minus the objective on the unchanged text (None: the word had probability 0)


@dataclass
class MethodFigures:
    """What a method reports beyond per-unit influence, for one prediction (every field optional)."""

    completeness: Completeness | None = None  # integrated gradients
    ladder: list[Rung] | None = None  # occlusion
    exact_reach: int | None = None  # occlusion: the shortest kept distance whose rungs (and every longer) move
    # the objective by less than `tolerance` nats (units; 0: even replacing the whole text does not)
    tolerance: float | None = None


@dataclass
class MethodOutput:
    """A method's answer for the k predictions of one text."""

    influence: np.ndarray  # (k, n) float64, >= 0, per prediction per context unit in text order
    figures: list[MethodFigures] = field(default_factory=list)  # per prediction; empty: none beyond influence

    def __post_init__(self):
        if self.influence.ndim != 2:
            raise ValueError(f"influence must be (k, n), not of shape {self.influence.shape}")
        if self.figures and len(self.figures) != self.influence.shape[0]:
            raise ValueError("figures must have one entry per prediction")


@dataclass(frozen=True)
class Method:
    """A registered attribution method."""

    name: str  # the `method` value (HTTP, --method, the page's menu)
    description: str  # one line: what the influence of a unit is
    compute: Callable[[MethodContext], MethodOutput]
    order: int = 100  # place in listings (menus, --help): lower first
    gradient: bool = True  # whether it differentiates (False: it re-scores perturbed texts)
