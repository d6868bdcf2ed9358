"""`POST /v1/completions`: OpenAI's legacy completions API over Reach's word-by-word generation and exact scoring.

Each prompt becomes one choice: the prompt is normalised as everywhere in
Reach, continued word by word (lm/infer/generate.py's `generate_words`,
so a streamed and an unstreamed completion with the same seed are the same
words), cut before the first stop sequence, and, when asked, its tokens are
reported with their exact log-probabilities (lm/infer/echo.py for the
prompt's and the alternatives; the generated word's own figure from
generation). The protocol's models and what is and is not supported are in
server/openai_protocol.py; docs/API.md says it for people.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from flask import Blueprint, Response, request

from lm.infer.attribution import attribute
from lm.infer.echo import score_token, split_tokens
from lm.infer.generate import GeneratedWord, GenerationSettings, generate_words, new_generation
from lm.tokenizers import is_word_char
from server.openai_protocol import CompletionChoice, CompletionChunk, CompletionChunkChoice, CompletionLogprobs, \
    CompletionResponse, CompletionUsage, TextCacheUse, TokenReach, completion_request_model
from server.observability import note_generated_words
from server.operations import Limits, Operation, body_errors, current_limits
from server.registry import LoadedModel
from server.routes import served_model
from server.streaming import sse_response
from server.validation import parse_json

__all__ = ["completions", "operations"]

completions = Blueprint("completions", __name__)


@dataclass
class Token:
    """One token of a choice as the logprobs object reports it."""

    text: str
    logprob: float | None
    top: dict[str, float] | None
    offset: int  # into the normalised prompt followed by the completion
    reach: TokenReach | None = None


@dataclass
class Piece:
    """What one step adds to a choice: its text, the tokens wholly in it, and, last, why the choice ended."""

    text: str
    tokens: list[Token] = field(default_factory=list)
    finish_reason: str | None = None
    seed: int | None = None  # with the last piece of a generated choice


@dataclass
class Plan:
    """A validated request, resolved: what to generate, what to report, under which model."""

    model: LoadedModel
    settings: GenerationSettings | None  # None: max_tokens 0, nothing generated
    seed: int | None
    stops: list[str]
    echo: bool
    top: int | None  # alternatives per token; None: no logprobs object
    reach: bool
    text_cache: bool | None  # as asked
    max_context_units: int
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def prompt_text_cache(self) -> bool:
        """The prompt's scores follow /v1/predict's default."""
        return self.model.predictor.uses_text_cache(self.text_cache)

    @property
    def completion_text_cache(self) -> bool:
        """The generated words follow /v1/generate's default (the model alone unless asked)."""
        return bool(self.text_cache) and self.model.predictor.text_cache_settings is not None


def _plan(query, model: LoadedModel, limits: Limits) -> Plan:
    settings = None
    if query.max_tokens != 0:
        greedy = query.temperature == 0
        settings = GenerationSettings(
            words=query.max_tokens if query.max_tokens is not None else min(16, limits.max_generate_words),
            temperature=1.0 if greedy or query.temperature is None else query.temperature,
            top_k=1 if greedy else (query.top_k or min(20, limits.max_k)),
            top_p=query.top_p if query.top_p is not None else 1.0)
    top = query.logprobs if query.logprobs is not None else (0 if query.reach else None)
    return Plan(model, settings, query.seed, query.stops(), bool(query.echo), top, query.reach, query.text_cache,
                limits.max_context_units)


def _top(scored: list[tuple[str, float]] | None, token: str, logprob: float | None) -> dict[str, float] | None:
    """The alternatives as OpenAI's dict, the token itself included with its own figure (so up to logprobs + 1
    entries; among the alternatives, scored with them, it can differ in the last digits: within the spelling
    tolerance, 1e-6). A token of probability 0, whose figure JSON cannot hold, is left out."""
    if scored is None or logprob is None:
        return None
    top = dict(scored)
    if math.isfinite(logprob):
        top[token] = logprob
    return top


