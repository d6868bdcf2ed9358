"""Frozen, validated settings for the tokenizer, the model and training.

Each dataclass owns its defaults (the default preset) and checks itself in
`__post_init__`; `train.py` builds its flags from these fields, so a flag,
a field and a key in `config.json` always share one name. Field metadata
carries the `--help` text.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from lm.cells import cell_names, get_cell

__all__ = ["ATTRIBUTION_METHODS", "TextCacheConfig", "ModelConfig", "TokenizerConfig", "TrainConfig", "PRESETS", "RENAMED_SETTINGS", "apply_preset", "from_dict",
           "upgrade_settings"]

# The attribution methods registered in lm/infer/methods (one module each), named here, at the bottom, so that the
# CLI's choices need no torch; tests/test_methods.py checks that this list and the registry agree.
ATTRIBUTION_METHODS = ("saliency", "grad_x_input", "integrated_gradients", "occlusion")

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("plateau", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class TokenizerConfig:
    """How text becomes units."""

    tokenizer: str = _help("char or subword (SentencePiece)", default="subword")
    vocab_size: int = _help("subword vocabulary size, the line-break unit included", default=4000)
    subword_type: str = _help("SentencePiece model: unigram or bpe", default="unigram")
    char_min_count: int = _help("characters seen fewer times in training map to <unk>", default=3)
    tokenizer_sample_chars: int = _help("train the tokenizer on a seeded sample of about this many characters of whole training lines (all of a smaller split)", default=10_000_000)

    def __post_init__(self) -> None:
        _check(self.tokenizer in ("char", "subword"), f"tokenizer must be char or subword, not {self.tokenizer!r}")
        _check(self.subword_type in ("unigram", "bpe"), f"subword_type must be unigram or bpe, not {self.subword_type!r}")
        _check(64 <= self.vocab_size <= 1_000_000, f"vocab_size must be between 64 and 1000000, not {self.vocab_size}")
        _check(self.char_min_count >= 1, f"char_min_count must be at least 1, not {self.char_min_count}")
        _check(self.tokenizer_sample_chars >= 1000, f"tokenizer_sample_chars must be at least 1000, not {self.tokenizer_sample_chars}")


@dataclass(frozen=True)
class ModelConfig:
    """The network: an embedding, a stack of recurrent layers, a softmax over units."""

    cell: str = _help("recurrent cell: rnn_tanh, rnn_relu, lstm or gru", default="lstm")
    vocab_size: int = _help("number of units (set from the tokenizer)", default=0)
    embed_dim: int = _help("embedding size", default=256)
    hidden_dim: int = _help("hidden size of every recurrent layer", default=512)
    num_layers: int = _help("number of stacked recurrent layers", default=1)
    dropout: float = _help("locked (variational) dropout on each layer's output", default=0.4)
    input_dropout: float = _help("locked dropout on the embeddings fed to the first layer", default=0.3)
    embed_dropout: float = _help("drop whole embedding rows (a unit vanishes everywhere in a batch)", default=0.0)
    weight_dropout: float = _help("DropConnect on hidden-to-hidden weights (AWD-LSTM)", default=0.3)
    tie_weights: bool = _help("share the embedding with the output layer (projecting when sizes differ)", default=True)
    adaptive_cutoffs: tuple[int, ...] = _help("adaptive softmax cluster boundaries, e.g. 2000 8000 (Grave et al. 2017; needs --no-tie-weights); none: full softmax", default=())
    adaptive_div: float = _help("adaptive softmax: each tail cluster's projection is this many times narrower", default=4.0)

    def __post_init__(self) -> None:
        _check(self.cell in cell_names(), f"cell must be one of {', '.join(cell_names())}, not {self.cell!r}")
        _check(self.vocab_size >= 0, "vocab_size must not be negative")
        _check(self.embed_dim >= 1 and self.hidden_dim >= 1, "embed_dim and hidden_dim must be positive")
        _check(1 <= self.num_layers <= 16, f"num_layers must be between 1 and 16, not {self.num_layers}")
        for name in ("dropout", "input_dropout", "embed_dropout", "weight_dropout"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0, f"{name} must be in [0, 1), not {value}")
        cutoffs = tuple(self.adaptive_cutoffs)
        _check(list(cutoffs) == sorted(set(cutoffs)) and all(c > 0 for c in cutoffs), "adaptive_cutoffs must be increasing positive numbers")
        _check(not cutoffs or not self.tie_weights, "an adaptive softmax has no single output matrix to tie: add --no-tie-weights")
        _check(not cutoffs or not self.vocab_size or cutoffs[-1] < self.vocab_size, "adaptive_cutoffs must be below the vocabulary size")
        _check(self.adaptive_div >= 1, "adaptive_div must be at least 1")

    @property
    def state_dim(self) -> int:
        """Width of one layer's carried state: h, or h and c side by side for an LSTM."""
        return get_cell(self.cell).state_width(self.hidden_dim)


