"""Text generation: continue a text word by word, sampling each word from the model's word distribution.

A *word* is the predictor's (docs/PREDICTION.md): a run of word characters
or one punctuation character. Each step samples one word, with whatever
whitespace comes before it, in at most two stages:

1. The boundary (only when the text so far ends in a word or punctuation):
   what the next character is, from the model's next-unit distribution
   grouped by the first character of each unit (exact: the sum over every
   unit that begins with it). After a word the choices are a space, a line
   break, or a punctuation character, which is then the generated word
   itself (its probability is that sum). After punctuation they are a
   space, a line break, or "directly": the next word follows with no space.
2. The word: after whitespace, `Predictor.predict_from` gives the top_k most
   probable next words with their exact probabilities; after punctuation,
   "directly", the same with no whitespace allowed first; and when the
   prompt ends inside a word, its completions (as `predict` gives them).

Both stages sample from the same transform of the model's exact,
untempered probabilities p over their choices: keep the `top_k` most
probable, weight each by p ** (1 / temperature), normalise over the kept
ones, and keep the smallest most-probable-first set whose normalised
weight reaches `top_p` (nucleus sampling, Holtzman et al. 2020). Top-k is
therefore applied to the word distribution itself: with `top_k=1` every
word is the predictor's most probable one (greedy), and with `top_k=2`
every word that follows whitespace is among the top two `predict` lists
at that point. Words outside the top_k are never sampled (the predictor
finds top_k candidates, so top_k is also the search's breadth).

`GeneratedWord.probability` is not the sampling weight: it is the exact
probability, under the untempered model, that the text so far (the
whitespace generated before the word included) continues with exactly
this word and then a word boundary. After whitespace this is what
`Predictor.predict` reports for the word at that point; for the first word
of a prompt that ends inside a word, it is the completion's probability as
`predict` reports it. The boundary stage's own choice (a space, a line
break, "directly") is not part of any word's probability.

Generation uses the model alone by default. The continuous cache copies
what the text has just said, and a continuation feeds its own words back
into it: with the cache, seeded 50-word continuations of test prompts
repeated 5-8 times as many of their word trigrams as the model alone's
(bench/repetition.py, docs/BENCHMARKS.md), so it is mixed in only when
asked. With the cache (`text_cache=True`: Grave, Joulin and Usunier 2017,
lm/infer/textcache.py) both
stages read the mixed model: the boundary's first-character masses come
from the context's mixed next-unit row, the words from `predict_from` with
the cache, and every reported probability is the mixed model's. The cache
reads the prompt and everything generated so far: each step's context is
the whole text, the generated words included, so a name the continuation
has just used can come back through the cache as it would from the prompt.

Sampling is seeded (`random.Random(seed)`): the same model, text, settings,
cache switch and seed give the same continuation. Generation stops after
`words` words, or before a line break with `stop_at_newline`, or when no
word has any probability left.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from lm.infer.predictor import Predictor
from lm.infer.query import Query, make_query
from lm.tokenizers import is_word_char

__all__ = ["GeneratedWord", "Generation", "GenerationSettings", "generate", "generate_words", "new_generation",
           "sample_index"]

DIRECTLY = ""  # the boundary choice after punctuation: the next word follows with no whitespace


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample a continuation; checked on creation (ValueError)."""

    words: int = 20  # stop after this many words
    temperature: float = 1.0  # sampling weights p ** (1 / temperature); < 1 sharpens, > 1 flattens
    top_k: int = 20  # sample among the k most probable choices only
    top_p: float = 1.0  # then among the most probable reaching this share of their weight (1: all k)
    stop_at_newline: bool = False  # stop before a line break

    def __post_init__(self):
        if isinstance(self.words, bool) or not isinstance(self.words, int) or self.words < 1:
            raise ValueError(f"words must be a whole number of at least 1, not {self.words!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a whole number of at least 1, not {self.top_k!r}")
        if not (0 < self.temperature < math.inf):
            raise ValueError(f"temperature must be positive and finite, not {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p!r}")


