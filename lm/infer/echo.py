"""A text scored word by word, as the OpenAI-style completions endpoint reports it (`echo` with `logprobs`).

A *token* here is a word as the predictor predicts it (docs/PREDICTION.md: a
run of word characters or one punctuation character) together with the
whitespace before it, as generation appends it (lm/infer/generate.py's
`GeneratedWord.text`); a run of whitespace at the very end of a text, with
no word after it, is a token of its own. The tokens of a text, joined, are
the text.

A token's log-probability is the predictor's exact figure for its word,
given all the text before the word (its own whitespace included), exactly
as generation reports the word when it samples it:

- after whitespace or at the start of the text: log P(word | text before),
  what `Predictor.predict` reports for the word there (`score_word`);
- directly after punctuation, with no whitespace between: the word spelled
  with no whitespace first, as generation scores a word after its
  "directly" choice (`Predictor.predict` on that text would also count the
  word's spellings with a leading space);
- punctuation directly after a word: P(the next unit begins with that
  character | text before), the exact mass generation samples it from;
- a word that completes an unfinished word of the text before (a
  continuation of "The capi"): the completion's probability as `predict`
  reports it;
- a trailing whitespace run: None (Reach predicts words; the whitespace
  before a word is part of its token but not of its figure, as in
  generation).

Each figure conditions on the whole text before the token, read from a
zero state at the text's start (as generation reads it; `Predictor.predict`
with `max_units` reads only the last that many units). Reading word by word
is cheap: each position's context is the previous one plus a word, which
the predictor's prefix cache extends by the new units alone.

`top` asks for the most probable alternatives at each position, scored the
same way: the top words after the same whitespace (the predictor's search),
or the most probable punctuation characters after a word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import replace as with_fields

import numpy as np
import torch

from lm.infer.predictor import Predictor
from lm.infer.query import make_query
from lm.tokenizers import is_word_char

__all__ = ["TokenScore", "score_text", "score_token", "split_tokens"]


@dataclass(frozen=True)
class TokenScore:
    """One token of a text: its text, where it starts, its word, and its exact log-probability there."""

    text: str  # the whitespace before the word and the word (a trailing whitespace run: the whitespace alone)
    start: int  # offset of the token in the scored text
    word: str  # the word ("" for trailing whitespace)
    logprob: float | None  # exact log P(word | text before it), see the module docstring; None when not scored
    top: list[tuple[str, float]] | None = None  # the most probable tokens at that point, most probable first


def split_tokens(text: str) -> list[tuple[int, int, int]]:
    """The tokens of `text` as (start, word_start, end): whitespace, then a word, joined they give the text back."""
    tokens: list[tuple[int, int, int]] = []
    position = 0
    while position < len(text):
        start = position
        while position < len(text) and text[position].isspace():
            position += 1
        word_start = position
        if position < len(text):
            if is_word_char(text[position]):
                while position < len(text) and is_word_char(text[position]):
                    position += 1
            else:
                position += 1
        tokens.append((start, word_start, position))
    return tokens


def _first_character_masses(predictor: Predictor, before: str, text_cache: bool) -> dict[str, float]:
    """P(the next unit begins with c | before) for every character c, read as generation's boundary stage reads it."""
    context = predictor.context_state(tuple(predictor.tokenizer.encode(before)))
    if text_cache:
        probabilities = np.exp(predictor.reads_after(context).logprobs(()))
    else:
        probabilities = torch.softmax(context.logits.double(), dim=-1).numpy()
    masses: dict[str, float] = {}
    for unit, unit_text in enumerate(predictor.units.texts[0]):
        if unit_text:
            masses[unit_text[0]] = masses.get(unit_text[0], 0.0) + float(probabilities[unit])
    return masses


def score_token(predictor: Predictor, text: str, start: int, word_start: int, end: int, top: int = 0,
                text_cache: bool = False, logprob: bool = True) -> TokenScore:
    """The token text[start:end] (its word from `word_start`) scored after text[:word_start] (module docstring);
    `top` alternatives (0: none); `text_cache`: under the mixture with the continuous cache over the text (the
    predictor's settings permitting); `logprob` False: only the alternatives (the caller knows the figure)."""
    token, word, before = text[start:end], text[word_start:end], text[:word_start]
    if not word:
        return TokenScore(token, start, "", None, [] if top else None)
    if before and is_word_char(before[-1]) and not is_word_char(word[0]):  # punctuation right after a word
        masses = _first_character_masses(predictor, before, text_cache)
        figure = math.log(masses[word]) if masses.get(word, 0.0) > 0 else -math.inf
        alternatives = sorted(((char, mass) for char, mass in masses.items()
                               if mass > 0 and not char.isspace() and not is_word_char(char)), key=lambda item: -item[1])
        return TokenScore(token, start, word, figure if logprob else None,
                          [(char, math.log(mass)) for char, mass in alternatives[:top]] if top else None)
    tokenizer = predictor.tokenizer
    query = make_query(before, tokenizer, normalized=True)
    scored_word = word
    if query.completing:  # the word completes the text's unfinished word
        scored_word = query.partial + word
    elif before and not before[-1].isspace():  # directly after punctuation: no whitespace before the word
        query = with_fields(query, start=("before", True))
    context = predictor.context_state(tuple(tokenizer.encode(query.context)))
    figure = predictor.score_word_from(context, query, scored_word, text_cache=text_cache) if logprob else None
    alternatives = None
    if top:
        separator = text[start:word_start]
        result = predictor.predict_from(context, query, k=top, text_cache=text_cache)
        alternatives = [(separator + prediction.remainder, prediction.logprob) for prediction in result.predictions]
    return TokenScore(token, start, word, figure, alternatives)


def score_text(predictor: Predictor, text: str, top: int = 0, text_cache: bool = False) -> list[TokenScore]:
    """Every token of the normalised `text` with its exact log-probability after the text before it (the first one
    too: it is the first word's probability after an empty text) and `top` alternatives."""
    return [score_token(predictor, text, start, word_start, end, top, text_cache)
            for start, word_start, end in split_tokens(text)]
