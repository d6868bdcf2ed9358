"""Routes: the JSON API blueprint and the web page blueprint."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, current_app, jsonify, request, send_from_directory

from lm.infer.attribution import attribute
from lm.infer.generate import GenerationSettings, generate as generate_text
from server.errors import ApiError
from server.openapi import openapi_document
from server.registry import registry
from server.requests import parse_generate, parse_predict
from server.responses import attribution_body, prediction_body

__all__ = ["api", "page"]

api = Blueprint("api", __name__)
page = Blueprint("page", __name__, static_folder="static", static_url_path="/static")
STATIC = Path(__file__).parent / "static"


def _limits() -> dict:
    config = current_app.config
    return {"max_k": config["REACH_MAX_K"], "max_text_chars": config["REACH_MAX_TEXT_CHARS"],
            "max_context_units": config["REACH_MAX_CONTEXT_UNITS"], "max_generate_words": config["REACH_MAX_GENERATE_WORDS"]}


def _served(name: str | None):
    """The served model named `name` (None: the default one), or a 404 ApiError."""
    model = registry().get(name)
    if model is None:
        known = ", ".join(registry().models) or "none"
        raise ApiError(404, "unknown_model", f"no model named {name!r} is served (served: {known})")
    return model


@api.post("/v1/predict")
def predict():
    """Next words for a text, each with its gradient reach (and, with the continuous cache, its pointer reach)."""
    limits = _limits()
    query = parse_predict(request, limits)
    model = _served(query.model)
    if query.attribution == "none":  # read as attribution reads it: the same units, the same predictions
        result = model.predictor.predict(query.text, k=query.k, text_cache=query.cache, max_units=limits["max_context_units"])
        return jsonify(prediction_body(model.name, model.checkpoint.tokenizer, result))
    result = attribute(model.predictor, query.text, k=query.k, method=query.method, threshold=query.threshold,
                       verify=query.verify, max_units=limits["max_context_units"], text_cache=query.cache)
    return jsonify(attribution_body(model.name, model.checkpoint.tokenizer, result, full=query.attribution == "full"))


@api.post("/v1/generate")
def generate():
    """Continue a text word by word, sampled from the model; each word with its exact probability."""
    query = parse_generate(request, _limits())
    model = _served(query.model)
    settings = GenerationSettings(words=query.max_words, temperature=query.temperature, top_k=query.top_k,
                                  top_p=query.top_p, stop_at_newline=query.stop_at_newline)
    generation = generate_text(model.predictor, query.text, settings, seed=query.seed, text_cache=query.cache)
    return jsonify({"model": model.name, **generation.as_dict()})


@api.get("/v1/models")
def models():
    """Every served model with its card."""
    served = registry()
    return jsonify({"default": served.default, "models": [loaded.card() for loaded in served.models.values()]})


@api.get("/healthz")
def healthz():
    """The process is alive."""
    return jsonify({"status": "ok"})


@api.get("/readyz")
def readyz():
    """Models are loaded and warmed up."""
    served = registry()
    if not served.models:
        raise ApiError(503, "not_ready", "no model is loaded")
    return jsonify({"status": "ready", "models": list(served.models)})


@api.get("/openapi.json")
def openapi():
    """The OpenAPI 3 description of this API."""
    return jsonify(openapi_document(_limits(), current_app.config["MAX_CONTENT_LENGTH"]))


@page.get("/")
def index():
    """The web page: predictions as you type, coloured by influence."""
    return send_from_directory(STATIC, "index.html")
