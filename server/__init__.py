"""Reach's HTTP service: next-word predictions with gradient reach, over Flask."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from flask import Flask

from server.settings import DEFAULTS, check_settings, read_api_keys, settings_from_environment, upgrade_settings


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app; models are loaded here, once.

    Settings (server/settings.py): the defaults, then the environment
    (REACH_MODELS="name=dir,...", REACH_THREADS, REACH_MAX_TEXT_CHARS,
    REACH_MAX_K, REACH_MAX_GENERATE_WORDS, REACH_MAX_CONTEXT_UNITS, REACH_PREFIX_CACHE_SIZE,
    REACH_PREFIX_CACHE_MB, REACH_MAX_CONTENT_LENGTH, REACH_MAX_IN_FLIGHT, REACH_RATE_LIMIT, REACH_API_KEYS,
    REACH_API_KEYS_FILE, REACH_METRICS; the old REACH_CACHE_SIZE and REACH_CACHE_MB still work, with a warning), then
    `config`, which wins. A bad value raises SettingsError (a ValueError) with one line naming it, before any model
    is loaded. Every request goes through server/observability.py's hooks (its id, the API key, the rate limit,
    the in-flight bound, the metrics and its access-log line).
    """
    from server.completions import completions
    from server.access import InFlightBound, KeyRing, RateLimiter
    from server.errors import register_error_handlers
    from server.metrics import create_metrics, metrics_blueprint
    from server.observability import install_request_hooks
    from server.registry import ModelRegistry
    from server.routes import api, page

    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping(settings_from_environment(os.environ))
    app.config.from_mapping(upgrade_settings(config or {}))
    check_settings(app.config)
    keys = KeyRing(read_api_keys(app.config))
    _log_to_stderr_when_unconfigured()
    if app.config["REACH_THREADS"]:
        import torch

        torch.set_num_threads(int(app.config["REACH_THREADS"]))
    models = ModelRegistry()
    for name, directory in app.config["REACH_MODELS"].items():
        models.load(name, directory, prefix_cache_size=app.config["REACH_PREFIX_CACHE_SIZE"],
                    prefix_cache_mb=app.config["REACH_PREFIX_CACHE_MB"])
    app.extensions["reach"] = models
    app.extensions["reach_metrics"] = create_metrics(app.config["REACH_METRICS"], models, app.config["REACH_MAX_IN_FLIGHT"])
    register_error_handlers(app)
    install_request_hooks(app, keys, RateLimiter(app.config["REACH_RATE_LIMIT"]), InFlightBound(app.config["REACH_MAX_IN_FLIGHT"]))
    app.register_blueprint(api)
    app.register_blueprint(page)
    app.register_blueprint(completions)
    app.register_blueprint(metrics_blueprint)
    logging.getLogger(__name__).info(
        "serving %d model(s): %s; at most %d model requests in flight; %s; metrics %s", len(models.models),
        ", ".join(models.models), app.config["REACH_MAX_IN_FLIGHT"],
        f"{len(keys)} API key(s) needed for /v1/*" if keys else "no API key needed",
        "at /metrics" if app.config["REACH_METRICS"] else "off")
    return app


def _log_to_stderr_when_unconfigured() -> None:
    """Send the server's log (its access lines included) to stderr at INFO when nothing configured logging (as under
    gunicorn, which sets up only its own loggers); a configured root logger (python -m server, pytest) gets them."""
    logger = logging.getLogger("server")
    if logging.getLogger().handlers or logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