def _prompt_tokens(plan: Plan, text: str, spans: list[tuple[int, int, int]]) -> list[Token]:
    """The prompt's tokens with their figures after the text before them (the first one null, as OpenAI has it)."""
    tokens = []
    for number, (start, word_start, end) in enumerate(spans):
        if number == 0:
            tokens.append(Token(text[start:end], None, None, start))
            continue
        scored = score_token(plan.model.predictor, text, start, word_start, end, top=plan.top,
                             text_cache=plan.prompt_text_cache)
        tokens.append(Token(scored.text, scored.logprob, _top(scored.top, scored.text, scored.logprob), start))
    return tokens


def _reach(plan: Plan, before: str, word: GeneratedWord) -> TokenReach | None:
    """The gradient reach of a generated word's prediction after `before` (the text before it, its whitespace
    included): the word is attributed among the predictions ranked above it (None where /v1/predict cannot list it:
    right after punctuation or as punctuation right after a word, or a text longer than the context limit)."""
    completing = bool(before) and is_word_char(before[-1]) and is_word_char(word.word[0])
    if before and not before[-1].isspace() and not completing:
        return None
    predictor, text_cache = plan.model.predictor, plan.completion_text_cache
    ranked = predictor.predict(before, k=plan.settings.top_k, text_cache=text_cache, max_units=plan.max_context_units)
    if ranked.cut.truncated:
        return None
    rank = next((number for number, item in enumerate(ranked.predictions) if item.word == word.word), None)
    if rank is None:
        return None
    attribution = attribute(predictor, before, k=rank + 1, text_cache=text_cache, max_units=plan.max_context_units)
    item = next((item for item in attribution.predictions if item.prediction.word == word.word), None)
    return None if item is None else TokenReach(tokens=item.reach.tokens, words=item.reach.words, chars=item.reach.chars)


def _generated_token(plan: Plan, text: str, start: int, word: GeneratedWord) -> Token:
    """A generated word as a token at text[start:]; its figure is generation's own, its alternatives echo's."""
    word_start = start + len(word.text) - len(word.text.lstrip())
    top = None
    if plan.top is not None:
        scored = [] if plan.top == 0 else score_token(plan.model.predictor, text, start, word_start, len(text),
                                                       top=plan.top, text_cache=plan.completion_text_cache,
                                                       logprob=False).top
        top = _top(scored, word.text, word.logprob)
    reach = _reach(plan, text[:word_start], word) if plan.reach else None
    return Token(word.text, word.logprob, top, start, reach)


def _first_stop(text: str, stops: list[str], since: int) -> int | None:
    """Where the first stop sequence begins in `text`, looking only at matches that start at `since` or later."""
    found = [index for stop in stops if (index := text.find(stop, max(since, 0))) >= 0]
    return min(found) if found else None


def _tokens(plan: Plan, base: str, completion: str, items: list[tuple[int, int, GeneratedWord]]) -> list[Token]:
    """Generated words (start, end, word) of `completion`, after the normalised prompt `base`, as tokens."""
    if plan.top is None:
        return []
    return [_generated_token(plan, base + completion[:end], len(base) + start, word) for start, end, word in items]


def choice_pieces(plan: Plan, prompt: str) -> Iterator[Piece]:
    """One prompt's choice, piece by piece: the echoed prompt, each generated token once no stop sequence can begin
    in it, and the end (with the seed)."""
    predictor = plan.model.predictor
    generation = new_generation(predictor, prompt, plan.settings or GenerationSettings(words=1), seed=plan.seed,
                                text_cache=plan.text_cache)
    base = generation.text  # the prompt as normalised: offsets count from its start
    spans = split_tokens(base)
    plan.prompt_tokens += len(spans)
    if plan.echo:
        yield Piece(base, _prompt_tokens(plan, base, spans) if plan.top is not None else [])
    if plan.settings is None:
        yield Piece("", finish_reason="length")
        return
    hold = max((len(stop) for stop in plan.stops), default=1) - 1  # text that could still begin a stop sequence
    completion, words, sent, cut = "", [], 0, None
    for word in generate_words(predictor, generation):
        start = len(completion)
        plan.completion_tokens += 1
        note_generated_words(1)
        words.append((start, start + len(word.text), word))
        completion += word.text
        if plan.stops and (cut := _first_stop(completion, plan.stops, start - hold)) is not None:
            break
        ready = sent
        while ready < len(words) and words[ready][1] <= len(completion) - hold:
            ready += 1
        if ready > sent:
            yield Piece(completion[words[sent][0]:words[ready - 1][1]], _tokens(plan, base, completion, words[sent:ready]))
            sent = ready
    end = cut if cut is not None else len(completion)
    emitted = words[sent][0] if sent < len(words) else len(completion)
    kept = [item for item in words[sent:] if item[1] <= end]
    yield Piece(completion[emitted:end], _tokens(plan, base, completion, kept),
                finish_reason="stop" if cut is not None or generation.stopped != "words" else "length",
                seed=generation.seed)


