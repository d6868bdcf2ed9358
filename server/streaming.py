"""Server-sent events: a stream of JSON objects, each sent as soon as it is made, and `/v1/generate`'s word stream.

Framing (the WHATWG EventSource format, as OpenAI's streaming APIs use it):
each event is one `data: <JSON>` line and a blank line, and the stream ends
with `data: [DONE]`. A body that fails validation is refused before the
stream starts, with the usual JSON error and status; an error after the
stream started (the status, 200, is already sent) is one event
`event: error` whose data is the usual error body ({"error": {"code",
"message", "type", "param"}}), then `data: [DONE]`. The official `openai`
client raises that error as an `APIError`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Annotated, Literal

from flask import Response, stream_with_context
from pydantic import BaseModel, Field, RootModel

from lm.answers import GeneratedWord, generated_word
from lm.infer.generate import GenerationSettings, generate_words, new_generation
from server.errors import ApiError, error_payload
from server.observability import note_generated_words
from server.registry import LoadedModel

__all__ = ["DONE", "GenerateEvent", "GenerationEnd", "GenerationStart", "GenerationWord", "sse_event", "sse_response",
           "stream_generation"]

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"


def sse_event(data: dict | BaseModel, event: str | None = None) -> str:
    """One server-sent event: an optional `event:` line and one `data:` line of JSON (a model as its JSON)."""
    payload = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def sse_response(events: Iterator[dict | BaseModel]) -> Response:
    """A `text/event-stream` response sending each event as it comes, then `[DONE]`; an error raised by `events`
    becomes an `event: error` event with the error body (an unexpected one is logged and sent as internal_error)."""

    def frames() -> Iterator[str]:
        try:
            for item in events:
                yield sse_event(item)
        except ApiError as error:
            yield sse_event(error_payload(error.status, error.code, error.message, error.param), event="error")
        except Exception:
            log.exception("unexpected error while streaming a response")
            yield sse_event(error_payload(500, "internal_error", "an unexpected error occurred; it has been logged"),
                            event="error")
        yield DONE

    return Response(stream_with_context(frames()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class GenerationStart(BaseModel):
    """The first event: what is continued, by which model, with which seed."""

    event: Literal["start"] = "start"
    model: str
    text: str = Field(description="the text as normalised and read by the model")
    seed: int = Field(description="the seed used")
    text_cache: bool = Field(description="whether the continuous cache over the text is mixed in")


class GenerationWord(GeneratedWord):
    """One generated word, sent as soon as it is sampled (the fields of /v1/generate's `words` items)."""

    event: Literal["word"] = "word"
    index: int = Field(ge=0, description="the word's position in the continuation")


class GenerationEnd(BaseModel):
    """The last event before [DONE]."""

    event: Literal["end"] = "end"
    stopped: Literal["words", "newline", "no_words"]
    continuation: str = Field(description="the generated text, to append to the start event's `text`")


class GenerateEvent(RootModel):
    """One event of `/v1/generate` with `"stream": true`: start, then a word event per word, then end."""

    root: Annotated[GenerationStart | GenerationWord | GenerationEnd, Field(discriminator="event")]


def generation_events(model: LoadedModel, text: str, settings: GenerationSettings, seed: int | None = None,
                      text_cache: bool | None = None) -> Iterator[BaseModel]:
    """`/v1/generate`'s events: the same words as the non-streamed answer for the same seed."""
    generation = new_generation(model.predictor, text, settings, seed=seed, text_cache=text_cache)
    yield GenerationStart(model=model.name, text=generation.text, seed=generation.seed, text_cache=generation.text_cache)
    for index, word in enumerate(generate_words(model.predictor, generation)):
        note_generated_words(1)
        yield GenerationWord(index=index, **generated_word(word).model_dump())
    yield GenerationEnd(stopped=generation.stopped, continuation=generation.continuation)


def stream_generation(model: LoadedModel, text: str, settings: GenerationSettings, seed: int | None = None,
                      text_cache: bool | None = None) -> Response:
    """`/v1/generate` with `"stream": true`: each word as a server-sent event as soon as it is sampled."""
    return sse_response(generation_events(model, text, settings, seed, text_cache))
