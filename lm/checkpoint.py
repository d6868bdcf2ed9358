"""The only code that reads or writes checkpoints.

A checkpoint is a directory:

    config.json            format and version, every setting, corpus, metrics, versions
    model.safetensors      the weights
    tokenizer.json         the tokenizer (and tokenizer.model for SentencePiece)
    training.json          step, stream position, schedule, optimiser groups, RNG (resume only)
    training.safetensors   optimiser tensors, carried hidden state, torch RNG and the GPU's (resume only)

Nothing here executes code on load: tensors come from safetensors and
everything else from JSON. A run directory holds two checkpoints, `best`
(lowest validation loss; the one served) and `last` (for `--resume`), and
`metrics.jsonl`.

Checkpoints are device-independent: every tensor is saved from a CPU copy
and loaded onto the CPU (the server and the predictor are CPU-first); a run
that trains on a GPU moves what it resumes to its device itself.

Writes are atomic: the new checkpoint is written in full to a temporary
directory beside the target and then renamed into place, so a crash at any
moment leaves the previous checkpoint readable.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from lm.config import TextCacheConfig, ModelConfig, TokenizerConfig, TrainConfig, from_dict, to_dict, upgrade_settings
from lm.model import RNNLanguageModel, count_parameters
from lm.tokenizers import Tokenizer, TokenizerError, load_tokenizer

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Resumable",
    "Resumed",
    "FORMAT",
    "FORMAT_VERSION",
    "OLD_SUFFIX",
    "TEXT_CACHE_METRIC",
    "load_checkpoint",
    "read_meta",
    "resolve_checkpoint",
    "restore_training",
    "save_checkpoint",
    "update_metrics",
]

log = logging.getLogger(__name__)

FORMAT = "reach-checkpoint"
FORMAT_VERSION = 1
OLD_SUFFIX = ".old"  # a save moves the previous checkpoint aside to this name until the new one is in place
# The metrics key of the tuned text cache settings. Checkpoints written before the naming pass of issue 27 store
# them as "cache": `read_meta` renames that key on reading (the format is otherwise the same, so its version is
# unchanged), and the next `update_metrics` writes the new name.
TEXT_CACHE_METRIC = "text_cache"
_RENAMED_METRICS = {"cache": TEXT_CACHE_METRIC}


class CheckpointError(Exception):
    """A checkpoint that is missing, damaged or not Reach's; the message is for the user."""


class Resumable(Protocol):
    """What a checkpoint keeps of a training run's progress (lm.train.loop.TrainingState is one)."""

    carried: torch.Tensor | None  # the hidden state carried between windows, (L, B, S)

    def to_json(self) -> dict[str, Any]: ...


class Resumed(NamedTuple):
    """A resumable checkpoint's training progress, as saved: the JSON of `Resumable.to_json`, the carried state
    (on the CPU) and this rank's accelerator RNG state (None when the run did not save one for it)."""

    state: dict[str, Any]
    carried: torch.Tensor | None
    accelerator_rng: torch.Tensor | None = None


@dataclass
class Checkpoint:
    """A loaded checkpoint: a ready model in eval mode, its tokenizer and its metadata."""

    directory: Path
    model: RNNLanguageModel
    tokenizer: Tokenizer
    tokenizer_config: TokenizerConfig
    train_config: TrainConfig
    meta: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        return self.model.config

    @property
    def metrics(self) -> dict[str, Any]:
        return self.meta.get("metrics", {})

    @property
    def text_cache_settings(self) -> TextCacheConfig | None:
        """The text cache tuned at the end of training (`metrics["text_cache"]`, or an older checkpoint's
        `metrics["cache"]`); None for checkpoints without one."""
        stored = self.metrics.get(TEXT_CACHE_METRIC)
        if not stored:
            return None
        try:
            return TextCacheConfig(int(stored["window"]), float(stored["theta"]), float(stored["weight"]),
                               tuple((int(keys), float(weight)) for keys, weight in stored.get("size_weights", ())))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{str(self.directory)!r} has damaged text cache settings ({error})") from error


