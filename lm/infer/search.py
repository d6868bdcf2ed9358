"""The beam search over units that finds candidate next words.

Hypotheses are unit sequences after the context, each with its phase
(`lm/infer/query.py`). At each depth every hypothesis first emits the words
it completes; then the beam keeps the `beam_width` most probable children.
The sums found here only rank words: exact scoring (`lm/infer/scoring.py`)
gives the reported probabilities.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from operator import attrgetter
from typing import Callable, NamedTuple

import numpy as np

from lm.infer.query import Query, line_start_after
from lm.infer.reads import Reads
from lm.infer.scoring import NEG, logaddexp
from lm.infer.units import UnitTable

__all__ = ["Candidate", "Hypothesis", "beam_search"]


@dataclass
class Hypothesis:
    """A unit sequence after the context that the beam keeps."""

    logprob: float
    phase: tuple
    line_start: bool
    units: tuple[int, ...]  # read after the context


class Candidate(NamedTuple):
    """A child the beam may keep: `parent`'s units plus `unit`."""

    logprob: float
    parent: int  # index of the parent hypothesis
    unit: int
    phase: tuple | None  # None: the parent's word plus the unit's text (made only for survivors)
    line_start: bool


# Candidates are many (up to beam_width per hypothesis per depth): built with tuple.__new__, which skips the
# generated __new__'s argument handling (about 3x cheaper) and gives the same Candidate.
_new = tuple.__new__
_by_logprob = attrgetter("logprob")  # a sort key for candidates


def beam_search(table: UnitTable, known: Reads, line_start: bool, query: Query, k: int, beam_width: int,
                max_word_length: int) -> dict[str, float]:
    """Candidate words after the context that `known` starts from, with their beam log-probabilities (a lower bound
    on the exact ones, for ranking); the sequences the beam reads stay in `known` for exact scoring."""
    words: dict[str, float] = {}

    def emit(word: str, logprob: float) -> None:
        if logprob > NEG:
            words[word] = logaddexp(words.get(word, NEG), logprob)

    start_phase = ("req", "") if query.required else query.start
    live = [Hypothesis(0.0, start_phase, line_start, ())]
    for _ in range(max_word_length + len(query.required)):
        candidates: list[Candidate] = []
        # First the words every hypothesis completes, so that the k-th word's probability is known before
        # any continuation of a word is ranked: a child is no more probable than its parent, so a word
        # hypothesis at or below the k-th word has no child that could still overtake it.
        inside_words = []
        for parent, hypothesis in enumerate(live):
            if hypothesis.phase[0] == "word":
                _complete_word(table, hypothesis, known, emit)
                inside_words.append(parent)
            else:
                _expand(table, hypothesis, parent, known.logprobs(hypothesis.units), query, candidates, emit, beam_width)
        kth = heapq.nlargest(k, words.values())[-1] if len(words) >= k else NEG
        for parent in inside_words:
            if live[parent].logprob > kth:
                _continue_word(table, live[parent], parent, known, candidates, beam_width)
        if not candidates:
            break
        candidates.sort(key=_by_logprob, reverse=True)
        candidates = candidates[:beam_width]
        if len(words) >= k:
            candidates = [c for c in candidates if c.logprob > kth]  # cannot overtake the k-th word any more
            if not candidates:
                break
        live = [Hypothesis(c.logprob, c.phase if c.phase is not None else ("word", live[c.parent].phase[1] + table.texts[0][c.unit]),
                           c.line_start, live[c.parent].units + (c.unit,)) for c in candidates]
        known.read_all([hypothesis.units for hypothesis in live])
    return words


def _complete_word(table: UnitTable, hypothesis: Hypothesis, known: Reads, emit: Callable[[str, float], None]) -> None:
    """Emit the words a hypothesis inside a word completes."""
    word, base = hypothesis.phase[1], hypothesis.logprob
    # Every unit that starts with a boundary ends the word: their total mass, exactly.
    emit(word, base + known.boundary(hypothesis.units))
    if table.runs_on:  # units that end the word with a run of its own (character models)
        lp = known.logprobs(hypothesis.units)
        for unit, run in table.runs_on.items():
            emit(word + run, base + lp[unit])


def _continue_word(table: UnitTable, hypothesis: Hypothesis, parent: int, known: Reads, candidates: list[Candidate],
                   beam_width: int) -> None:
    """List the beam_width best continuations of a hypothesis inside a word (only those can survive the
    beam); their phase is made only for the candidates that survive (None here)."""
    continuing = table.continuing
    scores = known.some_logprobs(hypothesis.units, continuing)
    count = min(beam_width, len(scores))
    best = np.argpartition(-scores, count - 1)[:count] if 0 < count < len(scores) else range(count)
    base = hypothesis.logprob
    for index in best:
        value = base + scores[index]
        if value > NEG:
            candidates.append(_new(Candidate, (value, parent, int(continuing[index]), None, False)))


def _expand(table: UnitTable, hypothesis: Hypothesis, parent: int, lp: np.ndarray, query: Query,
            candidates: list[Candidate], emit: Callable[[str, float], None], beam_width: int) -> None:
    """Emit the words a hypothesis between words completes and list its live children."""
    phase = hypothesis.phase
    base = hypothesis.logprob
    texts = table.texts[int(hypothesis.line_start)]
    if phase[0] == "req":
        before = table.requirement(query.required, phase[1], query.start, hypothesis.line_start)
    else:
        before = table.before(phase[1], hypothesis.line_start)
    if before.done.size:  # punctuation words and units that hold a whole word and its boundary
        totals = np.full(len(before.words), NEG)
        np.logaddexp.at(totals, before.done_word, base + lp[before.done])
        for index in np.nonzero(totals > NEG)[0]:
            emit(before.words[index], float(totals[index]))
    # Units that keep the continuation going: every one that adds whitespace or required
    # text, and the beam_width best that begin the word (only those can survive the beam).
    scores = np.where(before.starts_word, lp, NEG)
    top = np.argpartition(-scores, min(beam_width, len(scores) - 1))[:beam_width]
    for unit in np.concatenate([before.spaces, top[scores[top] > NEG]]):
        if lp[unit] > NEG:
            candidates.append(_new(Candidate, (base + lp[unit], parent, int(unit), before.phases[unit],
                                               line_start_after(texts[unit], hypothesis.line_start))))