@dataclass(frozen=True)
class TrainConfig:
    """Data, truncated BPTT, clipping, optimiser and budget."""

    corpus: str = _help("local directory with train/valid/test.txt, wiki-subset, wikitext-2-raw, wikitext-103-raw or wikipedia:<lang>:<size>", default="wiki-subset")
    extra_train: tuple[str, ...] = _help("directories whose train.txt is appended to the training text", default=())
    batch_size: int = _help("number of parallel streams B", default=32)
    bptt: int = _help("k2: steps gradients flow back through in one update", default=64)
    bptt_stride: int | None = _help("k1: steps between updates (default: equal to bptt, non-overlapping windows)", default=None)
    variable_bptt: bool = _help("randomly vary the window length as AWD-LSTM does (Merity et al. 2017)", default=False)
    optimizer: str = _help("sgd or adamw", default="adamw")
    lr: float = _help("learning rate", default=1e-2)
    weight_decay: float = _help("decoupled weight decay (AdamW) or L2 penalty (SGD)", default=0.01)
    schedule: str = _help("plateau (divide lr by anneal_factor when validation stalls), cosine or constant", default="cosine")
    anneal_factor: float = _help("plateau schedule: divide lr by this on a stall", default=4.0)
    warmup_steps: int = _help("linear learning-rate warm-up steps", default=50)
    clip_norm: float | str | None = _help("clip the global gradient L2 norm at this value; 'auto' to set it from the first steps; 'none' for off", default=0.5)
    clip_value: float | None = _help("clip every gradient element to [-v, v]; off by default", default=None)
    clip_auto_steps: int = _help("with --clip-norm auto: steps whose mean gradient norm becomes the threshold", default=50)
    epochs: float | None = _help("stop after this many passes over the training text", default=None)
    max_steps: int | None = _help("stop after this many updates", default=None)
    max_minutes: float | None = _help("stop after this much wall-clock training time", default=10.0)
    eval_interval: int = _help("evaluate on the validation split every this many updates (and at the end)", default=500)
    eval_max_chars: int | None = _help("score at most this many characters of the validation split during training", default=None)
    checkpoint_minutes: float = _help("also save last/ after at most this many minutes of training since the last save, whatever the eval interval, so a crash loses no more (0: save only at evaluations and at the end)", default=5.0)
    accuracy_positions: int = _help("after training, next-word accuracy on this many seeded test positions (0: skip)", default=500)
    tune_text_cache: bool = _help("after training, tune the text cache (a continuous cache over the text read) on the valid split and store its settings for prediction", default=True)
    rollback_ratio: float = _help("a validation loss this many times the best one (or non-finite) rolls back to the best checkpoint", default=1.5)
    seed: int = _help("random seed for weights, dropout and window lengths", default=1234)
    threads: int | None = _help("torch intra-op threads (default: all cores)", default=None)
    device: str = _help("where to train: auto (the accelerator if there is one, else the CPU), cpu, cuda, cuda:N or mps", default="auto")
    token_cache: str | None = _help("directory of the token cache: encoded splits, cached tokenizers, hub corpora streamed to disk (default: $REACH_TOKEN_CACHE, else ~/.cache/reach/tokens)", default=None)
    precision: str = _help("fp32, or autocast to bf16 or fp16 (fp16 with a gradient scaler) for the forward pass", default="fp32")

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"batch_size must be at least 1, not {self.batch_size}")
        _check(self.bptt >= 1, f"bptt must be at least 1, not {self.bptt}")
        _check(self.bptt_stride is None or 1 <= self.bptt_stride <= self.bptt, f"bptt_stride (k1) must be between 1 and bptt (k2 = {self.bptt}), not {self.bptt_stride}")
        _check(self.optimizer in OPTIMIZERS, f"optimizer must be sgd or adamw, not {self.optimizer!r}")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        _check(self.lr > 0, f"lr must be positive, not {self.lr}")
        _check(self.weight_decay >= 0, "weight_decay must not be negative")
        _check(self.anneal_factor > 1, f"anneal_factor must be above 1, not {self.anneal_factor}")
        _check(self.warmup_steps >= 0, "warmup_steps must not be negative")
        clip = self.clip_norm
        _check(clip is None or clip == "auto" or (isinstance(clip, (int, float)) and clip > 0), f"clip_norm must be a positive number, 'auto' or none, not {clip!r}")
        _check(self.clip_value is None or self.clip_value > 0, f"clip_value must be positive, not {self.clip_value}")
        _check(self.clip_auto_steps >= 1, "clip_auto_steps must be at least 1")
        _check(self.epochs is None or self.epochs > 0, "epochs must be positive")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1")
        _check(self.max_minutes is None or self.max_minutes > 0, "max_minutes must be positive")
        _check(self.eval_interval >= 1, "eval_interval must be at least 1")
        _check(self.checkpoint_minutes >= 0, f"checkpoint_minutes must not be negative, not {self.checkpoint_minutes}")
        _check(self.eval_max_chars is None or self.eval_max_chars >= 1000, "eval_max_chars must be at least 1000")
        _check(self.rollback_ratio > 1, "rollback_ratio must be above 1")
        _check(self.accuracy_positions >= 0, "accuracy_positions must not be negative")
        _check(self.threads is None or self.threads >= 1, "threads must be at least 1")
        # Only the spelling is checked here: a checkpoint trained on a GPU must still load where there is none.
        # Whether the device exists is asked when training starts (lm/train/devices.py: resolve_device).
        name, _, index = self.device.partition(":")
        _check(self.device in DEVICES[:3] + DEVICES[4:] or (name == "cuda" and index.isdigit()),
               f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        _check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")

    @property
    def stride(self) -> int:
        """k1, the number of steps between updates."""
        return self.bptt if self.bptt_stride is None else self.bptt_stride


@dataclass(frozen=True)
class TextCacheConfig:
    """The text cache, a continuous cache over the text read (Grave, Joulin and Usunier 2017): how it looks back and
    how much it is trusted.

    Evaluation (lm/eval/cache.py) tunes and scores it; a checkpoint stores the tuned settings
    (`metrics["text_cache"]`; "cache" in checkpoints written before the naming pass, still read) and prediction
    (lm/infer/textcache.py) applies them to a request's text. Not the prefix cache (the predictor's contexts
    kept between requests) nor the token cache (training's encoded splits).

    How much the text cache is trusted depends on how much text its memory holds. Over a few words its softmax still
    sums to one over a handful of keys, so a fixed weight would copy a short prompt back at the mixture's full
    share; `size_weights` gives the weight by memory size instead, tuned on the valid split read as prompts of
    each length (`tune_size_weights`). Without it (settings stored before length tuning, or given by hand)
    `weight` applies at every size.
    """

    window: int = 4000  # earlier positions (units) the text cache can point to
    theta: float = 4.0  # sharpness of the match between hidden states
    weight: float = 0.5  # lambda: the text cache's share of the mixture tuned on one long stream (every size without size_weights)
    # lambda by the number of keys the memory holds: (keys, weight) anchors in increasing keys, the weight linear in
    # log(keys) between them and held flat beyond the ends; 0 with no key. Empty: `weight` at every size.
    size_weights: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"text cache window must be at least 1 unit, not {self.window}")
        if not self.theta > 0:
            raise ValueError(f"text cache theta must be positive, not {self.theta}")
        if not 0 <= self.weight < 1:
            raise ValueError(f"text cache weight must be in [0, 1), not {self.weight}")
        anchors = tuple((int(keys), float(weight)) for keys, weight in self.size_weights)
        object.__setattr__(self, "size_weights", anchors)  # JSON gives lists: one form, hashable
        for index, (keys, weight) in enumerate(anchors):
            if keys < 1 or (index and keys <= anchors[index - 1][0]):
                raise ValueError(f"text cache size_weights must have increasing key counts of at least 1, not {list(anchors)}")
            if not 0 <= weight < 1:
                raise ValueError(f"text cache size_weights must be in [0, 1), not {weight} at {keys} keys")

    @property
    def length_aware(self) -> bool:
        """Whether the weight depends on how much text the memory holds (settings tuned for prompts of every length)."""
        return bool(self.size_weights)

    def weights(self, keys: np.ndarray) -> np.ndarray:
        """The mixture weight (float64) for rows whose memory holds keys[i] visible keys (0 with none)."""
        keys = np.asarray(keys)
        if not self.size_weights:
            return np.where(keys > 0, self.weight, 0.0)
        sizes, values = zip(*self.size_weights)
        interpolated = np.interp(np.log(np.maximum(keys, 1)), np.log(sizes), values)
        return np.where(keys > 0, interpolated, 0.0)


