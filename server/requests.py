"""Request parsing: JSON bodies in, validated dataclasses out, ApiError for anything else.

Text rules (documented in docs/API.md):
- the text may be empty or only whitespace: the first word of a text is predicted;
- "\\r\\n" and "\\r" become "\\n", tabs become spaces;
- any other control character is refused (422, `invalid_text`): models never
  saw them, and they are never what a person typed;
- characters the model never saw are read as unknown units (char models) or
  as UTF-8 bytes (subword models); the response counts them.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from flask import Request

from server.errors import ApiError

__all__ = ["GenerateRequest", "PredictRequest", "parse_generate", "parse_predict"]

ATTRIBUTION_MODES = ("summary", "full", "none")
METHODS = ("saliency", "grad_x_input")
MAX_TEMPERATURE = 100.0  # beyond this every kept word is all but equally likely
_FIELDS = {"text", "k", "model", "attribution", "threshold", "method", "verify", "cache"}
_GENERATE_FIELDS = {"text", "max_words", "temperature", "top_k", "top_p", "seed", "stop_at_newline", "model", "cache"}


@dataclass(frozen=True)
class PredictRequest:
    """A validated /v1/predict request."""

    text: str
    k: int
    model: str | None
    attribution: str
    threshold: float
    method: str
    verify: bool
    cache: bool | None  # the continuous cache over the text: None means on when the model has settings


def _json_object(request: Request, known: set[str] = _FIELDS) -> dict:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the request body as JSON with Content-Type: application/json")
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError(400, "malformed_json", "the request body is not valid JSON")
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_type", "the request body must be a JSON object")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return data


def _typed(data: dict, name: str, kinds: tuple[type, ...], label: str, default=None):
    """The field's value if present and of the right JSON type, else `default`; `"model": null` means the default model."""
    if name not in data or (name == "model" and data[name] is None):
        return default
    value = data[name]
    # bool is an int in Python; JSON true is never a number here.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ApiError(400, "invalid_type", f"'{name}' must be {label}")
    return value


@dataclass(frozen=True)
class GenerateRequest:
    """A validated /v1/generate request."""

    text: str
    max_words: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None
    stop_at_newline: bool
    model: str | None
    cache: bool | None  # the continuous cache over the text: None means on when the model has settings


def _clean_text(text: str, max_chars: int) -> str:
    if len(text) > max_chars:
        raise ApiError(413, "text_too_long", f"'text' has {len(text)} characters; the limit is {max_chars}")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    for position, char in enumerate(text):
        if char != "\n" and unicodedata.category(char) in ("Cc", "Cs"):
            raise ApiError(422, "invalid_text", f"'text' has a control character U+{ord(char):04X} at position {position}")
    return text


def _cache(data: dict) -> bool | None:
    """The `cache` field: true, false, or None when absent (on when the model has settings)."""
    return _typed(data, "cache", (bool,), "true or false")


def parse_predict(request: Request, limits: dict) -> PredictRequest:
    """Validate a /v1/predict body against the configured limits."""
    data = _json_object(request)
    if "text" not in data:
        raise ApiError(400, "missing_field", "'text' is required")
    text = _typed(data, "text", (str,), "a string")
    k = _typed(data, "k", (int,), "an integer", min(5, limits["max_k"]))
    model = _typed(data, "model", (str,), "a string (a served model's name)")
    attribution = _typed(data, "attribution", (str,), "one of " + ", ".join(ATTRIBUTION_MODES), "summary")
    threshold = _typed(data, "threshold", (int, float), "a number", 0.01)
    method = _typed(data, "method", (str,), "one of " + ", ".join(METHODS), "saliency")
    verify = _typed(data, "verify", (bool,), "true or false", False)
    cache = _cache(data)
    if not 1 <= k <= limits["max_k"]:
        raise ApiError(422, "invalid_value", f"'k' must be between 1 and {limits['max_k']}, not {k}")
    if attribution not in ATTRIBUTION_MODES:
        raise ApiError(422, "invalid_value", f"'attribution' must be one of {', '.join(ATTRIBUTION_MODES)}, not {attribution!r}")
    if method not in METHODS:
        raise ApiError(422, "invalid_value", f"'method' must be one of {', '.join(METHODS)}, not {method!r}")
    if not 0 < threshold < 1:
        raise ApiError(422, "invalid_value", f"'threshold' must be between 0 and 1 (exclusive), not {threshold}")
    return PredictRequest(_clean_text(text, limits["max_text_chars"]), k, model, attribution, float(threshold), method, verify,
                          cache)


def parse_generate(request: Request, limits: dict) -> GenerateRequest:
    """Validate a /v1/generate body against the configured limits (the same rules and codes as /v1/predict)."""
    data = _json_object(request, _GENERATE_FIELDS)
    if "text" not in data:
        raise ApiError(400, "missing_field", "'text' is required")
    text = _typed(data, "text", (str,), "a string")
    max_words = _typed(data, "max_words", (int,), "an integer", min(20, limits["max_generate_words"]))
    temperature = _typed(data, "temperature", (int, float), "a number", 1.0)
    top_k = _typed(data, "top_k", (int,), "an integer", min(20, limits["max_k"]))
    top_p = _typed(data, "top_p", (int, float), "a number", 1.0)
    seed = None if data.get("seed") is None else _typed(data, "seed", (int,), "an integer or null")
    stop_at_newline = _typed(data, "stop_at_newline", (bool,), "true or false", False)
    model = _typed(data, "model", (str,), "a string (a served model's name)")
    cache = _cache(data)
    if not 1 <= max_words <= limits["max_generate_words"]:
        raise ApiError(422, "invalid_value", f"'max_words' must be between 1 and {limits['max_generate_words']}, not {max_words}")
    if not 0 < temperature <= MAX_TEMPERATURE:
        raise ApiError(422, "invalid_value", f"'temperature' must be above 0 and at most {MAX_TEMPERATURE}, not {temperature}")
    if not 1 <= top_k <= limits["max_k"]:
        raise ApiError(422, "invalid_value", f"'top_k' must be between 1 and {limits['max_k']}, not {top_k}")
    if not 0 < top_p <= 1:
        raise ApiError(422, "invalid_value", f"'top_p' must be above 0 and at most 1, not {top_p}")
    if seed is not None and not 0 <= seed < 2**63:
        raise ApiError(422, "invalid_value", f"'seed' must be between 0 and 2**63 - 1, not {seed}")
    return GenerateRequest(_clean_text(text, limits["max_text_chars"]), max_words, float(temperature), top_k,
                           float(top_p), seed, stop_at_newline, model, cache)
