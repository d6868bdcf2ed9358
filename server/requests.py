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

__all__ = ["PredictRequest", "parse_predict"]

ATTRIBUTION_MODES = ("summary", "full", "none")
METHODS = ("saliency", "grad_x_input")
_FIELDS = {"text", "k", "model", "attribution", "threshold", "method", "verify"}


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


def _json_object(request: Request) -> dict:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the request body as JSON with Content-Type: application/json")
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError(400, "malformed_json", "the request body is not valid JSON")
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_type", "the request body must be a JSON object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
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


def _clean_text(text: str, max_chars: int) -> str:
    if len(text) > max_chars:
        raise ApiError(413, "text_too_long", f"'text' has {len(text)} characters; the limit is {max_chars}")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    for position, char in enumerate(text):
        if char != "\n" and unicodedata.category(char) in ("Cc", "Cs"):
            raise ApiError(422, "invalid_text", f"'text' has a control character U+{ord(char):04X} at position {position}")
    return text


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
    if not 1 <= k <= limits["max_k"]:
        raise ApiError(422, "invalid_value", f"'k' must be between 1 and {limits['max_k']}, not {k}")
    if attribution not in ATTRIBUTION_MODES:
        raise ApiError(422, "invalid_value", f"'attribution' must be one of {', '.join(ATTRIBUTION_MODES)}, not {attribution!r}")
    if method not in METHODS:
        raise ApiError(422, "invalid_value", f"'method' must be one of {', '.join(METHODS)}, not {method!r}")
    if not 0 < threshold < 1:
        raise ApiError(422, "invalid_value", f"'threshold' must be between 0 and 1 (exclusive), not {threshold}")
    return PredictRequest(_clean_text(text, limits["max_text_chars"]), k, model, attribution, float(threshold), method, verify)
