"""What each endpoint accepts and answers, declared once: /openapi.json is generated from these declarations.

A blueprint module lists its endpoints as `Operation`s (its request and
response pydantic models, the error statuses it really returns, and whether
it can stream server-sent events) in a function of the configured `Limits`,
since the limits are part of the request models (a `text` longer than
REACH_MAX_TEXT_CHARS is invalid, and the schema says so); server/openapi.py
turns every declared operation into the OpenAPI document. An endpoint not declared here is not
in the document, and tests/test_openapi.py fails on a route without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from flask import current_app
from pydantic import BaseModel

__all__ = ["COMMON_ERRORS", "KEY_ERRORS", "Limits", "Operation", "body_errors", "current_limits"]


@dataclass(frozen=True)
class Limits:
    """The configured bounds a request must keep (server/settings.py; hashable, so models built from them are cached)."""

    max_k: int
    max_text_chars: int
    max_context_units: int
    max_generate_words: int
    max_body: int


@lru_cache(maxsize=64)
def _limits(max_k: int, max_text_chars: int, max_context_units: int, max_generate_words: int, max_body: int) -> Limits:
    return Limits(max_k, max_text_chars, max_context_units, max_generate_words, max_body)


def current_limits() -> Limits:
    """The current app's limits."""
    config = current_app.config
    return _limits(config["REACH_MAX_K"], config["REACH_MAX_TEXT_CHARS"], config["REACH_MAX_CONTEXT_UNITS"],
                   config["REACH_MAX_GENERATE_WORDS"], config["MAX_CONTENT_LENGTH"])

# Statuses every JSON endpoint can answer with, whatever its body.
COMMON_ERRORS = {
    405: "method not allowed",
    500: "unexpected error (logged; no internals returned)",
}

# Statuses of every /v1/* endpoint (server/access.py): the API key, and its rate limit.
KEY_ERRORS = {
    401: "API keys are set (REACH_API_KEYS) and the request sent none ('Authorization: Bearer KEY'), or not one of them",
    429: "this key's rate limit (REACH_RATE_LIMIT) is reached; Retry-After says when to retry",
}


def body_errors(limits: Limits, text_field: str = "text", bad_type: str = "", bad_value: str = "") -> dict[int, str]:
    """The statuses every endpoint with a JSON body answers with (server/validation.py), worded for its fields."""
    return {
        400: "malformed JSON, a value of the wrong JSON type" + (f" ({bad_type})" if bad_type else "")
             + ", an unknown or missing field",
        404: "no served model has that name",
        413: f"a body over {limits.max_body} bytes, or a {text_field} over {limits.max_text_chars} characters",
        415: "the body is not JSON",
        422: "a value out of range" + (f" or {bad_value}" if bad_value else "") + f", or a {text_field} with a control "
             "character",
        **KEY_ERRORS,
        429: "the worker's bound on requests in flight (REACH_MAX_IN_FLIGHT) is reached, or this key's rate limit "
             "(REACH_RATE_LIMIT); Retry-After says when to retry",
        **COMMON_ERRORS,
    }


@dataclass(frozen=True)
class Operation:
    """One endpoint: `request` None for a GET; `response` None for a body that is not JSON (`content_type` says what)."""

    path: str
    method: str  # "get" or "post"
    summary: str
    response: type[BaseModel] | None
    request: type[BaseModel] | None = None
    errors: dict[int, str] = field(default_factory=dict)  # status -> when
    stream_event: type[BaseModel] | None = None  # the model of each server-sent event when the request asks to stream
    content_type: str = "application/json"
    description: str = ""
    tags: tuple[str, ...] = ()
