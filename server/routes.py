"""Routes: Reach's JSON API blueprint and the web page blueprint, and what each endpoint declares for /openapi.json.

Bodies are validated by the request models (server/protocol.py) and the
answers are lm/answers.py's models, the same ones the CLI prints.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, send_from_directory
from pydantic import BaseModel

from lm.answers import GenerateResponse, PredictResponse, attribution_answer, generation_answer, model_card, \
    prediction_answer, to_json
from lm.infer.attribution import HOW, attribute
from lm.infer.generate import GenerationSettings, generate as generate_text
from lm.infer.methods import MethodOptions
from server.errors import ApiError
from server.observability import note_generated_words, note_model
from server.operations import COMMON_ERRORS, KEY_ERRORS, Limits, Operation, body_errors, current_limits
from server.protocol import ModelEntry, ModelsResponse, Status, generate_request_model, predict_request_model
from server.registry import LoadedModel, registry
from server.validation import parse_json

__all__ = ["answer_response", "api", "operations", "page", "served_model"]

api = Blueprint("api", __name__)
page = Blueprint("page", __name__, static_folder="static", static_url_path="/static")
STATIC = Path(__file__).parent / "static"
log = logging.getLogger(__name__)

# The fields renamed by the naming pass: old name -> new name (both accepted; the old one answers with a Warning header).
DEPRECATED_FIELDS = {"cache": "text_cache"}


def served_model(name: str | None) -> LoadedModel:
    """The served model named `name` (None: the default one), or a 404 ApiError."""
    model = registry().get(name)
    if model is None:
        known = ", ".join(registry().models) or "none"
        raise ApiError(404, "unknown_model", f"no model named {name!r} is served (served: {known})", param="model")
    note_model(model.name)
    return model


def answer_response(answer: BaseModel, deprecated: list[str] = ()) -> Response:
    """An answer model as the JSON response (lm/answers.py's `to_json`); a Warning header names deprecated fields used."""
    response = Response(to_json(answer), mimetype="application/json")
    if deprecated:
        renamed = "; ".join(f"'{old}' is deprecated, use '{DEPRECATED_FIELDS[old]}'" for old in deprecated)
        response.headers["Warning"] = f'299 reach "{renamed}"'
    return response


def _deprecated(query: BaseModel) -> list[str]:
    return [name for name in DEPRECATED_FIELDS if name in query.model_fields_set]


@api.post("/v1/predict")
def predict():
    """Next words for a text, each with its gradient reach (and, with the text cache, its pointer reach)."""
    limits = current_limits()
    query = parse_json(request, predict_request_model(limits))
    model = served_model(query.model)
    tokenizer = model.checkpoint.tokenizer
    if query.attribution == "none":  # read as attribution reads it: the same units, the same predictions
        result = model.predictor.predict(query.text, k=query.k, text_cache=query.wants_text_cache(),
                                         max_units=limits.max_context_units)
        answer = prediction_answer(model.name, tokenizer, result)
    else:
        attribution = attribute(model.predictor, query.text, k=query.k, method=query.method, threshold=query.threshold,
                                verify=query.verify, max_units=limits.max_context_units,
                                text_cache=query.wants_text_cache(), foil=query.foil,
                                options=MethodOptions(steps=query.steps, baseline=query.baseline, rungs=query.rungs))
        answer = attribution_answer(model.name, tokenizer, attribution, full=query.attribution == "full", how=HOW)
    return answer_response(answer, _deprecated(query))


@api.post("/v1/generate")
def generate():
    """Continue a text word by word, sampled from the model; each word with its exact probability (streamed as
    server-sent events with `"stream": true`)."""
    query = parse_json(request, generate_request_model(current_limits()))
    model = served_model(query.model)
    settings = GenerationSettings(words=query.max_words, temperature=query.temperature, top_k=query.top_k,
                                  top_p=query.top_p, stop_at_newline=query.stop_at_newline)
    if query.stream:
        from server.streaming import stream_generation

        return stream_generation(model, query.text, settings, seed=query.seed, text_cache=query.wants_text_cache())
    generation = generate_text(model.predictor, query.text, settings, seed=query.seed, text_cache=query.wants_text_cache())
    note_generated_words(len(generation.words))
    return answer_response(generation_answer(model.name, generation), _deprecated(query))


def _unix_seconds(created: str | None) -> int:
    """A card's ISO time as Unix seconds (0 when unknown)."""
    try:
        return int(datetime.datetime.fromisoformat(created).timestamp()) if created else 0
    except ValueError:
        return 0


def models_answer() -> ModelsResponse:
    """Every served model: OpenAI's list of model objects, and Reach's cards."""
    served = registry()
    cards = [model_card(name, loaded.checkpoint) for name, loaded in served.models.items()]
    return ModelsResponse(data=[ModelEntry(id=card.name, created=_unix_seconds(card.created)) for card in cards],
                          default=served.default, models=cards)


@api.get("/v1/models")
def models():
    """Every served model with its card."""
    return answer_response(models_answer())


@api.get("/healthz")
def healthz():
    """The process is alive."""
    return answer_response(Status(status="ok"))


@api.get("/readyz")
def readyz():
    """Models are loaded and warmed up."""
    served = registry()
    if not served.models:
        raise ApiError(503, "not_ready", "no model is loaded")
    return answer_response(Status(status="ready", models=list(served.models)))


@api.get("/openapi.json")
def openapi():
    """The OpenAPI description of this API, generated from the request and answer models."""
    from server.openapi import openapi_document

    return jsonify(openapi_document(current_limits()))


@page.get("/")
def index():
    """The web page: predictions as you type, coloured by influence."""
    return send_from_directory(STATIC, "index.html")


def operations(limits: Limits) -> list[Operation]:
    """This module's endpoints for /openapi.json."""
    from server.streaming import GenerateEvent

    errors = body_errors(limits)
    return [
        Operation("/v1/predict", "post", "The next words after a text, each with how far back its influence reaches",
                  PredictResponse, predict_request_model(limits), errors, tags=("reach",)),
        Operation("/v1/generate", "post", "Continue a text word by word, sampled from the model", GenerateResponse,
                  generate_request_model(limits), errors, stream_event=GenerateEvent, tags=("reach",)),
        Operation("/v1/models", "get", "The served models: OpenAI's model list and Reach's cards", ModelsResponse,
                  errors={**KEY_ERRORS, **COMMON_ERRORS}, tags=("models",)),
        Operation("/healthz", "get", "Liveness", Status, errors=COMMON_ERRORS, tags=("operations",)),
        Operation("/readyz", "get", "Readiness: models loaded and warmed up", Status,
                  errors={503: "no model is loaded", **COMMON_ERRORS}, tags=("operations",)),
        Operation("/openapi.json", "get", "This document", None, errors=COMMON_ERRORS, tags=("operations",)),
        Operation("/", "get", "The web page", None, errors={405: "method not allowed"}, content_type="text/html",
                  tags=("page",)),
    ]
