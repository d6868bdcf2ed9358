"""The BPTT lab: cells, truncation lengths and clipping, each trained under one wall-clock budget, and a report.

Runs (all seeded, all under the same budget):
- cells: rnn_tanh, rnn_relu, lstm and gru at (nearly) equal parameter count;
- truncation: k2 in `k2s` for the LSTM and the tanh RNN (k1 = k2);
- clipping: off, by global norm, by value, for the tanh RNN.
A run shared by two groups (the tanh RNN at the default k2 with norm
clipping) is trained once.

For every run the report shows what was measured in that run: validation
curves; the gradient norm before clipping (distribution and time series),
the clip rate and the non-finite steps that were skipped (exploding
gradients); the reach profile and reach figures from gradient attribution
and the norm of the recurrence's Jacobian by distance (vanishing gradients);
held-out bits per character, per-word perplexity and next-word accuracy.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from corpora import Corpus, Split
from lm.cells import cell_names
from lm.checkpoint import load_checkpoint
from lm.config import ModelConfig, TokenizerConfig, TrainConfig
from lm.infer.accuracy import checkpoint_accuracy
from lm.infer.predictor import Predictor
from lm.model import RNNLanguageModel, count_parameters
from lm.reports.jacobian import hidden_jacobian_norms
from lm.reports.lab_report import write_report
from lm.reports.plots import read_metrics
from lm.reports.reach_profile import reach_profile
from lm.train.run import seed_everything, train_run
from lm.train.tokens import token_cache_directory, cached_tokenizer, load_streamed_corpus

__all__ = ["LabRun", "LabSettings", "hidden_for_parameters", "lab_parameters", "lab_record", "plan_runs", "run_lab", "shorten",
           "train_lab_run"]

log = logging.getLogger(__name__)
CELLS = cell_names()  # every registered cell
CLIPPING = ("off", "norm", "value")


@dataclass(frozen=True)
class LabSettings:
    """Sizes and budgets of a lab."""

    minutes: float = 3.0
    seed: int = 1234
    tokenizer: str = "char"
    vocab_size: int = 2000
    embed_dim: int = 64
    num_layers: int = 1
    parameters: int = 400_000  # the LSTM-sized budget every cell is matched to
    batch_size: int = 32
    default_k2: int = 32
    k2s: tuple[int, ...] = (8, 32, 128)
    cells: tuple[str, ...] = CELLS
    # The classic pair: truncation lengths are swept for a gated cell and a vanilla RNN, clipping for the vanilla RNN.
    truncation_cells: tuple[str, ...] = ("lstm", "rnn_tanh")
    clipping_cell: str = "rnn_tanh"
    clipping: tuple[str, ...] = CLIPPING
    clip_norm: float = 1.0
    clip_value: float = 0.1
    lr: float = 3e-3
    samples: int = 30  # reach-profile contexts per run
    context_chars: int = 1500
    accuracy_positions: int = 300
    heldout_chars: int | None = None  # score only the first N characters of valid and test (quick mode)
    eval_interval: int = 100  # validation every N updates, for the curves
    eval_chars: int = 20_000  # characters of the validation split scored for the curves
    quick: bool = False
    device: str = "cpu"  # where runs train (as train.py --device); the measurements read the checkpoints on the CPU

    @classmethod
    def quick_mode(cls, **overrides) -> "LabSettings":
        """Tiny models and a few seconds per run: the whole lab in under a minute."""
        base = dict(minutes=0.05, embed_dim=16, parameters=12_000, batch_size=16, samples=3, context_chars=200,
                    accuracy_positions=20, heldout_chars=8_000, eval_interval=25, eval_chars=3_000, quick=True)
        base.update(overrides)
        return cls(**base)


@dataclass(frozen=True)
class LabRun:
    """One training run of the lab and the groups it belongs to."""

    name: str
    cell: str
    hidden_dim: int
    bptt: int
    clipping: str
    groups: tuple[str, ...]


def lab_parameters(cell: str, hidden: int, vocab: int, settings: LabSettings) -> int:
    """Parameters of a lab model of this cell and hidden size (counted on the meta device: nothing allocated)."""
    config = ModelConfig(cell=cell, vocab_size=vocab, embed_dim=settings.embed_dim, hidden_dim=hidden,
                         num_layers=settings.num_layers, tie_weights=True)
    with torch.device("meta"):
        return count_parameters(RNNLanguageModel(config))


def hidden_for_parameters(cell: str, vocab: int, settings: LabSettings) -> int:
    """The hidden size whose model has the parameter count closest to `settings.parameters`."""
    best, best_gap = 1, math.inf
    low, high = 1, 4096
    while low <= high:  # parameters grow with the hidden size: bisect, then check the neighbours
        middle = (low + high) // 2
        if lab_parameters(cell, middle, vocab, settings) < settings.parameters:
            low = middle + 1
        else:
            high = middle - 1
    for hidden in (low - 1, low, low + 1):
        if hidden >= 1:
            gap = abs(lab_parameters(cell, hidden, vocab, settings) - settings.parameters)
            if gap < best_gap:
                best, best_gap = hidden, gap
    return best


def plan_runs(settings: LabSettings, vocab: int) -> list[LabRun]:
    """The runs of the three experiments, each trained once even when two experiments share it."""
    runs: dict[tuple, LabRun] = {}

    def add(cell: str, bptt: int, clipping: str, group: str) -> None:
        key = (cell, bptt, clipping)
        if key in runs:
            runs[key] = replace(runs[key], groups=runs[key].groups + (group,))
            return
        hidden = hidden_for_parameters(cell, vocab, settings)
        runs[key] = LabRun(f"{cell}-k{bptt}-clip-{clipping}", cell, hidden, bptt, clipping, (group,))

    for cell in settings.cells:
        add(cell, settings.default_k2, "norm", "cells")
    for cell in settings.truncation_cells:
        if cell in settings.cells:
            for k2 in settings.k2s:
                add(cell, k2, "norm", "truncation")
    if settings.clipping_cell in settings.cells:
        for clipping in settings.clipping:
            add(settings.clipping_cell, settings.default_k2, clipping, "clipping")
    return list(runs.values())


def shorten(split: Split, chars: int | None) -> Split:
    if chars is None or len(split.text) <= chars:
        return split
    cut = split.text.rfind("\n", 0, chars) + 1 or chars
    share = len(split.text[:cut].split()) / max(len(split.text.split()), 1)
    return Split(split.text[:cut], max(1, round(split.raw_words * share)), split.text[:cut].count("\n"))


def _tokenizer_config(settings: LabSettings) -> TokenizerConfig:
    return TokenizerConfig(tokenizer=settings.tokenizer, vocab_size=settings.vocab_size)


def train_lab_run(run: LabRun, settings: LabSettings, corpus: Corpus, out: Path) -> tuple[dict, Predictor]:
    """Train one run under the lab's budget; its training figures (gradient telemetry, curves, held-out figures)
    and a predictor on its best checkpoint."""
    tokenizer_config = _tokenizer_config(settings)
    model_config = ModelConfig(cell=run.cell, embed_dim=settings.embed_dim, hidden_dim=run.hidden_dim, num_layers=settings.num_layers,
                               dropout=0.1 if not settings.quick else 0.0, input_dropout=0.0, weight_dropout=0.0, tie_weights=True)
    train_config = TrainConfig(
        corpus=corpus.name, batch_size=settings.batch_size, bptt=run.bptt, optimizer="adamw", lr=settings.lr,
        schedule="cosine", warmup_steps=20, max_minutes=settings.minutes, eval_interval=settings.eval_interval, seed=settings.seed,
        clip_norm=settings.clip_norm if run.clipping == "norm" else None,
        clip_value=settings.clip_value if run.clipping == "value" else None,
        accuracy_positions=settings.accuracy_positions, eval_max_chars=settings.eval_chars, rollback_ratio=1e9,
        tune_text_cache=False,  # the lab measures the models themselves; tuning a text cache on a character model takes minutes
        device=settings.device,
    )
    seed_everything(settings.seed)
    result = train_run(tokenizer_config, model_config, train_config, out / "runs" / run.name, corpus=corpus,
                       accuracy=checkpoint_accuracy)  # on settings.device, through train_config
    records = read_metrics(out / "runs" / run.name)
    steps = [r for r in records if r["kind"] == "step"]
    checkpoint = load_checkpoint(out / "runs" / run.name)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0)
    norms = [r["grad_norm"] for r in steps]
    finite = [n for n in norms if math.isfinite(n)]
    sample = corpus.test.text[: settings.context_chars]
    jacobian = hidden_jacobian_norms(predictor, sample, probes=4, seed=settings.seed, max_units=min(400, settings.context_chars))
    return {
        "run": asdict(run),
        "parameters": result.parameters,
        "steps": result.state.step,
        "tokens": result.state.tokens,
        "train_seconds": result.state.elapsed,
        "clip_rate": sum(r["clipped"] for r in steps) / max(len(steps), 1),
        "clipped_steps": result.state.clipped_steps,
        "skipped_steps": result.state.skipped_steps,
        "grad_norm": {"median": float(np.median(finite)) if finite else None, "p99": float(np.percentile(finite, 99)) if finite else None,
                      "max": max(finite) if finite else None, "series": norms,
                      "clipped": [r["clipped"] for r in steps]},
        "loss_series": [r["loss"] for r in steps],
        "valid_curve": [{"step": r["step"], "loss": r["loss"], "bpc": r["bpc"]} for r in records if r["kind"] == "eval" and r.get("split") == "valid"],
        "valid": result.valid.as_dict(),
        "test": result.test.as_dict(),
        "accuracy": result.accuracy,
        "jacobian": jacobian,
    }, predictor


def _train(run: LabRun, settings: LabSettings, corpus: Corpus, out: Path) -> dict:
    """A run of the Wikipedia lab: trained, then its reach profile over the test split."""
    figures, predictor = train_lab_run(run, settings, corpus, out)
    profile = reach_profile(predictor, corpus.test.text, samples=settings.samples, seed=settings.seed,
                            context_chars=settings.context_chars, verify=True)
    figures["reach"] = {key: profile[key] for key in ("reach", "by_unit_distance", "by_word_distance", "faithfulness", "samples",
                                                     "context_units", "threshold")}
    return figures


def run_lab(corpus_spec: str, out: Path, settings: LabSettings, corpus: Corpus | None = None) -> Path:
    """Train every run, then write out/report.html, out/lab.json and the PNGs behind them; returns the report path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = corpus or load_streamed_corpus(corpus_spec)  # the training split is streamed into the token cache, never held
    corpus = replace(corpus, valid=shorten(corpus.valid, settings.heldout_chars), test=shorten(corpus.test, settings.heldout_chars))
    # The tokenizer every run will use (trained once on the bounded sample, then found in the token cache).
    vocab = cached_tokenizer(corpus.train, _tokenizer_config(settings), token_cache_directory()).vocab_size
    runs = plan_runs(settings, vocab)
    results = []
    for index, run in enumerate(runs, 1):
        log.info("lab run %d/%d: %s (hidden %d, k2 %d, clipping %s)", index, len(runs), run.name, run.hidden_dim, run.bptt, run.clipping)
        results.append(_train(run, settings, corpus, out))
    lab = lab_record(corpus, settings, results)
    (out / "lab.json").write_text(json.dumps(lab, indent=1, allow_nan=True), encoding="utf-8")
    return write_report(lab, out)


def lab_record(corpus: Corpus, settings: LabSettings, runs: list[dict]) -> dict:
    """What a lab's JSON holds besides its runs' own figures: corpus, settings, versions, machine, time."""
    return {
        "corpus": {"name": corpus.name, "source": corpus.source, "heldout_chars": settings.heldout_chars},
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "versions": {"reach": _version(), "torch": torch.__version__, "python": platform.python_version()},
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": runs,
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("reach")
    except PackageNotFoundError:
        return "unknown"
