"""Configuration keys of the app and their defaults (documented in docs/API.md)."""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    "REACH_MODELS": {},  # name -> checkpoint or run directory
    "MAX_CONTENT_LENGTH": 64 * 1024,  # bytes of request body
    "REACH_MAX_TEXT_CHARS": 20_000,  # characters of "text"
    "REACH_MAX_K": 20,
    "REACH_MAX_CONTEXT_UNITS": 8_000,  # units read for attribution; beyond this the text is truncated (reported)
    "REACH_CACHE_SIZE": 64,  # prefix-cache entries per model
    "REACH_THREADS": None,  # torch threads per process (default: cores / workers is the operator's choice)
}
