"""Next-word prediction from a character- or subword-level model.

The model predicts units (characters or SentencePiece pieces); users want
words. A *word* is a run of word characters (letters, digits, marks) or one
punctuation character. The probability of a word w after a text is the
probability that the units generated next spell w and are then followed by
a word boundary: a unit that starts with whitespace or punctuation, a line
break, or the unit that spells w itself running on into punctuation. Every
unit sequence that spells the same word adds to that word's probability.

Where the continuation starts:
- the text ends inside a word ("The capi"): the next units complete that
  word, and the result is the completed word and the part still to type;
- otherwise (whitespace, punctuation or nothing at the end): the next whole
  word. After punctuation one whitespace character may come first
  ("Hello," -> " world"); after whitespace none more.

Subword models read the context up to the start of the unfinished part and
must then spell it (" capi" after "The"), as SentencePiece would have
tokenised the finished word ("token healing"); probabilities are
conditioned on that part: P(w | text) = P(" capi...w" + boundary) / P(" capi"...).

Candidates come from a beam search over units until each beam reaches a
boundary; the top candidates of a subword model are then scored exactly
(`score_word` enumerates every unit sequence that spells the word), so the
returned probabilities are exact and those of the k words sum to at most 1.
Units without text (the unknown unit, SentencePiece's byte pieces) never
form words.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from corpora import normalize, normalize_line
from lm.model import RNNLanguageModel
from lm.tokenizers import Tokenizer, is_word_char

__all__ = ["ContextState", "Predictor", "Query", "WordPrediction", "PredictionResult", "make_query", "word_at"]

_NEG = -math.inf
_LN2 = math.log(2.0)


def _logaddexp(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) for Python floats, as numpy's logaddexp computes it (about 4x faster than
    calling numpy on two scalars; exact scoring calls this thousands of times per prediction)."""
    if a == b:
        return a + _LN2  # also -inf + ln 2 = -inf
    if a < b:
        a, b = b, a
    if b == _NEG:
        return a
    return a + math.log1p(math.exp(b - a))


def _logsumexp(values: np.ndarray) -> float:
    """log(sum(exp(values))), stable; several times faster than np.logaddexp.reduce."""
    if values.size == 0:
        return _NEG
    top = float(values.max())
    if top == _NEG:
        return _NEG
    return top + math.log(float(np.exp(values - top).sum()))


# Phases of a continuation, as plain tuples for speed:
#   ("req", consumed)        still spelling the required part of the text (subword healing)
#   ("before", has_space)    no word character yet; has_space: whitespace already seen
#   ("word", word)           inside the word being predicted
#   ("done", word)           the word is complete (emitted, not expanded)
#   ("dead",)                not a continuation of this kind


def _advance(phase: tuple, text: str) -> tuple:
    """The phase after `text` is appended to a continuation in `phase` (not "req")."""
    for char in text:
        kind = phase[0]
        if kind == "before":
            if char.isspace():
                if phase[1]:
                    return ("dead",)
                phase = ("before", True)
            elif is_word_char(char):
                phase = ("word", char)
            else:
                return ("done", char)  # punctuation is a word of its own
        elif kind == "word":
            if is_word_char(char):
                phase = ("word", phase[1] + char)
            else:
                return ("done", phase[1])
    return phase


def word_at(text: str, position: int) -> str:
    """The word that starts at `position` of `text`: a run of word characters or one other character."""
    if position >= len(text):
        return ""
    if not is_word_char(text[position]):
        return text[position]
    end = position
    while end < len(text) and is_word_char(text[end]):
        end += 1
    return text[position:end]


@dataclass(frozen=True)
class Query:
    """A text turned into what the model reads and what the continuation must do."""

    text: str  # the normalised text
    context: str  # the part the model reads before predicting
    required: str  # text the continuation must spell first (subword healing), possibly ""
    start: tuple  # the phase after `required`
    completing: bool
    partial: str  # the unfinished word at the end of the text ("" when not completing)


