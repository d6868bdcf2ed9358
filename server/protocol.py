"""Reach's own HTTP protocol as pydantic models: request bodies, errors, status and model listings.

The answers themselves (predictions, attributions, generations, model cards)
are lm/answers.py's, shared with the CLI. A request model depends on the
configured limits (a `text` longer than REACH_MAX_TEXT_CHARS is invalid, and
the schema says so), so each is built once per `Limits` by a cached factory.

Text rules (docs/API.md): the text may be empty or only whitespace; "\\r\\n"
and "\\r" become "\\n", tabs become spaces; any other control character is
refused (422 `invalid_text`): models never saw them, and they are never what
a person typed. The schema states the same rule as a `pattern`.

Numbers: JSON `true` is never a number here, and a whole-valued float
(`5.0`) is accepted where an integer is asked for, as JSON Schema counts it
an integer.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from lm.answers import Answer, ModelCard
from lm.infer.methods import BASELINES, MAX_RUNGS, MAX_STEPS, get_method, method_names
from server.operations import Limits

__all__ = ["ATTRIBUTION_MODES", "ErrorBody", "ErrorDetail", "MAX_TEMPERATURE", "ModelsResponse", "RequestModel",
           "Status", "Text", "Whole", "WholeNumber", "generate_request_model", "predict_request_model"]

ATTRIBUTION_MODES = ("summary", "full", "none")
MAX_FOIL_CHARS = 40  # a foil is one word (longer ones are spelled unit by unit, and no word is this long)
MAX_TEMPERATURE = 100.0  # beyond this every kept word is all but equally likely
MAX_SEED = 2**63 - 1
# The control characters refused in a text, as a JSON Schema (ECMA-262 and Python) pattern: Unicode categories Cc
# and Cs less line feed, carriage return and tab (those are normalised).
TEXT_PATTERN = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\ud800-\udfff]*$"


def clean_text(text: str) -> str:
    """The text with line breaks and tabs normalised; PydanticCustomError `invalid_text` for a control character."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    for position, char in enumerate(text):
        if char != "\n" and unicodedata.category(char) in ("Cc", "Cs"):
            raise PydanticCustomError("invalid_text", "'{field}' has a control character U+{code} at position {position}",
                                      {"field": "text", "code": f"{ord(char):04X}", "position": position})
    return text


def Text(max_chars: int, description: str = "") -> Any:
    """A request text of at most `max_chars` characters (as sent), normalised by `clean_text`."""
    return Annotated[str, Field(max_length=max_chars, description=description,
                                json_schema_extra={"pattern": TEXT_PATTERN}), AfterValidator(clean_text)]


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer field: strict (no strings, no booleans), with whole-valued floats taken as integers.
WholeNumber = Annotated[int, BeforeValidator(_whole)]


def Whole(minimum: int, maximum: int, description: str = "") -> Any:
    """A bounded integer field. The bounds come before the validator, so that the schema states them as
    minimum/maximum (pydantic cannot push bounds into a WholeNumber's validator: it would emit ge/le)."""
    return Annotated[int, Field(ge=minimum, le=maximum, description=description or None), BeforeValidator(_whole)]


class RequestModel(BaseModel):
    """A request body: no unknown field, no coercion between JSON types."""

    model_config = ConfigDict(extra="forbid", strict=True)


