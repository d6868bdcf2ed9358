"""Held-out scoring that compares char, subword and word models on one scale.

How the state flows: a split is scored as one stream (batch size 1), from a
zero state, carried across the whole split and never reset or truncated.
The first input is a line-break unit (a split starts at a line start), so
every unit of the split is scored, the very first included. The model is in
evaluation mode (no dropout).

Three figures from one total negative log-likelihood (NLL, nats):
- bits per character: NLL / ln 2 / characters of the normalised text;
- per-word perplexity: exp(NLL / words of the split *as published*, counted
  by whitespace before normalisation), so every tokenizer divides by the same
  number (21,812 for the wiki-subset test split);
- per-unit perplexity: exp(NLL / units), which depends on the tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy
import torch

from lm.eval.cache import TextCacheConfig, mixed_nll, score_stream, stream_weights, text_cache_logprobs, tune_text_cache_on_stream
from lm.eval.dynamic import score_stream_dynamic, tune_dynamic
from lm.model import RNNLanguageModel
from lm.tokenizers import Tokenizer

__all__ = ["Adapted", "EvalResult", "HOW_STATE_FLOWS", "evaluate_adapted", "evaluate_ids", "evaluate_text"]

HOW_STATE_FLOWS = (
    "one stream from a zero state, carried across the whole split (batch size 1, no resets); "
    "the first input is a line break, so every unit is scored; evaluation mode, no dropout"
)


@dataclass(frozen=True)
class EvalResult:
    """Totals and the figures derived from them."""

    nll: float  # nats, summed over every scored unit
    units: int
    chars: int
    words: float  # published words covered (estimated for a prefix of a split)
    words_estimated: bool = False

    @property
    def loss(self) -> float:
        """Mean NLL per unit, nats."""
        return self.nll / max(self.units, 1)

    @property
    def bpc(self) -> float:
        return self.nll / math.log(2) / max(self.chars, 1)

    @property
    def word_ppl(self) -> float:
        return _safe_exp(self.nll / max(self.words, 1))

    @property
    def unit_ppl(self) -> float:
        return _safe_exp(self.loss)

    def as_dict(self) -> dict:
        """JSON-ready figures, totals included."""
        return {
            **asdict(self),
            "loss": self.loss,
            "bpc": self.bpc,
            "word_ppl": self.word_ppl,
            "unit_ppl": self.unit_ppl,
        }


def _safe_exp(value: float) -> float:
    return math.exp(value) if value < 700 else math.inf


def evaluate_ids(model: RNNLanguageModel, ids: list[int], first_input: int, chunk: int = 1024) -> tuple[float, int]:
    """Total NLL (nats) of `ids` scored as one stream after `first_input`, and the number scored."""
    return score_stream(model, ids, first_input, chunk, keep_features=False).model_nll, len(ids)


def _units_of_lines(ids: list[int], newline_id: int, lines: int) -> int:
    """How many units encode the first `lines` lines (each ending with its line break)."""
    breaks = numpy.flatnonzero(numpy.asarray(ids) == newline_id)
    return int(breaks[lines - 1]) + 1 if lines else 0


def evaluate_text(model: RNNLanguageModel, tokenizer: Tokenizer, text: str, raw_words: int, max_chars: int | None = None,
                  text_cache: TextCacheConfig | None = None, dynamic_lr: float | None = None, ids: list[int] | None = None) -> EvalResult:
    """Score normalised `text` (a whole split, or its first `max_chars` characters); with the text cache (a
    continuous cache over the text read: lm/eval/cache.py) and dynamic evaluation at `dynamic_lr` (lm/eval/dynamic.py)
    if given. `ids` are `tokenizer.encode(text)` when the caller has them (from the token cache): then nothing is
    encoded here."""
    words: float = raw_words
    estimated = False
    if max_chars is not None and len(text) > max_chars:
        cut = text.rfind("\n", 0, max_chars) + 1 or max_chars
        # Published words of the prefix, estimated from its share of the
        # normalised words (normalisation joins some published tokens).
        words = raw_words * len(text[:cut].split()) / max(len(text.split()), 1)
        text, estimated = text[:cut], True
        # Each line break is one unit of its own (the Tokenizer contract): a prefix of whole lines is a prefix of the ids.
        ids = ids[: _units_of_lines(ids, tokenizer.newline_id, text.count("\n"))] if ids is not None and text.endswith("\n") else None
    if ids is None:
        ids = tokenizer.encode(text)
    if dynamic_lr is not None:
        scores = score_stream_dynamic(model, ids, tokenizer.newline_id, dynamic_lr)
    else:
        scores = score_stream(model, ids, tokenizer.newline_id, keep_features=text_cache is not None)
    nll = scores.model_nll if text_cache is None else mixed_nll(
        scores, text_cache_logprobs(scores, text_cache.window, text_cache.theta), stream_weights(text_cache, len(scores.targets)))
    return EvalResult(nll=nll, units=len(ids), chars=len(text), words=words, words_estimated=estimated)


@dataclass(frozen=True)
class Adapted:
    """A split's figures with the text cache and/or dynamic evaluation, and the settings used."""

    figures: EvalResult
    text_cache: TextCacheConfig | None
    dynamic_lr: float | None
    tuned: tuple[str, ...]  # the settings chosen on the valid split

    def describe(self) -> str:
        parts = []
        if self.dynamic_lr is not None:
            parts.append(f"dynamic evaluation (learning rate {self.dynamic_lr:g})")
        if self.text_cache is not None:
            parts.append(f"the text cache (window {self.text_cache.window} units, theta {self.text_cache.theta:g}, "
                         f"weight {self.text_cache.weight:g})")
        return f"{' and '.join(parts)}, {self.chosen}"

    @property
    def chosen(self) -> str:
        return f"{' and '.join(self.tuned)} tuned on the valid split" if self.tuned else "as given"

    def as_dict(self) -> dict:
        text_cache = None if self.text_cache is None else asdict(self.text_cache)
        return {"text_cache": text_cache, "dynamic_lr": self.dynamic_lr, "chosen": self.chosen, **self.figures.as_dict()}


def evaluate_adapted(model: RNNLanguageModel, tokenizer: Tokenizer, text: str, raw_words: int, valid_text: str,
                     text_cache: TextCacheConfig | str | None = None, dynamic_lr: float | str | None = None) -> Adapted:
    """Score `text` with the text cache and/or dynamic evaluation; either setting may be "tune": chosen on `valid_text`,
    read the way `text` will be (the text cache is tuned on dynamically evaluated scores when both are asked for)."""
    tuned = []
    if "tune" in (text_cache, dynamic_lr):
        valid = tokenizer.encode(valid_text)
        scores = None
        if dynamic_lr == "tune":
            dynamic_lr, scores, _ = tune_dynamic(model, valid, tokenizer.newline_id)
            tuned.append("learning rate")
        if text_cache == "tune":
            if scores is None:
                scores = (score_stream(model, valid, tokenizer.newline_id) if dynamic_lr is None
                          else score_stream_dynamic(model, valid, tokenizer.newline_id, dynamic_lr))
            text_cache, _, _ = tune_text_cache_on_stream(scores)
            tuned.append("text cache settings")
    figures = evaluate_text(model, tokenizer, text, raw_words, text_cache=text_cache, dynamic_lr=dynamic_lr)
    return Adapted(figures, text_cache, dynamic_lr, tuple(tuned))