def make_query(text: str, tokenizer: Tokenizer, normalized: bool = False) -> Query:
    """Normalise `text` exactly as in training and work out where the next word starts."""
    ends_in_space = bool(text) and text[-1].isspace()
    norm = text if normalized else normalize(text)
    if ends_in_space and norm and not norm[-1].isspace():
        norm += " "  # normalisation strips trailing spaces; the user typed one
    partial_start = len(norm)
    while partial_start > 0 and is_word_char(norm[partial_start - 1]):
        partial_start -= 1
    partial = norm[partial_start:]
    completing = bool(partial)
    cut = partial_start
    while cut > 0 and norm[cut - 1].isspace():
        cut -= 1
    if tokenizer.kind == "char":
        cut = len(norm)  # one unit per character: nothing to heal
    required = norm[cut:]
    if completing:
        start: tuple = ("word", partial)
    else:
        start = ("before", bool(required) and required[-1].isspace() or cut == 0 or norm[cut - 1].isspace())
    return Query(text=norm, context=norm[:cut], required=required, start=start, completing=completing, partial=partial)


@dataclass(frozen=True)
class ContextState:
    """The model after reading a context: its state and the logits of the next unit."""

    units: tuple[int, ...]  # the context's units (the leading line-break input excluded); may be () when `count` is set
    state: torch.Tensor  # (L, 1, S)
    logits: torch.Tensor  # (V,) float32, raw (temperature 1)
    line_start: bool
    count: int = -1  # number of context units when `units` is not kept

    @property
    def length(self) -> int:
        return self.count if self.count >= 0 else len(self.units)


@dataclass
class WordPrediction:
    """One predicted word with its probability and the unit sequences that spell it."""

    word: str
    logprob: float
    remainder: str  # what is still to type: the word minus the unfinished part of the text
    paths: list[tuple[tuple[int, ...], bool]] = field(default_factory=list)  # (units, needs boundary mass after them)

    @property
    def probability(self) -> float:
        return math.exp(self.logprob)

    def as_dict(self) -> dict:
        return {"word": self.word, "probability": self.probability, "logprob": self.logprob, "remainder": self.remainder}


@dataclass
class PredictionResult:
    """The top words after a text."""

    query: Query
    predictions: list[WordPrediction]
    context_units: int
    required_logprob: float  # log P(continuation spells query.required); 0 without healing
    required_paths: list[tuple[tuple[int, ...], bool]]  # the required part's spellings, as in WordPrediction.paths

    @property
    def completing(self) -> bool:
        return self.query.completing

    def as_dict(self) -> dict:
        return {
            "text": self.query.text,
            "completing": self.query.completing,
            "partial": self.query.partial,
            "predictions": [{**p.as_dict(), "completing": self.query.completing} for p in self.predictions],
        }


class _UnitTable:
    """Per-unit text facts, computed once per tokenizer, for both line-start cases."""

    def __init__(self, tokenizer: Tokenizer):
        size = tokenizer.vocab_size
        self.size = size
        self.texts = [[tokenizer.unit_text(u, line_start=ls) for u in range(size)] for ls in (False, True)]
        self.newline = tokenizer.newline_id
        mid = self.texts[0]
        # Inside a word: units that continue it, units that end it at their first character.
        self.continues = np.array([bool(t) and all(is_word_char(c) for c in t) for t in mid])
        self.continuing = np.nonzero(self.continues)[0]  # their ids
        self.ends = np.array([bool(t) and not is_word_char(t[0]) for t in mid])
        self.ends_mask = torch.from_numpy(self.ends.astype(np.float64))
        # Units that continue the word and then end it inside themselves ("ing,").
        self.runs_on = {u: _advance(("word", ""), t)[1] for u, t in enumerate(mid)
                        if t and is_word_char(t[0]) and not self.continues[u]}
        self.max_length = max((len(t) for texts in self.texts for t in texts if t), default=1)
        self.by_text: list[dict[str, list[int]]] = [{}, {}]
        self.by_prefix: list[dict[str, list[int]]] = [{}, {}]
        for ls in (0, 1):
            for unit, text in enumerate(self.texts[ls]):
                if text is None:
                    continue
                self.by_text[ls].setdefault(text, []).append(unit)
                for cut in range(0, len(text)):
                    self.by_prefix[ls].setdefault(text[:cut], []).append(unit)
        self._before: dict[tuple[bool, bool], "_PhaseTable"] = {}
        # Tables that depend on the text (the required part): a few recent ones are kept.
        self._required: OrderedDict[tuple, "_PhaseTable"] = OrderedDict()
        self._overshoot: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._overshoot_paths: OrderedDict[tuple, list] = OrderedDict()
        self._lock = threading.Lock()  # servers predict from several threads

    def before(self, has_space: bool, line_start: bool) -> "_PhaseTable":
        """What each unit does to a continuation that has no word character yet."""
        key = (has_space, line_start)
        if key not in self._before:
            texts = self.texts[int(line_start)]
            self._before[key] = _PhaseTable([("dead",) if t is None else _advance(("before", has_space), t) for t in texts])
        return self._before[key]

    def requirement(self, required: str, consumed: str, start: tuple, line_start: bool) -> "_PhaseTable":
        """What each unit does to a continuation that has spelled `consumed` of the `required` text so far."""
        rest = required[len(consumed):]

        def phase(text: str | None) -> tuple:
            if text is None or (text == "" and not line_start):
                return ("dead",)
            if rest.startswith(text):
                spelled = consumed + text
                return ("req", spelled) if len(spelled) < len(required) else start
            if text.startswith(rest):
                return _advance(start, text[len(rest):])
            return ("dead",)

        return self._memo(self._required, (required, consumed, start, line_start),
                          lambda: _PhaseTable([phase(text) for text in self.texts[int(line_start)]]))

    def overshoot(self, rest: str, boundary: bool, line_start: bool) -> np.ndarray:
        """Units that spell `rest` and go on past it (with a non-word character next, if `boundary`)."""
        ls = int(line_start)
        return self._memo(self._overshoot, (rest, boundary, line_start), lambda: np.array(
            [u for u in self.by_prefix[ls].get(rest, ()) if not boundary or not is_word_char(self.texts[ls][u][len(rest)])],
            dtype=np.int64))

    def overshoot_paths(self, rest: str, boundary: bool, line_start: bool) -> list[tuple[tuple[int], bool]]:
        """`overshoot` as one-unit paths ((unit,), False): a required space alone has thousands."""
        return self._memo(self._overshoot_paths, (rest, boundary, line_start),
                          lambda: [((int(unit),), False) for unit in self.overshoot(rest, boundary, line_start)])

    def _memo(self, tables: OrderedDict, key: tuple, build):
        """tables[key], built on first use; only the most recently used _TABLES_KEPT are kept."""
        with self._lock:
            if key in tables:
                tables.move_to_end(key)
                return tables[key]
        value = build()
        with self._lock:
            tables[key] = value
            while len(tables) > _TABLES_KEPT:
                tables.popitem(last=False)
        return value