@lru_cache(maxsize=16)
def predict_request_model(limits: Limits) -> type[RequestModel]:
    """/v1/predict's body under `limits`."""

    class PredictRequest(RequestModel):
        """The next words after a text, with their reach."""

        text: Text(limits.max_text_chars, "the text so far; a trailing space asks for the next word, none for completions "
                                          "of the unfinished one")
        k: Whole(1, limits.max_k, "how many words") = min(5, limits.max_k)
        model: str | None = Field(None, description="a served model's name (default: the first)")
        attribution: Literal[ATTRIBUTION_MODES] = Field(
            "summary", description="summary: each word's reach; full: also per-unit and per-word influence and the decay "
                                   "profile; none: predictions only")
        threshold: Annotated[float, Field(gt=0, lt=1)] = Field(0.01, description="threshold reach: influence at least "
                                                                                 "this share of the largest")
        method: Literal[method_names()] = Field(
            "saliency", description="how a unit's influence is measured: "
                                    + "; ".join(f"{name}: {get_method(name).description}" for name in method_names()))
        foil: Text(MAX_FOIL_CHARS, "explain each word against this one: the objective becomes log P(word) - log P(foil) "
                                   "for any method (contrastive attribution); whitespace around it is ignored, and a "
                                   "foil of probability 0 after the text gives no contrast (its logprob is null)") | None = None
        steps: Whole(1, MAX_STEPS, "integrated_gradients: points on the path from the baseline to the input "
                                   "(other methods ignore it)") = 16
        baseline: Literal[BASELINES] = Field("zero", description="integrated_gradients: the baseline input, zero "
                                             "embeddings or the pad unit's (other methods ignore it)")
        rungs: Whole(2, MAX_RUNGS, "occlusion: distances in the ladder, 0 then geometric up to the text's length (other "
                                   "methods ignore it)") = 10
        verify: bool = Field(False, description="also check faithfulness: re-score with the text beyond the 99% mass "
                                                "reach replaced and cut")
        text_cache: bool | None = Field(None, description="mix the continuous cache over the text into the predictions "
                                        "(default: when the model's settings are tuned by prompt length)")
        cache: bool | None = Field(None, deprecated=True, description="the old name of text_cache")

        def wants_text_cache(self) -> bool | None:
            return self.text_cache if self.text_cache is not None else self.__dict__["cache"]  # read without its warning

    return PredictRequest


@lru_cache(maxsize=16)
def generate_request_model(limits: Limits) -> type[RequestModel]:
    """/v1/generate's body under `limits`."""

    class GenerateRequest(RequestModel):
        """Continue a text word by word."""

        text: Text(limits.max_text_chars, "the prompt")
        max_words: Whole(1, limits.max_generate_words, "words to generate") = min(20, limits.max_generate_words)
        temperature: Annotated[float, Field(gt=0, le=MAX_TEMPERATURE)] = Field(1.0, description="sampling weights "
                                                                                              "p ** (1 / temperature)")
        top_k: Whole(1, limits.max_k, "sample among the k most probable words (1: greedy)") = min(20, limits.max_k)
        top_p: Annotated[float, Field(gt=0, le=1)] = Field(1.0, description="then among the most probable reaching "
                                                                            "this share of the weight")
        seed: Whole(0, MAX_SEED) | None = Field(None, description="seed of the sampling (default: a random one, "
                                                                  "returned)")
        stop_at_newline: bool = Field(False, description="stop before a line break")
        model: str | None = Field(None, description="a served model's name (default: the first)")
        text_cache: bool | None = Field(None, description="mix the continuous cache over the text (the prompt and the "
                                        "words generated so far) into every word's distribution (default: off, the "
                                        "model alone: with it a continuation repeats its own words several times as often)")
        cache: bool | None = Field(None, deprecated=True, description="the old name of text_cache")
        stream: bool = Field(False, description="send each word as a server-sent event as soon as it is sampled")

        def wants_text_cache(self) -> bool | None:
            return self.text_cache if self.text_cache is not None else self.__dict__["cache"]  # read without its warning

    return GenerateRequest


class ErrorDetail(Answer):
    code: str = Field(description="stable, for programs: unknown_field, missing_field, invalid_type, invalid_value, "
                                  "invalid_text, text_too_long, body_too_large, malformed_json, unsupported_media_type, "
                                  "unknown_model, not_found, method_not_allowed, not_ready, internal_error, "
                                  "missing_api_key, invalid_api_key, overloaded, rate_limited, metrics_off")
    message: str = Field(description="for people")
    type: str = Field(description="the error's class in OpenAI's terms (invalid_request_error, not_found_error, "
                                  "server_error ...)")
    param: str | None = Field(description="the request field at fault, null when none is")
    request_id: str | None = Field(None, description="the request's X-Request-ID (the one sent, or the one made for it), "
                                                     "as in the response header and the server's log")


class ErrorBody(Answer):
    """Every error: {"error": {"code", "message", "type", "param", "request_id"}}."""

    error: ErrorDetail


class Status(Answer):
    status: str
    models: list[str] | None = None


class ModelEntry(Answer):
    """A served model as OpenAI's model list has it; its card is in the response's `models`."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="when the checkpoint was written, in Unix seconds (0: unknown)")
    owned_by: str = "reach"


class ModelsResponse(Answer):
    """The served models, in the shape of OpenAI's model list (`object`, `data`) and Reach's own (`default`, `models`)."""

    object: Literal["list"] = "list"
    data: list[ModelEntry]
    default: str | None
    models: list[ModelCard]
