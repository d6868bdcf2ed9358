"""The models a server holds: loaded once by the app factory, reached through `registry()`.

Model directories are fixed at start-up by the operator (`--model NAME=DIR`
or `REACH_MODELS`); a request can only name a loaded model, never a path.
Loading only reads the directory, so it may be a shared read-only mount.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from flask import current_app

from lm.checkpoint import Checkpoint, load_checkpoint
from lm.infer.predictor import DEFAULT_PREFIX_CACHE_BYTES, Predictor

__all__ = ["LoadedModel", "ModelRegistry", "parse_model_specs", "registry"]

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A served model: its checkpoint and a predictor shared by all requests (its card: lm/answers.py's `model_card`)."""

    name: str
    checkpoint: Checkpoint
    predictor: Predictor


class ModelRegistry:
    """Name -> LoadedModel, with a default (the first one)."""

    def __init__(self) -> None:
        self.models: dict[str, LoadedModel] = {}

    def load(self, name: str, directory: str | Path, prefix_cache_size: int = 64,
             prefix_cache_mb: int = DEFAULT_PREFIX_CACHE_BYTES // 2**20) -> LoadedModel:
        """Load the checkpoint in `directory` as `name`; its predictor's prefix cache keeps at most `prefix_cache_size`
        contexts and `prefix_cache_mb` megabytes (REACH_PREFIX_CACHE_SIZE, REACH_PREFIX_CACHE_MB)."""
        checkpoint = load_checkpoint(directory)
        predictor = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=prefix_cache_size,
                              text_cache_settings=checkpoint.text_cache_settings, prefix_cache_bytes=prefix_cache_mb * 2**20)
        predictor.warm_up()  # the lookup tables and the step kernels, before the first request
        loaded = LoadedModel(name, checkpoint, predictor)
        self.models[name] = loaded
        log.info("loaded model %r from %s", name, checkpoint.directory)
        return loaded

    @property
    def default(self) -> str | None:
        return next(iter(self.models), None)

    def get(self, name: str | None) -> LoadedModel | None:
        return self.models.get(name or self.default or "")


def parse_model_specs(specs: list[str] | str) -> dict[str, str]:
    """`NAME=DIR` entries (a bare DIR is named after its directory) -> {name: dir}."""
    if isinstance(specs, str):
        specs = [part for part in specs.replace(";", ",").split(",") if part.strip()]
    models: dict[str, str] = {}
    for spec in specs:
        spec = spec.strip()
        if "=" in spec:
            name, directory = spec.split("=", 1)
        else:
            directory = spec
            path = Path(spec.rstrip("/"))
            name = path.parent.name if path.name in ("best", "last") else path.name
        if not name or not directory:
            raise ValueError(f"model {spec!r} is not NAME=DIR or DIR")
        if name in models:
            raise ValueError(f"two models are named {name!r}")
        models[name] = directory
    return models


def registry() -> ModelRegistry:
    """The current app's models."""
    return current_app.extensions["reach"]