_TABLES_KEPT = 256
# A cached context followed by at most this many new units is read with single cell steps (RNNLanguageModel.read_steps):
# with the input table, steps beat the fused layer's set-up up to about seven units on the default model.
_STEPWISE_READ = 6
# Exact scoring may drop partial spellings worth this fraction of a word's probability (see _spell_many).
SPELLING_TOLERANCE = 1e-6


class _PhaseTable:
    """Per-unit phases from one phase ("before" or "req"), as arrays for vectorised expansion."""

    def __init__(self, phases: list[tuple]):
        self.phases = phases
        kinds = [p[0] for p in phases]
        self.starts_word = np.array([k == "word" for k in kinds])  # units that begin the word
        self.spaces = np.nonzero([k in ("before", "req") for k in kinds])[0]  # units that add whitespace or required text
        self.words = sorted({p[1] for p in phases if p[0] == "done"})
        index = {word: i for i, word in enumerate(self.words)}
        self.done = np.nonzero([k == "done" for k in kinds])[0]  # units that complete a word by themselves
        self.done_word = np.array([index[phases[u][1]] for u in self.done], dtype=np.int64)


@dataclass
class _Hypothesis:
    logprob: float
    phase: tuple
    line_start: bool
    units: tuple[int, ...]  # read after the context


class _Read(NamedTuple):
    """What one read unit sequence left: row `row` of a batched step's outputs."""

    states: torch.Tensor  # (L, N, S)
    row: int
    boundary: float  # log P(the next unit begins with a boundary)
    logits: torch.Tensor  # (N, V) raw
    scaled: np.ndarray  # (N, V) float32, divided by the temperature
    normaliser: float  # log-normaliser of the row's scaled logits