def _logprobs(plan: Plan, tokens: list[Token]) -> CompletionLogprobs | None:
    if plan.top is None:
        return None
    logprobs = CompletionLogprobs(tokens=[t.text for t in tokens], token_logprobs=[t.logprob for t in tokens],
                                  top_logprobs=[t.top for t in tokens], text_offset=[t.offset for t in tokens])
    if plan.reach:
        logprobs.reach = [t.reach for t in tokens]
    return logprobs


def _usage(plan: Plan) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=plan.prompt_tokens, completion_tokens=plan.completion_tokens,
                           total_tokens=plan.prompt_tokens + plan.completion_tokens)


def _answer(plan: Plan, prompts: list[str], identity: str, created: int) -> CompletionResponse:
    choices = []
    for index, prompt in enumerate(prompts):
        text, tokens, finish, seed = "", [], "length", None
        for piece in choice_pieces(plan, prompt):
            text += piece.text
            tokens += piece.tokens
            finish, seed = piece.finish_reason or finish, piece.seed if piece.seed is not None else seed
        choices.append(CompletionChoice(text=text, index=index, logprobs=_logprobs(plan, tokens), finish_reason=finish,
                                        seed=seed))
    return CompletionResponse(id=identity, object="text_completion", created=created, model=plan.model.name,
                              choices=choices, usage=_usage(plan),
                              text_cache=TextCacheUse(prompt=plan.prompt_text_cache,
                                                      completion=plan.completion_text_cache))


def _chunks(plan: Plan, prompts: list[str], identity: str, created: int, include_usage: bool) -> Iterator[CompletionChunk]:
    for index, prompt in enumerate(prompts):
        for piece in choice_pieces(plan, prompt):
            if not piece.text and not piece.tokens and piece.finish_reason is None:
                continue
            choice = CompletionChunkChoice(text=piece.text, index=index, logprobs=_logprobs(plan, piece.tokens),
                                           finish_reason=piece.finish_reason, seed=piece.seed)
            yield CompletionChunk(id=identity, object="text_completion", created=created, model=plan.model.name,
                                  choices=[choice])
    if include_usage:
        yield CompletionChunk(id=identity, object="text_completion", created=created, model=plan.model.name, choices=[],
                              usage=_usage(plan))


@completions.post("/v1/completions")
def create_completion() -> Response:
    """Continue each prompt word by word (OpenAI's completions API; streamed as server-sent events with stream)."""
    limits = current_limits()
    query = parse_json(request, completion_request_model(limits))
    plan = _plan(query, served_model(query.model or None), limits)
    identity, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if query.stream:
        include_usage = bool(query.stream_options and query.stream_options.include_usage)
        return sse_response(_chunks(plan, query.prompts(), identity, created, include_usage))
    return Response(_answer(plan, query.prompts(), identity, created).model_dump_json(), mimetype="application/json")


def operations(limits: Limits) -> list[Operation]:
    """This module's endpoints for /openapi.json."""
    errors = body_errors(limits, "prompt", bad_type="a token array as prompt",
                         bad_value="not supported (n, best_of, penalties, logit_bias, suffix)")
    return [Operation("/v1/completions", "post", "OpenAI-compatible completions: tokens are Reach's words, "
                      "log-probabilities exact", CompletionResponse, completion_request_model(limits), errors,
                      stream_event=CompletionChunk, tags=("openai",),
                      description="OpenAI's legacy completions API (as vLLM and llama.cpp serve it): see docs/API.md.")]
