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
    """A served model: its checkpoint, a predictor shared by all requests, and its card."""

    name: str
    checkpoint: Checkpoint
    predictor: Predictor

    def card(self) -> dict:
        """What a client needs to know about the model, from its config.json."""
        meta = self.checkpoint.meta
        train, model, metrics = meta.get("train", {}), meta.get("model", {}), meta.get("metrics", {})
        test, valid = metrics.get("test", {}), metrics.get("valid", {})
        cache = metrics.get("cache")
        stride = train.get("bptt_stride") or train.get("bptt")
        return {
            "name": self.name,
            "cell": model.get("cell"),
            "layers": model.get("num_layers"),
            "hidden_dim": model.get("hidden_dim"),
            "embed_dim": model.get("embed_dim"),
            "tokenizer": {"kind": meta.get("tokenizer", {}).get("kind"), "vocab_size": meta.get("tokenizer", {}).get("vocab_size")},
            "parameters": meta.get("parameters"),
            "training_tokens": metrics.get("training_tokens"),
            "training_steps": metrics.get("steps"),
            "bptt": {"k1": stride, "k2": train.get("bptt"), "variable": train.get("variable_bptt")},
            "clipping": {"clip_norm": train.get("clip_norm"), "clip_value": train.get("clip_value"),
                         "threshold_used": metrics.get("clip_threshold"), "clipped_steps": metrics.get("clipped_steps"),
                         "skipped_steps": metrics.get("skipped_steps")},
            "corpus": meta.get("corpus", {}).get("name"),
            "heldout": {
                "test": {"bpc": test.get("bpc"), "word_ppl": test.get("word_ppl")},
                "valid": {"bpc": valid.get("bpc"), "word_ppl": valid.get("word_ppl")},
                "next_word_accuracy": metrics.get("accuracy"),
            },
            # The continuous cache predictions mix in (None: the checkpoint has no settings; predictions use the model alone).
            "cache": None if not cache else {
                "window": cache.get("window"), "theta": cache.get("theta"), "weight": cache.get("weight"),
                "chosen": cache.get("chosen"),
                "test": {"bpc": cache.get("test", {}).get("bpc"), "word_ppl": cache.get("test", {}).get("word_ppl")},
                "valid": {"bpc": cache.get("valid", {}).get("bpc"), "word_ppl": cache.get("valid", {}).get("word_ppl")},
            },
            "created": meta.get("created"),
        }


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
