"""Configuration keys of the app, their defaults, and reading them from the environment (docs/API.md, docs/DEPLOY.md).

Precedence, lowest first: these defaults, the environment (so that
`gunicorn 'server:create_app()'` is configured without code), the dict
passed to `create_app`. Every value is checked before a model is loaded: a
bad one stops start-up with one line naming it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["DEFAULTS", "DEPRECATED", "ENVIRONMENT", "SettingsError", "check_settings", "default_max_in_flight",
           "read_api_keys", "settings_from_environment", "upgrade_settings", "usable_cores"]

log = logging.getLogger(__name__)

def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_max_in_flight() -> int:
    """Requests in flight per worker by default: 4 per usable core. A worker computes about one request per core at
    a time, so past this a request mostly waits for the ones before it; 4 leaves room for uneven arrivals and for
    the workers' uneven share of connections while keeping the wait of an accepted request short."""
    return 4 * usable_cores()


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
    "REACH_MAX_IN_FLIGHT": default_max_in_flight(),  # requests computing at once per worker; past it 429 at once
    "REACH_RATE_LIMIT": 0,  # requests per minute per API key and worker (0: no limit; needs API keys)
    "REACH_API_KEYS": (),  # keys that /v1/* accepts as "Authorization: Bearer KEY" (none: /v1/* is open)
    "REACH_API_KEYS_FILE": None,  # a file of keys, one a line ("KEY" or "NAME KEY"), added to REACH_API_KEYS
    "REACH_METRICS": True,  # GET /metrics (Prometheus text format)
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
    "REACH_MAX_IN_FLIGHT": ("REACH_MAX_IN_FLIGHT", 1),
    "REACH_RATE_LIMIT": ("REACH_RATE_LIMIT", 0),
}
# Switches: the words an environment variable may say for on and off.
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# The shortest key accepted: a short key is a guessable one.
MIN_KEY_CHARS = 16

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
    if environ.get("REACH_API_KEYS", "").strip():
        found["REACH_API_KEYS"] = tuple(key.strip() for key in environ["REACH_API_KEYS"].split(",") if key.strip())
    if environ.get("REACH_API_KEYS_FILE", "").strip():
        found["REACH_API_KEYS_FILE"] = environ["REACH_API_KEYS_FILE"].strip()
    raw = environ.get("REACH_METRICS", "").strip().lower()
    if raw:
        if raw not in _ON + _OFF:
            raise SettingsError(f"environment variable REACH_METRICS={raw!r} is not one of {', '.join(_ON + _OFF)}")
        found["REACH_METRICS"] = raw in _ON
    return found


def _checked_key(key: str, where: str) -> str:
    if len(key) < MIN_KEY_CHARS or not key.isascii() or not key.isprintable() or any(c.isspace() or c == "," for c in key):
        raise SettingsError(f"{where}: an API key must be at least {MIN_KEY_CHARS} printable ASCII characters without "
                            "spaces or commas (the key itself is not shown)")
    return key


def read_api_keys(config: Mapping[str, Any]) -> dict[str, str]:
    """Every API key configured, name -> key: REACH_API_KEYS (named key-1, key-2, ...) then the lines of
    REACH_API_KEYS_FILE ("KEY", or "NAME KEY"; blank lines and lines starting with # are skipped). The name, never
    the key, is what logs show. Raises SettingsError for an unreadable file, a short key or a name used twice."""
    keys: dict[str, str] = {}
    given = config.get("REACH_API_KEYS") or ()
    if isinstance(given, str):
        given = [part for part in given.split(",") if part.strip()]
    for number, key in enumerate(given, 1):
        keys[f"key-{number}"] = _checked_key(str(key).strip(), f"REACH_API_KEYS entry {number}")
    path = config.get("REACH_API_KEYS_FILE")
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise SettingsError(f"REACH_API_KEYS_FILE {path}: cannot be read ({error.__class__.__name__})") from None
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) > 2:
                raise SettingsError(f"REACH_API_KEYS_FILE {path} line {number}: not 'KEY' or 'NAME KEY'")
            name, key = (parts[0], parts[1]) if len(parts) == 2 else (f"key-{len(keys) + 1}", parts[0])
            if name in keys:
                raise SettingsError(f"REACH_API_KEYS_FILE {path} line {number}: the name {name!r} is used twice")
            keys[name] = _checked_key(key, f"REACH_API_KEYS_FILE {path} line {number}")
    if len(set(keys.values())) < len(keys):
        raise SettingsError("the same API key is given twice")
    return keys


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
    if config.get("REACH_RATE_LIMIT") and not read_api_keys(config):
        raise SettingsError("REACH_RATE_LIMIT limits each API key: set REACH_API_KEYS or REACH_API_KEYS_FILE too")