# Presets override the dataclass defaults above (which are the default
# preset, "base": the best 10-minute configuration the sweep in
# docs/BENCHMARKS.md found). Explicit flags override presets.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {  # seconds; for tests and CI
        "tokenizer": "char", "embed_dim": 32, "hidden_dim": 64, "num_layers": 1, "dropout": 0.0,
        "input_dropout": 0.0, "weight_dropout": 0.0, "batch_size": 16, "bptt": 32, "lr": 1e-2, "warmup_steps": 0,
        "max_minutes": 0.5, "eval_interval": 100, "eval_max_chars": 20_000, "accuracy_positions": 100,
        "tune_text_cache": False,  # tuning the text cache on valid takes minutes on a character model: not for a seconds preset
    },
    "small": {  # about two minutes; the quick start (too short to overfit: lighter dropout)
        "embed_dim": 192, "hidden_dim": 384, "vocab_size": 2000, "dropout": 0.2, "input_dropout": 0.1,
        "weight_dropout": 0.0, "max_minutes": 2.0, "eval_interval": 200,
    },
    "base": {},
}


# Settings renamed by the naming pass of issue 27 ("cache" alone could mean the prefix, text or token cache):
# old name -> new name. A config.json written before it still loads (`from_dict`), and an override given under
# the old name still works, with a warning (`apply_preset`); train.py keeps the old flags as deprecated aliases.
RENAMED_SETTINGS: dict[str, str] = {"tune_cache": "tune_text_cache"}


