"""What the model has read after one context: the context's state, and every unit sequence read past it.

The beam search and exact scoring both walk unit sequences after the same
context; `Reads` keeps, for each sequence read so far, its state, its logits,
the log-normaliser of the next-unit distribution and the boundary mass, so
that no sequence is ever read twice. It reads what is missing through the
`step` it was given (the predictor's batched model step).

With a continuous cache over the request's text (lm/infer/textcache.py),
every row is mixed as it is added: its normaliser then also carries the
model's share of the mixture, the few units the cache votes for (`support`)
get their mixed log-probabilities in `overrides`, and its boundary mass is
the mixed one, so search and scoring read the mixed model without knowing of
the cache. Each read sequence also keeps its path memory (the
outputs along it and the units that followed them), which its children's
rows are mixed with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    from lm.infer.textcache import CachePath, Memory, TextCache

__all__ = ["ContextState", "Normalised", "Read", "Reads", "StepRows"]


@dataclass(frozen=True)
class ContextState:
    """The model after reading a context: its state and the logits of the next unit."""

    units: tuple[int, ...] | None  # the context's units (the leading line-break input excluded); None when not kept
    length: int  # the number of context units
    state: torch.Tensor  # (L, 1, S)
    logits: torch.Tensor  # (V,) float32, raw (temperature 1)
    line_start: bool  # whether the context ends at a line start (nothing, or a line break)
    memory: Memory | None = None  # the continuous cache's keys and values over the context; None when not kept

    @property
    def nbytes(self) -> int:
        """The bytes its tensors hold (state, logits, the memory's keys and values), as the prefix cache counts them."""
        tensors = [self.state, self.logits] + ([self.memory.keys, self.memory.values] if self.memory is not None else [])
        return sum(tensor.element_size() * tensor.nelement() for tensor in tensors)


class StepRows(NamedTuple):
    """One batched step's outputs for N read sequences (what `Reads.add` stores)."""

    states: torch.Tensor  # (L, N, S)
    logits: torch.Tensor  # (N, V) raw
    scaled: np.ndarray  # (N, V) float32, divided by the temperature
    normalisers: np.ndarray  # (N,) float64: log P(u) = scaled[u] - normaliser, for u outside `support`
    boundaries: np.ndarray  # (N,) float64: log P(the next unit begins with a boundary)
    support: np.ndarray | None = None  # (S,) units whose log P is in `overrides` (a continuous cache's votes)
    overrides: np.ndarray | None = None  # (N, S) float64: log P(support[j]) of row i
    # (V,) int64: unit u's place j in `support` (support[j] == u); -1, or a place >= S, when u is not in it. Shared
    # with later rows of the same cache, whose supports extend this one (TextCache keeps it append-only).
    columns: np.ndarray | None = None


class Normalised(NamedTuple):
    """Rows of scores (M, V) (tempered logits) normalised: log P(u) = score[u] - normalisers, differentiable with
    respect to the scores. The one normalisation of the served rows (`Predictor._normalized`), the word paths that
    attribution differentiates (lm/infer/word_gradients.py) and the differentiable mixture with the text cache
    (`textcache.mix_distributions`).

    `of` runs the exponentials in the scores' precision (each within an ulp,
    below the scores' own rounding) and the sums in float64, so no (M, V)
    float64 array is made: word paths of a few hundred rows over thousands of
    units spent more converting and normalising whole rows in float64 than on
    their model steps (occlusion at 20 words). The row maximum is a constant
    for autograd: its gradient through the normaliser is exactly zero."""

    weights: torch.Tensor  # (M, V): exp(score - the row's maximum), at most 1, in the scores' precision
    log_totals: torch.Tensor  # (M,) float64: the log of each row's sum of weights
    normalisers: torch.Tensor  # (M,) float64: the row's maximum plus log_totals

    @staticmethod
    def of(scores: torch.Tensor) -> "Normalised":
        top = scores.detach().amax(dim=-1)  # (M,)
        weights = torch.exp(scores - top[:, None])
        log_totals = torch.log(weights.sum(dim=-1, dtype=torch.float64))
        return Normalised(weights, log_totals, top.double() + log_totals)

    def boundaries(self, ends_mask: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """log P(the next unit begins with a boundary) (R,) float64 for the chosen rows; ends_mask (V,) float64 marks
        those units (a product: gathering the masked columns costs several times more)."""
        return torch.log(self.weights[rows].double() @ ends_mask) - self.log_totals[rows]


class ToRead(NamedTuple):
    """What one batched step must read for a Reads (`Reads._to_read`)."""

    missing: list[tuple[int, ...]]  # the sequences not read yet, each once
    states: torch.Tensor | None  # (L, M, S): their distinct parents' states (None when nothing is missing)
    parents: list[int]  # each missing sequence's parent among those M states


# Reads a batch of units: (states (L, M, S), units (N,), parents (N,) into the M states) -> their rows.
Stepper = Callable[[torch.Tensor, list[int], list[int]], StepRows]


class Read(NamedTuple):
    """What one read unit sequence left: row `row` of a batched step's outputs."""

    states: torch.Tensor  # (L, N, S)
    row: int
    boundary: float  # log P(the next unit begins with a boundary)
    logits: torch.Tensor  # (N, V) raw
    scaled: np.ndarray  # (N, V) float32, divided by the temperature
    normaliser: float  # log P(u) = scaled[row, u] - normaliser, for u outside `support`
    support: np.ndarray | None  # (S,) units whose log P is overrides[row] (None: no such unit)
    overrides: np.ndarray | None  # (N, S) float64
    columns: np.ndarray | None  # (V,) each unit's place in `support` (see StepRows.columns)


class Reads:
    """Unit sequences the model has read after one context: after each, the state, the raw logits, the
    log-normaliser of the (tempered) next-unit distribution and the boundary mass.

    The float64 log-probabilities of a row are made on first use: exact
    scoring reads many sequences only for their boundary mass and never
    looks at their distribution.
    """

    def __init__(self, context: ContextState, first: StepRows, step: Stepper, text_cache: TextCache | None = None,
                 step_key: object = None):
        """`first`: the context's own row (its state (L, 1, S) and logits); `step` reads the sequences missing later;
        `text_cache`: the continuous cache over the text every row is mixed with (None: the model alone);
        `step_key`: equal for Reads whose steps are the same function (`read_together`), None when unknown."""
        self.context_units = context.units  # None when the context state does not keep its units
        self.text_cache = text_cache
        self.step_key = step_key
        self._step = step
        self._after: dict[tuple[int, ...], Read] = {}
        self._logprobs: dict[tuple[int, ...], np.ndarray] = {}
        self._paths: dict[tuple[int, ...], CachePath] = {}
        if text_cache is not None:
            self._paths[()] = text_cache.root
            first = text_cache.mix(first, [text_cache.root])
        self.add([()], first)

    def __contains__(self, units: tuple[int, ...]) -> bool:
        return units in self._after

    def add(self, sequences: list[tuple[int, ...]], rows: StepRows) -> None:
        """Row i of `rows` follows sequences[i]."""
        masses, norms = rows.boundaries.tolist(), rows.normalisers.tolist()
        states, logits, scaled, support, overrides = rows.states, rows.logits, rows.scaled, rows.support, rows.overrides
        for row, units in enumerate(sequences):
            self._after[units] = Read(states, row, masses[row], logits, scaled, norms[row], support, overrides, rows.columns)

    def read_all(self, sequences: list[tuple[int, ...]]) -> None:
        """Read every unit sequence not yet read (each one unit past a read one), in one batched step."""
        pending = self._to_read(sequences)
        if pending.missing:
            self._store(pending, self._step(pending.states, [units[-1] for units in pending.missing], pending.parents))

    @staticmethod
    def read_together(reads: list["Reads"], sequences: list[list[tuple[int, ...]]]) -> None:
        """reads[i].read_all(sequences[i]) for every i, in one batched step for all of them.

        It assumes the Reads step alike: made with the same `step_key` (the predictor's model at one temperature,
        `Predictor.reads_after`), so that one call of the first one's `step` on every parent state side by side
        gives each row what its own Reads' step would. Each Reads then mixes its rows with its own text cache.
        Reads without a `step_key`, or with one of their own, are read alone."""
        alike = [index for index, known in enumerate(reads)
                 if known.step_key is not None and known.step_key == reads[0].step_key]
        if len(alike) < 2:
            alike = []
        for index, known in enumerate(reads):
            if index not in alike:
                known.read_all(sequences[index])
        if not alike:
            return
        plans = [(reads[index], reads[index]._to_read(sequences[index])) for index in alike]
        plans = [(known, pending) for known, pending in plans if pending.missing]  # those with something to read
        if not plans:
            return
        offsets, units, parents, start = [], [], [], 0
        for _, pending in plans:
            offsets.append(len(units))
            units.extend(sequence[-1] for sequence in pending.missing)
            parents.extend(start + parent for parent in pending.parents)
            start += pending.states.size(1)
        rows = plans[0][0]._step(torch.cat([pending.states for _, pending in plans], dim=1), units, parents)
        for (known, pending), offset in zip(plans, offsets):
            part = slice(offset, offset + len(pending.missing))
            own = StepRows(rows.states[:, part], rows.logits[part], rows.scaled[part], rows.normalisers[part],
                           rows.boundaries[part])
            known._store(pending, own)

    def _to_read(self, sequences: list[tuple[int, ...]]) -> ToRead:
        """The sequences not read yet (each once), their distinct parents' states stacked (L, M, S), and each one's
        parent among them."""
        missing = list(dict.fromkeys(units for units in sequences if units not in self._after))
        if not missing:
            return ToRead(missing, None, [])
        # Many sequences continue the same one (the beam's first step: all of them): each distinct state is
        # stacked once and the step's recurrent products run once per state (StepEngine.step's parents).
        slots: dict[tuple[int, ...], int] = {}
        parents = [slots.setdefault(units[:-1], len(slots)) for units in missing]
        return ToRead(missing, torch.stack([self.state(units) for units in slots], dim=1), parents)

    def _store(self, pending: ToRead, rows: StepRows) -> None:
        """Keep the rows read for `pending.missing` from its parent states, mixed with the text cache when there is one."""
        missing, states, parents = pending.missing, pending.states, pending.parents
        if self.text_cache is not None:  # each new sequence's path: its parent's, and the parent's output followed by its unit
            keys = states[-1, parents, : self.text_cache.hidden_dim].numpy()  # (N, H)
            paths = self.text_cache.extend([self._paths[units[:-1]] for units in missing], keys, [units[-1] for units in missing])
            self._paths.update(zip(missing, paths))
            rows = self.text_cache.mix(rows, paths)
        self.add(missing, rows)

    def state(self, units: tuple[int, ...]) -> torch.Tensor:
        """The state (L, S) after `units`."""
        read = self._after[units]
        return read.states[:, read.row]  # (L, S)

    def after(self, units: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The state (L, 1, S) and raw logits (V,) after `units`."""
        read = self._after[units]
        return read.states[:, read.row : read.row + 1], read.logits[read.row]

    def memory_after(self, units: tuple[int, ...]) -> Memory | None:
        """The text cache's memory of the context followed by `units` (None when this read kept no paths)."""
        path = self._paths.get(units)
        if path is None or self.text_cache is None:
            return None
        return self.text_cache.memory_after(path)

    def logprobs(self, units: tuple[int, ...]) -> np.ndarray:
        """(V,) float64 log-probabilities of the next unit after `units`, kept once made."""
        row = self._logprobs.get(units)
        if row is None:
            row = self._logprobs[units] = self.some_logprobs(units, slice(None))
        return row

    def boundary(self, units: tuple[int, ...]) -> float:
        """log P(the next unit begins with a boundary) after `units`."""
        return self._after[units].boundary

    def some_logprobs(self, units: tuple[int, ...], chosen: np.ndarray | slice) -> np.ndarray:
        """logprobs(units)[chosen], without keeping (or, for a few units, making) the (V,) row."""
        row = self._logprobs.get(units)
        if row is not None:
            return row[chosen]
        read = self._after[units]
        row = read.scaled[read.row][chosen].astype(np.float64) - read.normaliser
        if read.support is not None:  # the units a continuous cache votes for: their mixed log-probabilities
            mixed = read.overrides[read.row]
            if isinstance(chosen, slice) and chosen == slice(None):
                row[read.support] = mixed
                return row
            if isinstance(chosen, slice):
                chosen = np.arange(read.scaled.shape[1])[chosen]
            places = read.columns[chosen]
            voted = (places >= 0) & (places < len(read.support))
            row[voted] = mixed[places[voted]]
        return row

