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
boundary (`lm/infer/search.py`); the top candidates are then scored exactly
(`lm/infer/scoring.py` enumerates every unit sequence that spells the word),
so the returned probabilities are exact and those of the k words sum to at
most 1. Units without text (the unknown unit, SentencePiece's byte pieces)
never form words.

With a continuous cache (`text_cache`, tuned at the end of training and
stored with the checkpoint), every unit distribution the search and exact
scoring read is the mixture of the model and a cache over the request's own
text (lm/infer/textcache.py); the probabilities stay exact under that mixed
model.

The `Predictor` here owns what lasts between requests (the model's step
engine, the unit tables, the prefix cache and the latest prediction's reads)
and hands each prediction's work to the query, search and scoring modules.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from corpora import normalize_line
from lm.cells.base import BlockRows
from lm.infer.context_grad import ContextTrace, ReadsTrace, backward_context, backward_reads, trace_context, trace_embeddings
from lm.infer.engine import StepEngine
from lm.infer.query import Cut, Query, keep_last_units, make_query
from lm.infer.reads import ContextState, Normalised, Reads, StepRows
from lm.infer.scoring import NEG, Path, score_words
from lm.infer.search import beam_search
from lm.infer.textcache import Memory, TextCache, read_memory
from lm.infer.units import UnitTable
from lm.config import TextCacheConfig
from lm.model import RNNLanguageModel
from lm.tokenizers import Tokenizer

__all__ = ["DEFAULT_PREFIX_CACHE_BYTES", "PredictionResult", "Predictor", "PrefixCacheStats", "WordPrediction"]

# A cached context followed by at most this many new units is read with single cell steps (StepEngine.read_steps):
# with the input table, steps beat the fused layer's set-up up to about seven units on the default model.
STEPWISE_READ = 6
# The prefix cache's default bound in bytes (Predictor's prefix_cache_bytes; the server's REACH_CACHE_MB).
DEFAULT_PREFIX_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class PrefixCacheStats:
    """The prefix cache's lookups since the predictor was made, and what it holds now (a server's metrics read it).

    A hit found the whole context (cached, or read ahead by the latest prediction); a miss read some units, from a
    cached prefix (`prefix_reuses`, counted among the misses) or from the start."""

    hits: int
    misses: int
    prefix_reuses: int
    contexts: int
    bytes_used: int


@dataclass
class WordPrediction:
    """One predicted word with its probability and the unit sequences that spell it."""

    word: str
    logprob: float
    remainder: str  # what is still to type: the word minus the unfinished part of the text
    paths: list[Path] = field(default_factory=list)  # (units, needs boundary mass after them)
    # log P of each path after the context, as paths (the healed part not divided out); None: not known
    path_logprobs: list[float] | None = None

    @property
    def probability(self) -> float:
        return math.exp(self.logprob)


@dataclass
class PredictionResult:
    """The top words after a text."""

    query: Query
    predictions: list[WordPrediction]
    context_units: int
    required_logprob: float  # log P(continuation spells query.required); 0 without healing
    required_paths: list[Path]  # the required part's spellings, as in WordPrediction.paths
    text_cache: bool = False  # whether the continuous cache over the text was mixed in
    # What the prediction read after the context (every row mixed as served): scoring more words after the same
    # text (`Predictor.score_more`) and explaining the mixture reuse it. Not part of the answer.
    reads: Reads | None = field(default=None, repr=False, compare=False)
    line_start: bool = False  # whether the context ends at a line start
    # The whole text and what an input limit left unread of it; query is the read part's (the whole text, or a
    # suffix: cut.text[cut.chars:] == query.text). None on construction: nothing was cut.
    cut: Cut | None = None
    required_path_logprobs: list[float] | None = None  # log P of each of required_paths; None: not known

    def __post_init__(self):
        if self.cut is None:
            self.cut = Cut(self.query.text)

    @property
    def completing(self) -> bool:
        return self.query.completing

    def context_summary(self) -> dict:
        """What was read: units, words and characters of the context, and what an input limit left unread."""
        context = self.query.context
        return {"tokens": self.context_units, "words": len(context.split()), "chars": len(context),
                "truncated": self.cut.truncated, "dropped_chars": self.cut.chars, "dropped_units": self.cut.units}


class Predictor:
    """Next-word predictions from one model; safe to share between threads.

    Three things here are called a cache, and are named in full: the *prefix
    cache* (read contexts kept between requests, least recently used first
    out), the *text cache* (the continuous cache over a request's own text,
    whose settings are `text_cache_settings`; the `text_cache` arguments
    switch it on or off per call) and, in training only, the token cache.

    What attribution, generation, accuracy and the lab need from the model's
    steps goes through the methods of "Reading for others" (`zero_state`,
    `read`, `read_states`, `step`, `trace`, `differentiable_step`,
    `differentiable_cells`, `output_from_state`, `backward`); `step_engine`
    is the engine itself, for benchmarks that time its parts.
    """

    def __init__(self, model: RNNLanguageModel, tokenizer: Tokenizer, prefix_cache_size: int = 64,
                 text_cache_settings: TextCacheConfig | None = None, prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES):
        """`prefix_cache_size`: contexts the prefix cache keeps; `prefix_cache_bytes`: the most bytes their states,
        logits and text-cache memories may hold together (the latest context is kept whatever its size);
        `text_cache_settings`: the continuous cache's settings (None: none)."""
        self.model = model.eval()
        self.text_cache_settings = text_cache_settings
        self.tokenizer = tokenizer
        self._engine = StepEngine(self.model)  # single steps on the CPU, for the searches and attribution
        self.units = UnitTable(tokenizer)  # the tokenizer's per-unit facts, shared by search, scoring and attribution
        self.prefix_cache_size = prefix_cache_size
        self.prefix_cache_bytes = prefix_cache_bytes
        self._prefix_cache_bytes_used = 0  # what the prefix cache's contexts hold now (ContextState.nbytes summed)
        # With a text cache each context keeps its memory (the last `window` top-layer outputs and units) beside its
        # state: a context extended from a cached prefix or from the lookahead gets its memory exactly as a fresh
        # read would, so reuse stays correct with the text cache on or off.
        self._prefix_cache: OrderedDict[tuple[int, ...], ContextState] = OrderedDict()
        self._prefix_cache_lookups = {"hits": 0, "misses": 0, "prefix_reuses": 0}  # for prefix_cache_stats
        # What the latest prediction read past its context (the beam's and exact scoring's unit sequences):
        # when the next text is that context plus one of them (the user typed a word the model had
        # weighed), its state is already known and the text needs no model step at all.
        self._lookahead: Reads | None = None
        self._lock = threading.Lock()

    def uses_text_cache(self, asked: bool | None = None) -> bool:
        """Whether a prediction mixes in the text cache: when asked (True) and the predictor has settings; by default
        (None) only when its settings are length-aware (tuned for prompts of every length, `TextCacheConfig.size_weights`):
        settings tuned on one long stream alone copy a short prompt back, so they serve only when asked for."""
        if self.text_cache_settings is None or asked is False:
            return False
        return asked is True or self.text_cache_settings.length_aware

    # Reading for others: attribution, generation, accuracy, the lab --------------

    @property
    def step_engine(self) -> StepEngine:
        """The model's CPU step engine, for benchmarks that time its parts (bench/); library code uses the methods
        below, which say what it reads."""
        return self._engine

    def zero_state(self, rows: int = 1) -> torch.Tensor:
        """The zero state (L, rows, S) every text is read from."""
        return self.model.init_state(rows)

    def read(self, inputs: list[int], state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read `inputs` after `state` (L, 1, S) with the model's fused layers, without autograd: the new state and the
        logits (V,) float32 after the last input."""
        with torch.inference_mode():
            out, state = self.model(torch.tensor([inputs], dtype=torch.long), state, score_from=len(inputs) - 1)  # (1, 1, V)
        return state, out[0, -1].float()

    def read_states(self, inputs: list[int], state: torch.Tensor) -> torch.Tensor:
        """Every state along reading `inputs` after `state` (L, 1, S), without autograd: (T, L, 1, S), one cell step at
        a time (a state kept for every unit of a fixed text, such as occlusion's filler)."""
        return self._engine.read_states(torch.tensor([inputs], dtype=torch.long), state)

    def step(self, units: torch.Tensor, state: torch.Tensor, parents: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batched step without autograd: unit i (N,) read after states[:, parents[i]] (after state row i when
        `parents` is None); the logits (N, V) and the new states (L, N, S)."""
        return self._engine.step(units, state, parents=parents)

    def trace(self, units: tuple[int, ...]) -> ContextTrace:
        """Read `units` from the zero state (after a line break) once, keeping every layer's inputs and outputs for
        `backward` (the one read attribution's prediction and gradients share; lm/infer/context_grad.py)."""
        return trace_context(self.model, torch.tensor([self.tokenizer.newline_id, *units], dtype=torch.long))

    def differentiable_step(self, units: torch.Tensor, state: torch.Tensor, parents: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """`step` with gradients flowing to `state` (not to the parameters): the logits (N, V) and new states."""
        return self._engine.differentiable_step(units, state, parents=parents)

    def differentiable_cells(self, units: torch.Tensor, state: torch.Tensor, parents: torch.Tensor | None = None
                             ) -> torch.Tensor:
        """`differentiable_step`'s new states (L, N, S) alone: no output layer."""
        return self._engine.differentiable_cells(units, state, parents=parents)

    def output_from_state(self, state: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        """The logits (N, V) after states (L, N, S): the output layer on the top layer's h; `differentiable` keeps
        the gradient to `state`."""
        return self._engine.output_from_state(state, differentiable=differentiable)

    def backward(self, trace: ContextTrace, seeds: torch.Tensor, on_top: torch.Tensor | BlockRows | None = None
                 ) -> torch.Tensor:
        """Gradients (k, T, E) on a traced read's input embeddings from seeds (L, k, S) on its final state and, when
        given, gradients (T, k, H) on its top layer's outputs, or a BlockRows of them as (T, 1, k, H)
        (`context_grad.backward_context`)."""
        return backward_context(self._engine, trace, seeds, on_top)

    def trace_embeddings(self, embeds: torch.Tensor) -> ReadsTrace:
        """Read B sequences of input embeddings (B, T, E) from the zero state as one batch, keeping every layer's
        inputs and outputs for `backward_reads` (integrated gradients' scaled texts; lm/infer/context_grad.py)."""
        return trace_embeddings(self.model, embeds)

    def backward_reads(self, trace: ReadsTrace, seeds: torch.Tensor, on_top: torch.Tensor | BlockRows | None = None,
                       sum_reads: bool = False) -> torch.Tensor:
        """Gradients (B, k, T, E) on B traced reads' input embeddings from seeds (L, B, k, S) on their final states
        and, when given, gradients (T, B, k, H) on their top layer's outputs (or a BlockRows), all B x k side by
        side; with `sum_reads` their sum over the reads (1, k, T, E) (`context_grad.backward_reads`)."""
        return backward_reads(self._engine, trace, seeds, on_top, sum_reads)

    # Context -----------------------------------------------------------

    @property
    def prefix_cache_contexts(self) -> int:
        """How many contexts the prefix cache holds now."""
        with self._lock:
            return len(self._prefix_cache)

    @property
    def prefix_cache_bytes_used(self) -> int:
        """The bytes the prefix cache's contexts hold now (states, logits, text-cache memories)."""
        with self._lock:
            return self._prefix_cache_bytes_used

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        """The prefix cache's hits and misses so far, and its contexts and bytes now."""
        with self._lock:
            return PrefixCacheStats(contexts=len(self._prefix_cache), bytes_used=self._prefix_cache_bytes_used,
                                    **self._prefix_cache_lookups)

    def context_state(self, units: tuple[int, ...], use_prefix_cache: bool = True) -> ContextState:
        """Read `units` from a zero state (after a line break); reuses the longest prefix in the prefix cache."""
        start_units: tuple[int, ...] = ()
        state = None
        logits = None
        memory = None
        if use_prefix_cache:
            with self._lock:
                hit = self._prefix_cache.get(units)
                if hit is not None:
                    self._prefix_cache.move_to_end(units)
                    self._prefix_cache_lookups["hits"] += 1
                    return hit
                ahead = self._ahead(units)
                self._prefix_cache_lookups["hits" if ahead is not None else "misses"] += 1
            if ahead is not None:
                return self._remember(units, self.context_from(units, *ahead))
            with self._lock:
                for cached_units in reversed(self._prefix_cache):
                    if len(cached_units) < len(units) and units[: len(cached_units)] == cached_units:
                        cached = self._prefix_cache[cached_units]
                        start_units, state, logits, memory = cached_units, cached.state, cached.logits, cached.memory
                        self._prefix_cache_lookups["prefix_reuses"] += 1
                        break
        with torch.inference_mode():
            if state is None:
                inputs = [self.tokenizer.newline_id, *units]
                state = self.zero_state()
            else:
                inputs = list(units[len(start_units):])
            if self.text_cache_settings is not None:
                if inputs:
                    state, logits, memory = self.read_remembering(inputs, state, memory)
            elif 0 < len(inputs) <= STEPWISE_READ:
                state = self._engine.read_steps(torch.tensor([inputs], dtype=torch.long), state)
                logits = self._engine.output_from_state(state)[0].float()
            elif inputs:
                state, logits = self.read(inputs, state)
        assert logits is not None
        result = self.context_from(units, state, logits, memory)
        return self._remember(units, result) if use_prefix_cache else result

    def read_remembering(self, inputs: list[int], state: torch.Tensor, memory: Memory | None
                         ) -> tuple[torch.Tensor, torch.Tensor, Memory]:
        """Read `inputs` after `state` (L, 1, S) keeping the text cache's memory: the new state, the logits (V,)
        and `memory` extended by the inputs (memory None: `state` is the zero state and inputs[0] a line break)."""
        assert self.text_cache_settings is not None
        hidden = self.model.config.hidden_dim
        previous = state[-1, 0, :hidden]
        with torch.inference_mode():
            if len(inputs) <= STEPWISE_READ:  # single steps, each leaving its top-layer output in the state
                outputs = []
                for unit in inputs:
                    state = self._engine.read_steps(torch.tensor([[unit]], dtype=torch.long), state)
                    outputs.append(state[-1, 0, :hidden])
                outputs = torch.stack(outputs)  # (T, H)
            else:
                features, state = self.model.features(torch.tensor([inputs], dtype=torch.long), state)  # (1, T, H)
                outputs = features[0]
            logits = self._engine.output_from_state(state)[0].float()
        return state, logits, read_memory(memory, previous, outputs.float(), inputs, self.text_cache_settings.window)

    def _ahead(self, units: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, Memory | None] | None:
        """The state, logits and text-cache memory after `units` if the latest prediction read them past its
        context (lock held)."""
        reads = self._lookahead
        if reads is None or reads.context_units is None:
            return None
        base = reads.context_units
        if len(units) <= len(base) or units[: len(base)] != base or units[len(base):] not in reads:
            return None
        memory = None
        if self.text_cache_settings is not None:
            memory = reads.memory_after(units[len(base):])
            if memory is None:  # read without the cache: no path memory kept
                return None
        return (*reads.after(units[len(base):]), memory)

    def _remember(self, units: tuple[int, ...], result: ContextState) -> ContextState:
        """Keep `result` in the prefix cache, then drop the least recently used contexts while there are more than
        `prefix_cache_size` or they hold more than `prefix_cache_bytes` (with a text cache a context's memory is up to
        `window` top-layer outputs: 8 MB at window 4,000 and 512 hidden units)."""
        if self.prefix_cache_size:
            with self._lock:
                replaced = self._prefix_cache.get(units)
                if replaced is not None:
                    self._prefix_cache_bytes_used -= replaced.nbytes
                self._prefix_cache[units] = result
                self._prefix_cache_bytes_used += result.nbytes
                self._prefix_cache.move_to_end(units)
                while len(self._prefix_cache) > self.prefix_cache_size or (
                        self._prefix_cache_bytes_used > self.prefix_cache_bytes and len(self._prefix_cache) > 1):
                    _, dropped = self._prefix_cache.popitem(last=False)
                    self._prefix_cache_bytes_used -= dropped.nbytes
        return result

    def context_from(self, units: tuple[int, ...], state: torch.Tensor, logits: torch.Tensor,
                     memory: Memory | None = None) -> ContextState:
        """The context state after `units` from a read done elsewhere: its final state (L, 1, S), logits (V,) and
        the text cache's memory (None: predictions from it use the model alone)."""
        return ContextState(units, len(units), state, logits.float(), line_start=self.ends_line(units[-1] if units else None),
                            memory=memory)

    def ends_line(self, last_unit: int | None) -> bool:
        """Whether a context whose last unit is `last_unit` (None: an empty context) ends at a line start."""
        return last_unit is None or self.tokenizer.unit_text(last_unit) == "\n"

    def predict_many(self, texts: list[str], k: int = 5, beam_width: int = 16, max_word_length: int = 24,
                     temperature: float = 1.0, text_cache: bool | None = None) -> list[PredictionResult]:
        """Predict after many texts: their contexts are read together in one padded batch (one by one when the
        text cache is applied: each context's memory needs every position's output)."""
        if self.uses_text_cache(text_cache):
            return [self.predict(text, k=k, beam_width=beam_width, max_word_length=max_word_length,
                                 temperature=temperature, use_prefix_cache=False, text_cache=True) for text in texts]
        queries = [make_query(text, self.tokenizer) for text in texts]
        rows = [[self.tokenizer.newline_id, *self.tokenizer.encode(q.context)] for q in queries]
        lengths = torch.tensor([len(row) for row in rows])
        padded = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
        for index, row in enumerate(rows):
            padded[index, : len(row)] = torch.tensor(row)
        with torch.inference_mode():
            # Score only each row's last position, from its final state.
            _, states = self.model(padded, lengths=lengths, score_from=padded.size(1))  # (L, N, S)
            last = self._engine.output_from_state(states).float()  # (N, V)
        results = []
        for index, query in enumerate(queries):
            units = tuple(rows[index][1:])
            context = self.context_from(units, states[:, index : index + 1].clone(), last[index])
            results.append(self.predict_from(context, query, k=k, beam_width=beam_width, max_word_length=max_word_length,
                                             temperature=temperature, text_cache=False))
        return results

    def warm_up(self, rows: int = 64) -> None:
        """Pay now what the first requests would: the unit tables, and oneDNN's kernels for single steps of
        1..rows rows (a batch size's first product costs about a millisecond more; searches use many sizes)."""
        self.predict("The ", k=1, use_prefix_cache=False)
        for count in range(1, rows + 1):
            self.step(torch.zeros(count, dtype=torch.long), self.zero_state(count))

    def clear_prefix_cache(self) -> None:
        """Empty the prefix cache and forget the latest prediction's reads and remembered lines (normalised text,
        subword ids): the next prediction starts cold."""
        with self._lock:
            self._prefix_cache.clear()
            self._prefix_cache_bytes_used = 0
            self._lookahead = None
        normalize_line.cache_clear()
        self.tokenizer.clear_cache()

    # Reading units past a context ------------------------------------------

    def _step(self, temperature: float, states: torch.Tensor, units: list[int], parents: list[int]) -> StepRows:
        """Feed unit i to states[:, parents[i]] of states (L, M, S), in one batched step."""
        with torch.inference_mode():
            shared = torch.tensor(parents, dtype=torch.long)
            logits, new_states = self.step(torch.tensor(units, dtype=torch.long), states, parents=shared)  # (N, V)
            return self._normalized(new_states, logits, temperature)

    def _normalized(self, states: torch.Tensor, logits: torch.Tensor, temperature: float) -> StepRows:
        """(N, V) float32 logits -> the rows `Reads` keeps: tempered logits (N, V) float32, log-normalisers (N,)
        float64 and log P(the next unit begins with a boundary) (N,) float64; log P(u) = scaled[u] - normaliser.

        The exponentials run in float32 (each within an ulp, below the logits'
        own float32 rounding), the sums and the rest in float64 (`Normalised`).
        No (N, V) float64 array is kept (see `Reads.logprobs`).
        """
        raw = logits
        if temperature != 1.0:
            logits = logits / temperature
        rows = Normalised.of(logits)
        return StepRows(states, raw, logits.numpy(), rows.normalisers.numpy(),
                        rows.boundaries(self.units.ends_mask).numpy())

    def reads_after(self, context: ContextState, temperature: float = 1.0, text_cache: bool = True) -> Reads:
        """What the model has read after a context, holding only the context itself so far; it reads more
        (batched model steps at `temperature`) as a search asks. With `text_cache` (and settings, and a context
        that kept its memory) every row is mixed with the continuous cache over the text."""
        with torch.inference_mode():
            first = self._normalized(context.state, context.logits[None], temperature)
            mixed = None
            if text_cache and self.text_cache_settings is not None and context.memory is not None:
                mixed = TextCache(self.text_cache_settings, context.memory, self.model.config.hidden_dim, self.units.ends_mask)
            return Reads(context, first, lambda states, units, parents: self._step(temperature, states, units, parents),
                         mixed, step_key=(id(self), temperature))

    # Scoring and prediction ------------------------------------------------

    def score_word(self, text: str, word: str, temperature: float = 1.0, text_cache: bool | None = None) -> float:
        """Exact log P(word | text): every unit sequence that spells it, followed by a boundary."""
        query = make_query(text, self.tokenizer)
        context = self.context_state(tuple(self.tokenizer.encode(query.context)))
        return self.score_word_from(context, query, word, temperature, text_cache)

    def score_word_from(self, context: ContextState, query: Query, word: str, temperature: float = 1.0,
                        text_cache: bool | None = None) -> float:
        """Exact log P(word | text) after an already-read context, as `predict_from` would score it."""
        (exact,), _ = score_words(self.units, self.reads_after(context, temperature, self.uses_text_cache(text_cache)),
                                  context.line_start,
                                  query, [word])
        return exact.logprob

    def predict(self, text: str, k: int = 5, beam_width: int = 16, max_word_length: int = 24,
                temperature: float = 1.0, use_prefix_cache: bool = True, text_cache: bool | None = None,
                max_units: int | None = None) -> PredictionResult:
        """The k most probable next words (or completions of the unfinished word) after `text`; `use_prefix_cache`: reuse
        the prefix cache; `text_cache`: mix in the continuous cache over the text (see `uses_text_cache`);
        `max_units`: read only the last that many units of the context, as attribution does (`result.cut` says
        what was left unread)."""
        query, cut = keep_last_units(text, self.tokenizer, max_units)
        context = self.context_state(tuple(self.tokenizer.encode(query.context)), use_prefix_cache=use_prefix_cache)
        result = self.predict_from(context, query, k=k, beam_width=beam_width, max_word_length=max_word_length,
                                   temperature=temperature, text_cache=text_cache)
        result.cut = cut
        return result

    def predict_from(self, context: ContextState, query: Query, k: int = 5, beam_width: int = 16,
                     max_word_length: int = 24, temperature: float = 1.0, text_cache: bool | None = None) -> PredictionResult:
        """Predict after an already-read context (see `context_state`); with the text cache when `uses_text_cache`
        says so and the context kept its memory (the result's `text_cache` says which)."""
        if k < 1 or beam_width < 1 or max_word_length < 1 or not temperature > 0:
            raise ValueError("k, beam_width and max_word_length must be at least 1 and temperature positive")
        known = self.reads_after(context, temperature, self.uses_text_cache(text_cache))  # what the beam reads, exact scoring reuses
        words = beam_search(self.units, known, context.line_start, query, k, beam_width, max_word_length)
        # Other spellings (segmentations, a leading space) may have been
        # pruned from the beam: score the leaders exactly, all in one pass.
        leaders = [word for word, _ in sorted(words.items(), key=lambda item: -item[1])[: k + 3]]
        exact, required = score_words(self.units, known, context.line_start, query, leaders)
        if self.prefix_cache_size:
            with self._lock:
                self._lookahead = known
        ranked = sorted(zip(leaders, exact), key=lambda item: -item[1].logprob)
        predictions = []
        for word, spelling in ranked[:k]:
            if spelling.logprob == NEG:
                continue
            remainder = word[len(query.partial):] if query.completing else word
            predictions.append(WordPrediction(word, spelling.logprob, remainder, spelling.paths, spelling.path_logprobs))
        return PredictionResult(query, predictions, context.length, required.logprob, required.paths, known.text_cache is not None,
                                known, context.line_start, required_path_logprobs=required.path_logprobs)

    def score_more(self, result: PredictionResult, words: list[str]) -> list[float]:
        """Exact log P(word | text) of other words after a prediction's text, as it scored its own (same mixture),
        reusing what it read."""
        if result.reads is None:
            raise ValueError("this prediction kept no reads to score more words with")
        exact, _ = score_words(self.units, result.reads, result.line_start, result.query, words)
        return [spelling.logprob for spelling in exact]
