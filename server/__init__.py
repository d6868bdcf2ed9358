"""Reach's HTTP service: next-word predictions with gradient reach, over Flask."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask

from server.settings import DEFAULTS

def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app; models are loaded here, once. Environment: REACH_MODELS="name=dir,...", REACH_THREADS."""
    from server.errors import register_error_handlers
    from server.registry import ModelRegistry, parse_model_specs
    from server.routes import api, page

    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    if os.environ.get("REACH_MODELS"):
        app.config["REACH_MODELS"] = parse_model_specs(os.environ["REACH_MODELS"])
    if os.environ.get("REACH_THREADS"):
        app.config["REACH_THREADS"] = int(os.environ["REACH_THREADS"])
    app.config.from_mapping(config or {})
    if app.config["REACH_THREADS"]:
        import torch

        torch.set_num_threads(int(app.config["REACH_THREADS"]))
    models = ModelRegistry()
    for name, directory in app.config["REACH_MODELS"].items():
        models.load(name, directory, cache_size=app.config["REACH_CACHE_SIZE"])
    app.extensions["reach"] = models
    register_error_handlers(app)
    app.register_blueprint(api)
    app.register_blueprint(page)
    logging.getLogger(__name__).info("serving %d model(s): %s", len(models.models), ", ".join(models.models))
    return app
