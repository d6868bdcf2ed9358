"""Request bodies in, pydantic models out: every validation error becomes one ApiError with a stable code.

The request models (server/protocol.py, server/openai_protocol.py) say what
a valid body is; the same models give /openapi.json its schemas, so the
schema and the server judge a body alike. This module only maps pydantic's
error kinds onto the API's codes and statuses:

- not JSON (415 `unsupported_media_type`), malformed JSON (400 `malformed_json`),
  not an object (400 `invalid_type`);
- an unknown field (400 `unknown_field`), a missing one (400 `missing_field`),
  a value of the wrong JSON type (400 `invalid_type`);
- a text over the character limit (413 `text_too_long`), a control character
  in it (422 `invalid_text`), any other value out of range (422 `invalid_value`).

When a body has several faults, the first in that order is reported.
"""

from __future__ import annotations

from typing import TypeVar

from flask import Request
from pydantic import BaseModel, ValidationError

from server.errors import ApiError

__all__ = ["TEXT_FIELDS", "parse_json", "validation_error"]

Model = TypeVar("Model", bound=BaseModel)

# Fields whose length limit is the text limit (413, not 422).
TEXT_FIELDS = ("text", "prompt")
# pydantic's error kinds that mean "a value of the wrong JSON type".
_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "string_type", "list_type", "dict_type", "model_type",
                "int_from_float", "none_required", "is_instance_of", "union_tag_invalid", "string_unicode"}
_BOUNDS = {"greater_than": "above", "greater_than_equal": "at least", "less_than": "below", "less_than_equal": "at most"}


def _field(loc: tuple) -> str:
    """'text', or 'prompt[2]' for an item of a list field (pydantic's own union branch names left out)."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif not name:
            name = str(part)
        elif part in ("str", "list[str]", "int", "float", "bool", "none") or "[" in str(part) or part.startswith(("constrained-", "function-")):
            continue
        else:
            name += f".{part}"
    return name


def _rank(error: dict) -> int:
    kind = error["type"]
    if kind == "extra_forbidden":
        return 0
    if kind == "missing":
        return 1
    if kind in _TYPE_ERRORS or (kind == "literal_error" and not isinstance(error.get("input"), str)):
        return 2
    if kind == "string_too_long" and _field(error["loc"]).split("[")[0] in TEXT_FIELDS:
        return 3
    if kind == "invalid_text":
        return 4
    return 5


def validation_error(error: ValidationError, model: type[BaseModel]) -> ApiError:
    """The ApiError for pydantic's verdict on a body for `model` (the first fault in the module docstring's order)."""
    errors = error.errors(include_url=False)
    unknown = sorted(_field(item["loc"]) for item in errors if item["type"] == "extra_forbidden")
    if unknown:
        known = ", ".join(sorted(model.model_fields))
        return ApiError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}; known: {known}", param=unknown[0])
    first = min(errors, key=_rank)
    rank, name, kind = _rank(first), _field(first["loc"]), first["type"]
    if rank == 1:
        return ApiError(400, "missing_field", f"'{name}' is required", param=name)
    if rank == 2:
        expected = first["msg"].removeprefix("Input should be ").removeprefix("input should be ")
        return ApiError(400, "invalid_type", f"'{name}' must be {expected}", param=name)
    if rank == 3:
        limit = first["ctx"]["max_length"]
        return ApiError(413, "text_too_long", f"'{name}' has {len(first['input'])} characters; the limit is {limit}",
                        param=name)
    if rank == 4:
        return ApiError(422, "invalid_text", first["msg"], param=name)
    if kind in _BOUNDS:
        bound = next(iter(first["ctx"].values()))
        return ApiError(422, "invalid_value", f"'{name}' must be {_BOUNDS[kind]} {bound}, not {first['input']!r}", param=name)
    if kind == "literal_error":
        expected = first["msg"].removeprefix("Input should be ")
        return ApiError(422, "invalid_value", f"'{name}' must be {expected}, not {first['input']!r}", param=name)
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(422, "invalid_value", f"'{name}': {message[0].lower() + message[1:] if message else 'invalid'}"
                    f" (not {first['input']!r})", param=name)


def parse_json(request: Request, model: type[Model]) -> Model:
    """The request's JSON body validated by `model`, or an ApiError (see the module docstring)."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the request body as JSON with Content-Type: application/json")
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError(400, "malformed_json", "the request body is not valid JSON")
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_type", "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise validation_error(error, model) from None
