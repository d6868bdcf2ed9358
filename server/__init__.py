"""Reach's HTTP service: next-word predictions with gradient reach, over Flask."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask

from server.settings import DEFAULTS, check_settings, settings_from_environment, upgrade_settings


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app; models are loaded here, once.

    Settings (server/settings.py): the defaults, then the environment
    (REACH_MODELS="name=dir,...", REACH_THREADS, REACH_MAX_TEXT_CHARS,
    REACH_MAX_K, REACH_MAX_GENERATE_WORDS, REACH_MAX_CONTEXT_UNITS, REACH_PREFIX_CACHE_SIZE,
    REACH_PREFIX_CACHE_MB, REACH_MAX_CONTENT_LENGTH; the old REACH_CACHE_SIZE and REACH_CACHE_MB still work, with
    a warning), then `config`, which wins. A bad value raises
    SettingsError (a ValueError) with one line naming it, before any model
    is loaded.
    """
    from server.completions import completions
    from server.errors import register_error_handlers
    from server.registry import ModelRegistry
    from server.routes import api, page

    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping(settings_from_environment(os.environ))
    app.config.from_mapping(upgrade_settings(config or {}))
    check_settings(app.config)
    if app.config["REACH_THREADS"]:
        import torch

        torch.set_num_threads(int(app.config["REACH_THREADS"]))
    models = ModelRegistry()
    for name, directory in app.config["REACH_MODELS"].items():
        models.load(name, directory, prefix_cache_size=app.config["REACH_PREFIX_CACHE_SIZE"],
                    prefix_cache_mb=app.config["REACH_PREFIX_CACHE_MB"])
    app.extensions["reach"] = models
    register_error_handlers(app)
    app.register_blueprint(api)
    app.register_blueprint(page)
    app.register_blueprint(completions)
    logging.getLogger(__name__).info("serving %d model(s): %s", len(models.models), ", ".join(models.models))
    return app