class _Reads:
    """Unit sequences the model has read after one context: after each, the state, the raw logits, the
    log-normaliser of the (tempered) next-unit distribution and the boundary mass.

    The float64 log-probabilities of a row are made on first use: exact
    scoring reads many sequences only for their boundary mass and never
    looks at their distribution.
    """

    def __init__(self, context_units: tuple[int, ...] | None, state: torch.Tensor, logits: torch.Tensor, scaled: np.ndarray,
                 normaliser: np.ndarray, boundary: np.ndarray):
        self.context_units = context_units  # None when the context state does not keep its units
        self._after: dict[tuple[int, ...], _Read] = {}
        self._logprobs: dict[tuple[int, ...], np.ndarray] = {}
        self.add([()], state, logits[None], scaled, normaliser, boundary)

    def __contains__(self, units: tuple[int, ...]) -> bool:
        return units in self._after

    def add(self, sequences: list[tuple[int, ...]], states: torch.Tensor, logits: torch.Tensor, scaled: np.ndarray,
            normalisers: np.ndarray, boundaries: np.ndarray) -> None:
        """Row i of states (L, N, S), raw logits (N, V), tempered logits (N, V) float32, normalisers (N,) and
        boundaries (N,) follows sequences[i]."""
        masses, norms = boundaries.tolist(), normalisers.tolist()
        for row, units in enumerate(sequences):
            self._after[units] = _Read(states, row, masses[row], logits, scaled, norms[row])

    def state(self, units: tuple[int, ...]) -> torch.Tensor:
        read = self._after[units]
        return read.states[:, read.row]  # (L, S)

    def after(self, units: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The state (L, 1, S) and raw logits (V,) after `units`."""
        read = self._after[units]
        return read.states[:, read.row : read.row + 1], read.logits[read.row]

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
        return read.scaled[read.row][chosen].astype(np.float64) - read.normaliser


def _line_start_after(text: str | None, line_start: bool) -> bool:
    if text is None:
        return line_start
    if text == "":
        return False  # SentencePiece's dummy space at a line start
    return text.endswith("\n")


class Predictor:
    """Next-word predictions from one model; safe to share between threads."""

    def __init__(self, model: RNNLanguageModel, tokenizer: Tokenizer, cache_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.table = _UnitTable(tokenizer)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, ...], ContextState] = OrderedDict()
        # What the latest prediction read past its context (the beam's and exact scoring's unit sequences):
        # when the next text is that context plus one of them (the user typed a word the model had
        # weighed), its state is already known and the text needs no model step at all.
        self._lookahead: _Reads | None = None
        self._lock = threading.Lock()

    # Context -----------------------------------------------------------

    def context_state(self, units: tuple[int, ...], use_cache: bool = True) -> ContextState:
        """Read `units` from a zero state (after a line break); reuses the longest cached prefix."""
        start_units: tuple[int, ...] = ()
        state = None
        logits = None
        if use_cache:
            with self._lock:
                hit = self._cache.get(units)
                if hit is not None:
                    self._cache.move_to_end(units)
                    return hit
                ahead = self._ahead(units)
            if ahead is not None:
                return self._remember(units, self.context_from(units, *ahead))
            with self._lock:
                for cached_units in reversed(self._cache):
                    if len(cached_units) < len(units) and units[: len(cached_units)] == cached_units:
                        cached = self._cache[cached_units]
                        start_units, state, logits = cached_units, cached.state, cached.logits
                        break
        with torch.inference_mode():
            if state is None:
                inputs = [self.tokenizer.newline_id, *units]
                state = self.model.init_state(1)
            else:
                inputs = list(units[len(start_units):])
            if 0 < len(inputs) <= _STEPWISE_READ:
                state = self.model.read_steps(torch.tensor([inputs], dtype=torch.long), state)
                logits = self.model.output_from_state(state, "fast")[0].float()
            elif inputs:
                out, state = self.model(torch.tensor([inputs], dtype=torch.long), state, score_from=len(inputs) - 1)  # (1, 1, V)
                logits = out[0, -1].float()
        assert logits is not None
        result = self.context_from(units, state, logits)
        return self._remember(units, result) if use_cache else result

    def _ahead(self, units: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The state and logits after `units` if the latest prediction read them past its context (lock held)."""
        reads = self._lookahead
        if reads is None or reads.context_units is None:
            return None
        base = reads.context_units
        if len(units) <= len(base) or units[: len(base)] != base or units[len(base):] not in reads:
            return None
        return reads.after(units[len(base):])

    def _remember(self, units: tuple[int, ...], result: ContextState) -> ContextState:
        if self.cache_size:
            with self._lock:
                self._cache[units] = result
                self._cache.move_to_end(units)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result

    def context_from(self, units: tuple[int, ...], state: torch.Tensor, logits: torch.Tensor) -> ContextState:
        """The context state after `units` from a read done elsewhere: its final state (L, 1, S) and logits (V,)."""
        text = self.tokenizer.unit_text(units[-1]) if units else "\n"
        return ContextState(units, state, logits.float(), line_start=text == "\n")

    def predict_many(self, texts: list[str], k: int = 5, beam_width: int = 16, max_word_length: int = 24,
                     temperature: float = 1.0) -> list[PredictionResult]:
        """Predict after many texts: their contexts are read together in one padded batch."""
        queries = [make_query(text, self.tokenizer) for text in texts]
        rows = [[self.tokenizer.newline_id, *self.tokenizer.encode(q.context)] for q in queries]
        lengths = torch.tensor([len(row) for row in rows])
        padded = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
        for index, row in enumerate(rows):
            padded[index, : len(row)] = torch.tensor(row)
        with torch.inference_mode():
            # Score only each row's last position, from its final state.
            _, states = self.model(padded, lengths=lengths, score_from=padded.size(1))  # (L, N, S)
            last = self.model.output_from_state(states, "fast").float()  # (N, V)
        results = []
        for index, query in enumerate(queries):
            units = tuple(rows[index][1:])
            line_start = (self.tokenizer.unit_text(units[-1]) if units else "\n") == "\n"
            context = ContextState(units, states[:, index : index + 1].clone(), last[index], line_start)
            results.append(self.predict_from(context, query, k=k, beam_width=beam_width, max_word_length=max_word_length,
                                             temperature=temperature))
        return results

    def warm_up(self, rows: int = 64) -> None:
        """Pay now what the first requests would: the unit tables, and oneDNN's kernels for single steps of
        1..rows rows (a batch size's first product costs about a millisecond more; searches use many sizes)."""
        self.predict("The ", k=1, use_cache=False)
        with torch.inference_mode():
            for count in range(1, rows + 1):
                self.model.step(torch.zeros(count, dtype=torch.long), self.model.init_state(count))

    def clear_cache(self) -> None:
        """Forget cached contexts, the latest prediction's reads and remembered lines (normalised text,
        subword ids): the next prediction starts cold."""
        with self._lock:
            self._cache.clear()
            self._lookahead = None
        normalize_line.cache_clear()
        self.tokenizer.clear_cache()

    def _step(self, states: torch.Tensor, units: list[int], temperature: float, parents: list[int] | None = None) -> tuple:
        """Feed one unit to each of N states (L, N, S), or unit i to states[:, parents[i]]; returns new states
        (L, N, S), (N, V) raw logits, and what `_normalized` gives for them (the arguments of `_Reads.add`
        after the states)."""
        with torch.inference_mode():
            shared = None if parents is None else torch.tensor(parents, dtype=torch.long)
            logits, new_states = self.model.step(torch.tensor(units, dtype=torch.long), states, parents=shared)  # (N, V)
            return (new_states, logits, *self._normalized(logits, temperature))

    def _normalized(self, logits: torch.Tensor, temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, V) float32 logits -> the tempered logits (N, V) float32, log-normalisers (N,) float64 and
        log P(the next unit begins with a boundary) (N,) float64; log P(u) = logits[u] - normaliser.

        The exponentials run in float32 (each within an ulp, below the logits'
        own float32 rounding), the sums and the rest in float64. No (N, V)
        float64 array is made here (see `_Reads.logprobs`).
        """
        if temperature != 1.0:
            logits = logits / temperature
        top = logits.amax(dim=-1, keepdim=True)
        weights = (logits - top).exp_().double()
        total = weights.sum(dim=-1)
        normaliser = top[:, 0].double() + torch.log(total)
        boundaries = torch.log((weights @ self.table.ends_mask) / total)
        return logits.numpy(), normaliser.numpy(), boundaries.numpy()

    def _reads_after(self, context: ContextState, temperature: float) -> _Reads:
        """The reads after a context, holding only the context itself so far."""
        with torch.inference_mode():
            normalized = self._normalized(context.logits[None], temperature)
        units = context.units if context.count < 0 else None
        return _Reads(units, context.state, context.logits, *normalized)

    # Exact scoring --------------------------------------------------------

    def _spell_many(self, context: ContextState, targets: list[tuple[str, bool]], temperature: float,
                    max_nodes: int = 1024, tolerance: float = SPELLING_TOLERANCE, known: _Reads | None = None
                    ) -> list[tuple[float, list[tuple[tuple[int, ...], bool]]]]:
        """For each (target, boundary): log P(the next units spell target, then a boundary if asked).

        Sums over every unit sequence that spells the target. All targets
        advance together, one batched model step per unit. Also returns the
        unit sequences (each flagged when the boundary mass after it is part
        of its probability).

        Once a target has probability mass from finished spellings, its least
        probable partial spellings are dropped for as long as their summed
        probability stays within `tolerance` times that mass: what follows a
        partial spelling can add at most its own probability, so the result
        is within a factor (1 - tolerance) of the full sum, and the dropped
        spellings (on a subword model, one character at a time and other odd
        segmentations) no longer cost a model step per character. Beyond
        that, only the cap of `max_nodes` partial spellings alive at once
        (the least probable go) approximates.

        `known` holds unit sequences the model has already read after this
        context (the beam's): they, and a sequence shared by several targets,
        are read only once.
        """
        table = self.table
        totals = [_NEG] * len(targets)
        dropped = [_NEG] * len(targets)  # log of the probability of the partial spellings dropped so far
        log_tolerance = math.log(tolerance) if tolerance > 0 else _NEG
        paths: list[list[tuple[tuple[int, ...], bool]]] = [[] for _ in targets]
        known = known if known is not None else self._reads_after(context, temperature)
        # A node: (logprob, units, target index, consumed characters, line_start)
        frontier = []
        for index, (target, boundary) in enumerate(targets):
            if target:
                frontier.append((0.0, (), index, 0, context.line_start))
            elif boundary:  # already spelled: only the boundary is still to come
                totals[index] = known.boundary(())
                paths[index].append(((), True))
            else:
                totals[index] = 0.0
                paths[index].append(((), False))
        pending: list[tuple] = []  # nodes waiting for a model step
        while frontier or pending:
            children = []  # node fields + terminal flag
            for logprob, units, index, consumed, line_start in frontier:
                target, boundary = targets[index]
                rest = target[consumed:]
                lp = known.logprobs(units)
                ls = int(line_start)
                for length in range(0 if line_start else 1, min(len(rest), table.max_length) + 1):
                    for unit in table.by_text[ls].get(rest[:length], ()):
                        value = logprob + lp[unit]
                        if value == _NEG:
                            continue
                        if length < len(rest):
                            after = _line_start_after(table.texts[ls][unit], line_start)
                            children.append((value, units + (unit,), index, consumed + length, after, False))
                        elif boundary:
                            children.append((value, units + (unit,), index, consumed + length, False, True))
                        else:
                            totals[index] = _logaddexp(totals[index], value)
                            paths[index].append((units + (unit,), False))
                over = table.overshoot(rest, boundary, line_start)
                if over.size:
                    values = logprob + lp[over]
                    alive = values > _NEG
                    if alive.all() and not units:  # straight after the context: the same list every time
                        totals[index] = _logaddexp(totals[index], _logsumexp(values))
                        paths[index].extend(table.overshoot_paths(rest, boundary, line_start))
                    elif alive.any():
                        totals[index] = _logaddexp(totals[index], _logsumexp(values[alive]))
                        paths[index].extend((units + (int(unit),), False) for unit in over[alive])
            # Spellings already read to their end (by the beam) are finished now: their mass makes dropping safe sooner.
            for node in children:
                if node[5] and node[1] in known:
                    totals[node[2]] = _logaddexp(totals[node[2]], node[0] + known.boundary(node[1]))
                    paths[node[2]].append((node[1], True))
                else:
                    pending.append(node)
            if log_tolerance > _NEG and pending:
                kept = []
                for node in sorted(pending, key=lambda node: node[0]):  # the least probable first
                    index = node[2]
                    if totals[index] > _NEG:
                        mass = _logaddexp(dropped[index], node[0])
                        if mass <= totals[index] + log_tolerance:
                            dropped[index] = mass
                            continue
                    kept.append(node)
                pending = kept
            # Partial spellings the beam has read already are expanded at once, so that their children join
            # the same model step as the others at this depth rather than needing one more.
            frontier = [node[:5] for node in pending if node[1] in known]
            if frontier:
                pending = [node for node in pending if node[1] not in known]
                continue
            if not pending:
                break
            if len(pending) > max_nodes:
                pending.sort(key=lambda node: -node[0])
                pending = pending[:max_nodes]
            self._read_all(known, [node[1] for node in pending], temperature)
            for value, units, index, consumed, line_start, terminal in pending:
                if terminal:
                    mass = known.boundary(units)
                    totals[index] = _logaddexp(totals[index], value + mass)
                    paths[index].append((units, True))
                else:
                    frontier.append((value, units, index, consumed, line_start))
            pending = []
        return list(zip(totals, paths))

    def _read_all(self, known: _Reads, sequences: list[tuple[int, ...]], temperature: float) -> None:
        """Read every unit sequence not yet in `known` (each one unit past a known one), in one batched step."""
        missing = list(dict.fromkeys(units for units in sequences if units not in known))
        if not missing:
            return
        # Many sequences continue the same one (the beam's first step: all of them): each distinct state is
        # stacked once and the step's recurrent products run once per state (RNNLanguageModel.step's parents).
        slots: dict[tuple[int, ...], int] = {}
        parents = [slots.setdefault(units[:-1], len(slots)) for units in missing]
        states = torch.stack([known.state(units) for units in slots], dim=1)  # (L, distinct, S)
        known.add(missing, *self._step(states, [units[-1] for units in missing], temperature, parents))

    def _word_targets(self, query: Query, word: str) -> list[str]:
        """The continuations (after the context) that spell `word` under the query's rules."""
        if query.completing:
            if not word.startswith(query.partial):
                return []
            return [query.required + word[len(query.partial):]]
        _, has_space = query.start
        spaces = [""] if has_space else ["", " ", "\n"]
        return [query.required + space + word for space in spaces]

    def score_word(self, text: str, word: str, temperature: float = 1.0) -> float:
        """Exact log P(word | text): every unit sequence that spells it, followed by a boundary."""
        query = make_query(text, self.tokenizer)
        context = self.context_state(tuple(self.tokenizer.encode(query.context)))
        (logprob, _), = self._score_words(context, query, [word], temperature)[0]
        return logprob

    def _score_words(self, context: ContextState, query: Query, words: list[str], temperature: float,
                     known: _Reads | None = None) -> tuple[list[tuple[float, list]], float, list]:
        """Exact log P(word | text) for each word, with their unit sequences; and log P(required part), with its."""
        targets: list[tuple[str, bool]] = [(query.required, False)]
        owners: list[int] = [-1]
        for number, word in enumerate(words):
            if not word or (len(word) > 1 and not all(is_word_char(c) for c in word)):
                continue
            for target in self._word_targets(query, word):
                targets.append((target, is_word_char(word[0])))
                owners.append(number)
        results = self._spell_many(context, targets, temperature, known=known)
        required, required_found = results[0]
        scores: list[tuple[float, list]] = [(_NEG, []) for _ in words]
        for owner, (logprob, paths) in zip(owners[1:], results[1:]):
            total, found = scores[owner]
            scores[owner] = (_logaddexp(total, logprob), found + paths)
        exact = [(total - required if total > _NEG else _NEG, found) for total, found in scores]
        return exact, required, required_found

    # Beam search ------------------------------------------------------------

    def predict(self, text: str, k: int = 5, beam_width: int = 16, max_word_length: int = 24,
                temperature: float = 1.0, use_cache: bool = True) -> PredictionResult:
        """The k most probable next words (or completions of the unfinished word) after `text`."""
        query = make_query(text, self.tokenizer)
        context = self.context_state(tuple(self.tokenizer.encode(query.context)), use_cache=use_cache)
        return self.predict_from(context, query, k=k, beam_width=beam_width, max_word_length=max_word_length,
                                 temperature=temperature)

    def predict_from(self, context: ContextState, query: Query, k: int = 5, beam_width: int = 16,
                     max_word_length: int = 24, temperature: float = 1.0) -> PredictionResult:
        """Predict after an already-read context (see `context_state`)."""
        if k < 1 or beam_width < 1 or max_word_length < 1 or not temperature > 0:
            raise ValueError("k, beam_width and max_word_length must be at least 1 and temperature positive")
        table = self.table
        words: dict[str, float] = {}

        def emit(word: str, logprob: float) -> None:
            # The beam's sums only rank candidates; exact scoring below gives the figures and spellings.
            if logprob > _NEG:
                words[word] = _logaddexp(words.get(word, _NEG), logprob)

        start_phase = ("req", "") if query.required else query.start
        live = [_Hypothesis(0.0, start_phase, context.line_start, ())]
        known = self._reads_after(context, temperature)  # what the beam reads, exact scoring reuses
        for _ in range(max_word_length + len(query.required)):
            candidates: list[tuple] = []  # logprob, parent, unit, phase (None: the parent's word plus the unit), line_start
            # First the words every hypothesis completes, so that the k-th word's probability is known before
            # any continuation of a word is ranked: a child is no more probable than its parent, so a word
            # hypothesis at or below the k-th word has no child that could still overtake it.
            inside_words = []
            for parent, hypothesis in enumerate(live):
                if hypothesis.phase[0] == "word":
                    self._complete_word(hypothesis, known, emit)
                    inside_words.append(parent)
                else:
                    self._expand(hypothesis, parent, known.logprobs(hypothesis.units), query, candidates, emit, beam_width)
            kth = heapq.nlargest(k, words.values())[-1] if len(words) >= k else _NEG
            for parent in inside_words:
                if live[parent].logprob > kth:
                    self._continue_word(live[parent], parent, known, candidates, beam_width)
            if not candidates:
                break
            candidates.sort(key=lambda c: -c[0])
            candidates = candidates[:beam_width]
            if len(words) >= k:
                candidates = [c for c in candidates if c[0] > kth]  # cannot overtake the k-th word any more
                if not candidates:
                    break
            live = [_Hypothesis(c[0], c[3] if c[3] is not None else ("word", live[c[1]].phase[1] + table.texts[0][c[2]]), c[4],
                                live[c[1]].units + (c[2],)) for c in candidates]
            self._read_all(known, [hypothesis.units for hypothesis in live], temperature)

        # Other spellings (segmentations, a leading space) may have been
        # pruned from the beam: score the leaders exactly, all in one pass.
        leaders = [word for word, _ in sorted(words.items(), key=lambda item: -item[1])[: k + 3]]
        exact, required_logprob, required_paths = self._score_words(context, query, leaders, temperature, known)
        if self.cache_size:
            with self._lock:
                self._lookahead = known
        ranked = sorted(zip(leaders, exact), key=lambda item: -item[1][0])
        predictions = []
        for word, (logprob, paths) in ranked[:k]:
            if logprob == _NEG:
                continue
            remainder = word[len(query.partial):] if query.completing else word
            predictions.append(WordPrediction(word, logprob, remainder, paths))
        return PredictionResult(query, predictions, context.length, required_logprob, required_paths)

    def _complete_word(self, hypothesis: _Hypothesis, known: _Reads, emit) -> None:
        """Emit the words a hypothesis inside a word completes."""
        word, base = hypothesis.phase[1], hypothesis.logprob
        # Every unit that starts with a boundary ends the word: their total mass, exactly.
        emit(word, base + known.boundary(hypothesis.units))
        if self.table.runs_on:  # units that end the word with a run of its own (character models)
            lp = known.logprobs(hypothesis.units)
            for unit, run in self.table.runs_on.items():
                emit(word + run, base + lp[unit])

    def _continue_word(self, hypothesis: _Hypothesis, parent: int, known: _Reads, candidates: list, beam_width: int) -> None:
        """List the beam_width best continuations of a hypothesis inside a word (only those can survive the
        beam); their phase is made only for the candidates that survive (None here: see predict_from)."""
        continuing = self.table.continuing
        scores = known.some_logprobs(hypothesis.units, continuing)
        count = min(beam_width, len(scores))
        best = np.argpartition(-scores, count - 1)[:count] if 0 < count < len(scores) else range(count)
        base = hypothesis.logprob
        for index in best:
            value = base + scores[index]
            if value > _NEG:
                candidates.append((value, parent, int(continuing[index]), None, False))

    def _expand(self, hypothesis: _Hypothesis, parent: int, lp: np.ndarray, query: Query, candidates: list,
                emit, beam_width: int) -> None:
        """Emit the words a hypothesis between words completes and list its live children."""
        table = self.table
        phase = hypothesis.phase
        base = hypothesis.logprob
        texts = table.texts[int(hypothesis.line_start)]
        if phase[0] == "req":
            before = table.requirement(query.required, phase[1], query.start, hypothesis.line_start)
        else:
            before = table.before(phase[1], hypothesis.line_start)
        if before.done.size:  # punctuation words and units that hold a whole word and its boundary
            totals = np.full(len(before.words), _NEG)
            np.logaddexp.at(totals, before.done_word, base + lp[before.done])
            for index in np.nonzero(totals > _NEG)[0]:
                emit(before.words[index], float(totals[index]))
        # Units that keep the continuation going: every one that adds whitespace or required
        # text, and the beam_width best that begin the word (only those can survive the beam).
        scores = np.where(before.starts_word, lp, _NEG)
        top = np.argpartition(-scores, min(beam_width, len(scores) - 1))[:beam_width]
        for unit in np.concatenate([before.spaces, top[scores[top] > _NEG]]):
            if lp[unit] > _NEG:
                candidates.append((base + lp[unit], parent, int(unit), before.phases[unit],
                                   _line_start_after(texts[unit], hypothesis.line_start)))
