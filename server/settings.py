"""Configuration keys of the app, their defaults, and reading them from the environment (docs/API.md, docs/DEPLOY.md).

Precedence, lowest first: these defaults, the environment (so that
`gunicorn 'server:create_app()'` is configured without code), the dict
passed to `create_app`. Every value is checked before a model is loaded: a
bad one stops start-up with one line naming it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

__all__ = ["DEFAULTS", "DEPRECATED", "ENVIRONMENT", "SettingsError", "check_settings", "settings_from_environment", "upgrade_settings"]

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "REACH_MODELS": {},  # name -> checkpoint or run directory
    "MAX_CONTENT_LENGTH": 64 * 1024,  # bytes of request body
    "REACH_MAX_TEXT_CHARS": 20_000,  # characters of "text"
    "REACH_MAX_K": 20,
    "REACH_MAX_GENERATE_WORDS": 50,  # largest "max_words" of /v1/generate
    "REACH_MAX_CONTEXT_UNITS": 8_000,  # units of context read in every attribution mode; beyond, the text is cut (reported)
    "REACH_PREFIX_CACHE_SIZE": 64,  # prefix cache entries (contexts read) per model
    "REACH_PREFIX_CACHE_MB": 256,  # prefix cache megabytes per model (a context's text cache memory can be MBs)
    "REACH_THREADS": None,  # torch threads per process (default: cores / workers is the operator's choice)
}

# Integer settings: configuration key -> (environment variable, smallest allowed value).
# Flask's own MAX_CONTENT_LENGTH gets a REACH_ name so that every variable of the service shares one prefix.
ENVIRONMENT: dict[str, tuple[str, int]] = {
    "MAX_CONTENT_LENGTH": ("REACH_MAX_CONTENT_LENGTH", 1),
    "REACH_MAX_TEXT_CHARS": ("REACH_MAX_TEXT_CHARS", 1),
    "REACH_MAX_K": ("REACH_MAX_K", 1),
    "REACH_MAX_GENERATE_WORDS": ("REACH_MAX_GENERATE_WORDS", 1),
    "REACH_MAX_CONTEXT_UNITS": ("REACH_MAX_CONTEXT_UNITS", 1),
    "REACH_PREFIX_CACHE_SIZE": ("REACH_PREFIX_CACHE_SIZE", 0),
    "REACH_PREFIX_CACHE_MB": ("REACH_PREFIX_CACHE_MB", 0),
    "REACH_THREADS": ("REACH_THREADS", 1),
}

# Old names -> new, as environment variables and as keys of the dict given to `create_app` (they are the same):
# "cache" alone could mean the prefix cache, the text cache or the token cache (issue 27). The old names still
# work, each logging one deprecation warning; where both are given the new one wins.
DEPRECATED: dict[str, str] = {
    "REACH_CACHE_SIZE": "REACH_PREFIX_CACHE_SIZE",
    "REACH_CACHE_MB": "REACH_PREFIX_CACHE_MB",
}


class SettingsError(ValueError):
    """A setting that cannot be used; the message is one line naming it."""


def _whole(minimum: int) -> str:
    return f"a whole number of at least {minimum}"


def settings_from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings given as environment variables (an empty variable counts as unset)."""
    from server.registry import parse_model_specs

    environ = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    renamed = {new: old for old, new in DEPRECATED.items() if environ.get(old, "").strip()}
    if environ.get("REACH_MODELS", "").strip():
        try:
            found["REACH_MODELS"] = parse_model_specs(environ["REACH_MODELS"])
        except ValueError as error:
            raise SettingsError(f"environment variable REACH_MODELS: {error}") from None
    for key, (variable, minimum) in ENVIRONMENT.items():
        raw = environ.get(variable, "").strip()
        if key in renamed:
            old = renamed[key]
            log.warning("environment variable %s is deprecated; use %s%s", old, variable,
                        f" (ignored: {variable} is set too)" if raw else "")
            if not raw:
                variable, raw = old, environ[old].strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise SettingsError(f"environment variable {variable}={raw!r} is not {_whole(minimum)}")
        found[key] = value
    return found


def upgrade_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` (the dict given to `create_app`) with each deprecated key (DEPRECATED) under its new name, with a
    warning; where both are given the new one wins."""
    upgraded = dict(config)
    for old, new in DEPRECATED.items():
        if old in upgraded:
            value = upgraded.pop(old)
            log.warning("setting %s is deprecated; use %s%s", old, new, f" (ignored: {new} is set too)" if new in upgraded else "")
            upgraded.setdefault(new, value)
    return upgraded


def check_settings(config: Mapping[str, Any]) -> None:
    """Raise SettingsError unless every integer setting is a whole number in range (REACH_THREADS may be None)."""
    for key, (_, minimum) in ENVIRONMENT.items():
        value = config.get(key)
        if key == "REACH_THREADS" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SettingsError(f"setting {key} must be {_whole(minimum)}, not {value!r}")