def upgrade_settings(values: Mapping[str, Any], warn: bool = False) -> dict[str, Any]:
    """`values` with every old setting name (RENAMED_SETTINGS) replaced by its new one; a new name given too wins.

    With `warn`, each old name logs one warning naming the new one (a config.json is read silently: old
    checkpoints are not wrong, only older)."""
    upgraded = dict(values)
    for old, new in RENAMED_SETTINGS.items():
        if old in upgraded:
            value = upgraded.pop(old)
            upgraded.setdefault(new, value)
            if warn:
                log.warning("the setting %s is deprecated; use %s", old, new)
    return upgraded


def apply_preset(name: str, overrides: dict[str, Any]) -> tuple[TokenizerConfig, ModelConfig, TrainConfig]:
    """Build the three configs from a preset and explicit overrides (which win; old setting names are accepted)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[name], **upgrade_settings(overrides, warn=True)}
    configs = []
    for cls in (TokenizerConfig, ModelConfig, TrainConfig):
        names = {f.name for f in fields(cls)}
        if cls is ModelConfig:
            names.discard("vocab_size")  # always the tokenizer's
        configs.append(cls(**{key: value for key, value in values.items() if key in names}))
    unknown = set(values) - {f.name for cls in (TokenizerConfig, ModelConfig, TrainConfig) for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    return configs[0], configs[1], configs[2]


def from_dict(cls: type, payload: dict[str, Any]) -> Any:
    """Rebuild a config from `asdict` output, ignoring unknown keys, reading renamed ones and restoring tuples."""
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in upgrade_settings(payload).items():
        if key in known:
            values[key] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(config).items()}