@dataclass(frozen=True)
class GeneratedWord:
    """One generated word: what was appended to the text, and the word's exact probability there."""

    word: str
    text: str  # appended to the text: the whitespace before the word and the word (only its remainder when completing)
    logprob: float  # exact log P(word, then a boundary | the text before it, its whitespace included), untempered
    probability: float = field(init=False)  # exp(logprob)

    def __post_init__(self) -> None:
        object.__setattr__(self, "probability", math.exp(self.logprob))


@dataclass
class Generation:
    """A continuation and how it came about."""

    text: str  # the prompt, normalised as the model reads it
    seed: int
    settings: GenerationSettings
    words: list[GeneratedWord] = field(default_factory=list)
    stopped: str = "words"  # "words" (the count was reached), "newline", or "no_words" (nothing left to sample)
    text_cache: bool = False  # whether the continuous cache over the text was mixed in

    @property
    def continuation(self) -> str:
        return "".join(word.text for word in self.words)


def sample_index(probabilities: list[float], settings: GenerationSettings, rng: random.Random) -> int | None:
    """Index of a choice sampled from exact probabilities by top-k, then temperature, then top-p; None if all are 0."""
    order = sorted((i for i, p in enumerate(probabilities) if p > 0), key=lambda i: -probabilities[i])[: settings.top_k]
    if not order:
        return None
    # (log p - log p_max) / temperature <= 0: no overflow, and a temperature as small as 5e-324 only sends the
    # others' weights to 0 (dividing each log first gave -inf - -inf = nan).
    top = math.log(probabilities[order[0]])
    weights = [math.exp((math.log(probabilities[i]) - top) / settings.temperature) for i in order]
    if settings.top_p < 1:
        total, mass = sum(weights), 0.0
        for count, weight in enumerate(weights, 1):
            mass += weight / total
            if mass >= settings.top_p:
                weights = weights[:count]
                break
    return order[rng.choices(range(len(weights)), weights=weights)[0]]


class _FirstCharacters:
    """Groups a tokenizer's units by the first character of their text inside a line, once per generation."""

    def __init__(self, predictor: Predictor):
        texts = predictor.units.texts[0]
        self.chars = sorted({text[0] for text in texts if text})
        index = {char: i for i, char in enumerate(self.chars)}
        self.group = np.array([index[text[0]] if text else -1 for text in texts])  # (V,); -1: no text
        self.valid = self.group >= 0

    def masses(self, probabilities: np.ndarray) -> dict[str, float]:
        """P(the next unit begins with c) for every character c, from one context's next-unit distribution (V,)."""
        sums = np.bincount(self.group[self.valid], weights=probabilities[self.valid], minlength=len(self.chars))
        return dict(zip(self.chars, sums.tolist()))


def generate(predictor: Predictor, text: str, settings: GenerationSettings | None = None,
             seed: int | None = None, text_cache: bool | None = None) -> Generation:
    """Continue `text` word by word (see the module docstring for what is sampled and what is reported); with the
    continuous cache over the text only when asked (`text_cache` True) and the predictor has settings: by default
    (None) generation uses the model alone, whose text repeats itself far less (docs/BENCHMARKS.md)."""
    generation = new_generation(predictor, text, settings, seed, text_cache)
    for _ in generate_words(predictor, generation):
        pass
    return generation