def _versions() -> dict[str, str]:
    import numpy
    import sentencepiece

    from importlib.metadata import PackageNotFoundError, version

    try:
        reach = version("reach")
    except PackageNotFoundError:
        reach = "unknown"
    return {
        "reach": reach,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentencepiece": sentencepiece.__version__,
        "numpy": numpy.__version__,
    }


def _write_json(path: Path, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False, allow_nan=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _optimizer_payload(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors (for safetensors) and plain values (for JSON)."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, slots in state_dict["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "plain_state": plain}


def _cpu_replica(model: RNNLanguageModel) -> RNNLanguageModel:
    """A copy of `model` on the CPU, in float32, with the same ties (safetensors saves a tied matrix once).

    Built without touching the global RNG, so that saving never changes what
    an exact resume replays.
    """
    with torch.random.fork_rng(devices=[]):
        replica = RNNLanguageModel(model.config)
    replica.load_state_dict({name: tensor.detach().float() for name, tensor in model.state_dict().items()})
    return replica


def save_checkpoint(
    directory: Path,
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    tokenizer_config: TokenizerConfig,
    train_config: TrainConfig,
    *,
    corpus: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: Resumable | None = None,
    rng_states: torch.Tensor | None = None,
    accelerator_rng: torch.Tensor | None = None,
) -> Path:
    """Write a checkpoint to `directory` atomically (replacing any earlier one there), from CPU copies of every tensor.

    `rng_states` (ranks, n): every rank's torch RNG state, from a multi-process run.
    `accelerator_rng` (ranks, m): every rank's GPU RNG state (its dropout masks), when training on a GPU.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tokenizer": {**to_dict(tokenizer_config), **tokenizer.describe()},
            "model": to_dict(model.config),
            "train": to_dict(train_config),
            "parameters": count_parameters(model),
            "corpus": corpus,
            "metrics": metrics or {},
            "versions": _versions(),
            "resumable": optimizer is not None and state is not None,
        }
        save_model(_cpu_replica(model), str(temporary / "model.safetensors"))
        tokenizer.save(temporary)
        if optimizer is not None and state is not None:
            tensors, plain = _optimizer_payload(optimizer)
            tensors["rng.torch"] = torch.get_rng_state()
            if rng_states is not None:
                tensors["rng.torch_ranks"] = rng_states.cpu().contiguous()
            if accelerator_rng is not None:
                tensors["rng.accelerator_ranks"] = accelerator_rng.cpu().contiguous()
            if state.carried is not None:
                tensors["state.carried"] = state.carried.detach().float().cpu().contiguous()
            save_file(tensors, str(temporary / "training.safetensors"))
            _write_json(temporary / "training.json", {"state": state.to_json(), "optimizer": plain})
        _write_json(temporary / "config.json", meta)
        _fsync_tree(temporary)
        _swap_into_place(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return directory


def _swap_into_place(temporary: Path, directory: Path) -> None:
    """Rename `temporary` to `directory`; the old one is moved aside first and removed last."""
    old = directory.with_name(directory.name + OLD_SUFFIX)
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        os.replace(directory, old)
    os.replace(temporary, directory)
    if old.exists():
        shutil.rmtree(old)


def update_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    """Merge `metrics` into a checkpoint's config.json (atomically, by file rename)."""
    directory = resolve_checkpoint(directory)
    meta = read_meta(directory)
    meta["metrics"] = {**meta.get("metrics", {}), **metrics}
    temporary = directory / "config.json.tmp"
    _write_json(temporary, meta)
    os.replace(temporary, directory / "config.json")


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint directory from a checkpoint or a run directory (its `best`, else its `last`)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    old = path.with_name(path.name + OLD_SUFFIX)
    if not path.exists() and (old / "config.json").is_file():
        return old  # a crash between the two renames of a save
    for name in ("best", "last"):
        for candidate in (path / name, path / (name + OLD_SUFFIX)):
            if (candidate / "config.json").is_file():
                return candidate
    if not path.exists():
        raise CheckpointError(f"no model at {str(path)!r}: the directory does not exist")
    raise CheckpointError(f"no Reach checkpoint in {str(path)!r} (expected config.json, or a run directory with best/ or last/)")


def read_meta(directory: Path) -> dict[str, Any]:
    """The validated config.json of a checkpoint directory, with names renamed since it was written read as the new ones."""
    try:
        meta = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{str(directory)!r} has a damaged config.json ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(directory)!r} is not a Reach checkpoint (its config.json has no format {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(directory)!r} is a format {meta.get('format_version')} checkpoint; this Reach reads format {FORMAT_VERSION}"
        )
    if isinstance(meta.get("train"), dict):
        meta["train"] = upgrade_settings(meta["train"])  # "tune_cache" before the naming pass
    metrics = meta.get("metrics")
    if isinstance(metrics, dict):
        for old, new in _RENAMED_METRICS.items():
            if old in metrics:
                value = metrics.pop(old)
                metrics.setdefault(new, value)
    return meta


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Load a checkpoint (or a run directory's best one) for inference, onto the CPU; the model is in eval mode."""
    directory = resolve_checkpoint(path)
    meta = read_meta(directory)
    try:
        tokenizer_config = from_dict(TokenizerConfig, meta["tokenizer"])
        model_config = from_dict(ModelConfig, meta["model"])
        train_config = from_dict(TrainConfig, meta["train"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{str(directory)!r} has settings this Reach cannot read ({error})") from error
    try:
        tokenizer = load_tokenizer(directory)
    except TokenizerError as error:
        raise CheckpointError(str(error)) from error
    if tokenizer.vocab_size != model_config.vocab_size:
        raise CheckpointError(f"{str(directory)!r}: the tokenizer has {tokenizer.vocab_size} units but the model {model_config.vocab_size}")
    model = RNNLanguageModel(model_config)
    try:
        load_model(model, str(directory / "model.safetensors"), strict=True)
    except (OSError, SafetensorError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{str(directory)!r} has damaged or mismatched weights in model.safetensors ({first})") from error
    model.eval()
    return Checkpoint(directory, model, tokenizer, tokenizer_config, train_config, meta)


def restore_training(directory: Path | str, model: RNNLanguageModel, optimizer: torch.optim.Optimizer,
                     rank: int = 0, world_size: int = 1, seed: int = 0) -> Resumed:
    """Load weights, optimiser, RNG and training state from a resumable checkpoint into live objects.

    The model and optimiser may live on any device (the tensors are copied
    onto theirs); the carried state comes back whole, (L, B, S), on the CPU,
    and a rank takes its own rows. The torch (CPU) RNG is restored here; the
    accelerator's RNG state comes back in `Resumed` for the caller, which
    knows the device (a checkpoint without one, such as a CPU run's, gives None).
    Each rank gets back its own RNG state when the number of processes is
    unchanged; otherwise dropout is reseeded per rank (so the continuation
    cannot equal the uninterrupted run's, but the run goes on).
    """
    directory = Path(directory)
    meta = read_meta(directory)
    if not meta.get("resumable"):
        raise CheckpointError(f"{str(directory)!r} holds no training state to resume from")
    try:
        load_model(model, str(directory / "model.safetensors"), strict=True)
        tensors = load_file(str(directory / "training.safetensors"))
        payload = json.loads((directory / "training.json").read_text(encoding="utf-8"))
        plain = payload["optimizer"]
        slots: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                slots.setdefault(int(index), {})[name] = value
        for index, values in plain["plain_state"].items():
            slots.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": slots, "param_groups": plain["param_groups"]})
        step = int(payload["state"]["step"])
        accelerators = tensors.get("rng.accelerator_ranks")
        mine = accelerators[rank].clone() if accelerators is not None and accelerators.size(0) == world_size else None
        state = Resumed(payload["state"], tensors.get("state.carried"), mine)
        generators = tensors.get("rng.torch_ranks")
        if generators is not None and generators.size(0) == world_size:
            torch.set_rng_state(generators[rank].clone())
        elif generators is None and world_size == 1:
            torch.set_rng_state(tensors["rng.torch"])
        else:
            torch.manual_seed(seed + 7919 * (step + 1) + rank)
            log.warning("resuming with %d processes instead of %d: dropout masks are reseeded", world_size,
                        generators.size(0) if generators is not None else 1)
    except (OSError, SafetensorError, RuntimeError, ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot resume from {str(directory)!r}: its training state is damaged or does not match ({first})") from error
    return state