def new_generation(predictor: Predictor, text: str, settings: GenerationSettings | None = None,
                   seed: int | None = None, text_cache: bool | None = None) -> Generation:
    """A continuation of `text` with no word yet, for `generate_words` (a missing seed is drawn here; `text_cache`
    as in `generate`)."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    text_cache = bool(text_cache) and predictor.text_cache_settings is not None
    return Generation(make_query(text, predictor.tokenizer).text, seed, settings or GenerationSettings(),
                      text_cache=text_cache)


def generate_words(predictor: Predictor, generation: Generation) -> Iterator[GeneratedWord]:
    """Extend a fresh `generation` (`new_generation`) word by word, yielding each word once it is appended to
    `generation.words`; when the iterator ends, `generation.stopped` says why. Run to the end, it gives `generate`'s
    continuation; a caller may stop it early (a stop sequence), and the words so far stay in `generation`."""
    if generation.words:
        raise ValueError("generate_words continues a generation with no word yet")
    settings, text_cache = generation.settings, generation.text_cache
    rng = random.Random(generation.seed)
    tokenizer = predictor.tokenizer
    query = make_query(generation.text, tokenizer, normalized=True)
    so_far = query.text
    firsts = _FirstCharacters(predictor)
    while len(generation.words) < settings.words:
        separator = ""
        if not query.completing and so_far and not so_far[-1].isspace():
            choice, logprob = _boundary(predictor, firsts, so_far, settings, rng, text_cache)
            if choice is None:
                generation.stopped = "no_words"
                break
            if choice == "\n" and settings.stop_at_newline:
                generation.stopped = "newline"
                break
            if not choice.isspace() and choice != DIRECTLY:  # punctuation right after a word: that character is the word
                generation.words.append(GeneratedWord(choice, choice, logprob))
                so_far += choice
                yield generation.words[-1]
                continue
            separator = choice if choice.isspace() else ""
            query = make_query(so_far + separator, tokenizer, normalized=True)
            if choice == DIRECTLY:
                query = replace(query, start=("before", True))  # no whitespace before the word
        elif len(generation.words) > 0:  # the text ends in whitespace (or is empty): the next whole word
            query = make_query(so_far, tokenizer, normalized=True)
        word = _word(predictor, query, settings, rng, text_cache)  # the first time: the prompt's own query (maybe completing)
        if word is None:
            generation.stopped = "no_words"
            break
        generation.words.append(replace(word, text=separator + word.text))
        so_far += separator + word.text
        query = replace(query, completing=False)  # only the prompt's unfinished word is completed
        yield generation.words[-1]


def _boundary(predictor: Predictor, firsts: _FirstCharacters, so_far: str, settings: GenerationSettings,
              rng: random.Random, text_cache: bool) -> tuple[str | None, float]:
    """What follows a text that ends in a word or punctuation: " ", "\\n", a punctuation character (after a word)
    or DIRECTLY (after punctuation); with log P(it | text) for a punctuation character."""
    context = predictor.context_state(tuple(predictor.tokenizer.encode(so_far)))
    if text_cache:  # the context's own row of the mixed model (what `predict_from` would read first)
        probabilities = np.exp(predictor.reads_after(context).logprobs(()))
    else:
        probabilities = torch.softmax(context.logits.double(), dim=-1).numpy()
    masses = firsts.masses(probabilities)
    after_word = is_word_char(so_far[-1])
    choices = {" ": masses.get(" ", 0.0), "\n": masses.get("\n", 0.0)}
    if after_word:  # the word was complete: only a boundary can follow, punctuation being a word of its own
        choices.update((char, mass) for char, mass in masses.items() if not char.isspace() and not is_word_char(char))
    else:
        choices[DIRECTLY] = sum(mass for char, mass in masses.items() if not char.isspace())
    names = list(choices)
    chosen = sample_index([choices[name] for name in names], settings, rng)
    if chosen is None:
        return None, -math.inf
    name = names[chosen]
    return name, math.log(choices[name]) if choices[name] > 0 else -math.inf


def _word(predictor: Predictor, query: Query, settings: GenerationSettings, rng: random.Random,
          text_cache: bool) -> GeneratedWord | None:
    """The next word after a query's text, sampled among the predictor's top_k words."""
    context = predictor.context_state(tuple(predictor.tokenizer.encode(query.context)))
    result = predictor.predict_from(context, query, k=settings.top_k, text_cache=text_cache)
    chosen = sample_index([p.probability for p in result.predictions], settings, rng)
    if chosen is None:
        return None
    prediction = result.predictions[chosen]
    return GeneratedWord(prediction.word, prediction.remainder, prediction.logprob)
