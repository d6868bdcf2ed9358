"""One training run from settings to checkpoints: corpus, tokenizer, model, `fit`, held-out figures.

`train.py`, the benchmarks and the lab call `train_run`; the entry points
set seeds and threads first (`seed_everything`, `set_threads`). Training
never predicts words: the next-word accuracy of the finished run is
measured by a function its caller passes in (`lm.infer.accuracy.checkpoint_accuracy`).
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy
import torch

from corpora import Corpus
from lm.checkpoint import (TEXT_CACHE_METRIC, Checkpoint, CheckpointError, load_checkpoint, read_meta, resolve_checkpoint,
                           restore_training, save_checkpoint, update_metrics)
from lm.config import TextCacheConfig, ModelConfig, TokenizerConfig, TrainConfig, from_dict
from lm.train.devices import accelerator_rng_state, set_accelerator_rng_state, training_device
from lm.train.distributed import Distributed
from lm.eval.cache import score_stream, tune_size_weights, tune_text_cache_on_stream
from lm.eval.figures import HOW_STATE_FLOWS, EvalResult, evaluate_text
from lm.model import RNNLanguageModel, count_parameters
from lm.tokenizers import Tokenizer, load_tokenizer
from lm.train.loop import Hooks, MetricsLog, TrainingState, batchify, build_optimizer, fit
from lm.train.run_directory import clear_run
from lm.train.tokens import TokenIds, token_cache_directory, cached_tokenizer, corpus_fingerprint, load_streamed_corpus, token_ids

__all__ = ["RunResult", "resume_configs", "seed_everything", "set_threads", "train_run", "tune_text_cache", "BUDGET_FIELDS"]

log = logging.getLogger(__name__)

# Settings that `--resume` may change; everything else comes from the checkpoint.
# The device is one of them: where a run continues changes its speed, not what it learns (a run trained on a GPU
# may go on on the CPU); its precision is not, since it changes the arithmetic.
# So is the token cache's directory: where the encoded corpus is kept changes nothing of what is read from it.
# How often last/ is saved on the clock changes only what a crash would lose.
BUDGET_FIELDS = ("max_steps", "max_minutes", "epochs", "eval_interval", "checkpoint_minutes", "threads", "accuracy_positions",
                 "device", "token_cache")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    numpy.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> int:
    """Use `threads` intra-op threads (default: every core) and flush denormals; returns the count."""
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    # Denormal floats are slow on x86 CPUs and useless to a language model.
    torch.set_flush_denormal(True)
    return count


@dataclass
class RunResult:
    """What a run produced."""

    out: Path
    state: TrainingState
    valid: EvalResult
    test: EvalResult
    parameters: int
    seconds: float
    stopped_early: bool
    model_config: ModelConfig
    accuracy: dict | None = None


def _corpus_info(corpus: Corpus, train: TokenIds) -> dict[str, Any]:
    return {
        "name": corpus.name,
        "source": corpus.source,
        "extra_train": list(corpus.extra_train),
        "train_chars": train.chars,
        "train_units": int(train.ids.size),
        "valid_words": corpus.valid.raw_words,
        "test_words": corpus.test.raw_words,
    }


def resume_configs(out: Path, budget: dict[str, Any]) -> tuple[TokenizerConfig, ModelConfig, TrainConfig]:
    """The settings a resumed run continues with: its checkpoint's, with the `budget` ones (BUDGET_FIELDS) replaced."""
    if not out.is_dir():
        raise CheckpointError(f"cannot resume: {str(out)!r} does not exist")
    meta = read_meta(resolve_checkpoint(out / "last"))
    train_config = from_dict(TrainConfig, meta["train"])
    train_config = replace(train_config, **{k: v for k, v in budget.items() if k in BUDGET_FIELDS})
    return from_dict(TokenizerConfig, meta["tokenizer"]), from_dict(ModelConfig, meta["model"]), train_config


def train_run(
    tokenizer_config: TokenizerConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[float, dict], None] | None = None,
    corpus: Corpus | None = None,
    distributed: Distributed | None = None,
    budget: dict[str, Any] | None = None,
    accuracy: Callable[[Checkpoint, str, int], dict] | None = None,
) -> RunResult | None:
    """Train (or resume) a run in `out`, then score the best checkpoint on valid and test.

    A new run (not `resume`) first deletes what a previous run left in `out`
    (best/, last/, metrics.jsonl: lm/train/run_directory.py), so that nothing
    of it is served, scored or restored; `train.py` refuses such a directory
    unless given --overwrite.

    When resuming, the settings come from the checkpoint, except the
    `budget` ones given (see BUDGET_FIELDS). Under torchrun (`distributed`
    with several ranks) every rank trains its share of the streams; rank 0
    writes and scores, and gets the RunResult (the other ranks get None).

    `accuracy(best checkpoint, test text, positions)` measures next-word
    accuracy after training when `accuracy_positions` asks for it (None: skipped).

    The training split is encoded once into the token cache
    (lm/train/tokens.py; `train_config.token_cache`) and read from there as
    a memory map; a corpus loaded here has its training split streamed from
    disk (a local corpus's files; a hub corpus written once under the token
    cache's `corpora/`), so its training text is never held as one string.

    The device is `train_config.device` (a resumed run's own unless `budget`
    changes it), resolved here once (lm/train/devices.py: `training_device`;
    "auto" is the accelerator torch finds, else the CPU). It holds the model,
    the optimiser, the whole batchified training text (on the CPU: a view of
    the memory map), the carried state and the evaluations; the checkpoints
    are written from CPU copies, and the accuracy is measured with the CPU
    engine.
    """
    begun = time.perf_counter()
    out = Path(out)
    ranks = distributed or Distributed()
    if resume:
        tokenizer_config, model_config, train_config = resume_configs(out, budget or {})
    # The one place a run's device is resolved, before anything is deleted: a device this machine lacks stops here.
    device = training_device(train_config.device)
    if not resume and ranks.is_main and (removed := clear_run(out)):
        log.info("starting a new run in %s: deleted the previous run's %s", out, ", ".join(removed))
    corpus = corpus or load_streamed_corpus(train_config.corpus, train_config.extra_train, train_config.token_cache)
    token_cache = token_cache_directory(train_config.token_cache)
    fingerprint = corpus_fingerprint(corpus.train, token_cache)  # once: it keys both the cached tokenizer and the cached ids
    tokenizer = _tokenizer(out, resume, tokenizer_config, corpus, ranks, token_cache, fingerprint)
    model_config = replace(model_config, vocab_size=tokenizer.vocab_size)
    train = _train_ids(corpus, tokenizer, ranks, token_cache, fingerprint)
    train_ids = torch.from_numpy(train.ids)  # (N,) uint16 or uint32, sharing the memory map
    data = batchify(train_ids, train_config.batch_size)[ranks.rows(train_config.batch_size)]  # (B / ranks, N): a view
    if device.type != "cpu":
        # The rank's rows go to the device once, for the whole run: a window is then a view (no copy, no transfer
        # to wait for at every update), at 8 bytes per unit of device memory. On the CPU the data stays a view of
        # the memory map and each window becomes int64 as it is read (lm/train/loop.py: iterate_windows).
        data = data.to(device, torch.long)
    model = RNNLanguageModel(model_config).to(device)  # built on the CPU: the same initial weights on every device
    optimizer = build_optimizer(model, train_config)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    if resume:
        state = _restore(resolve_checkpoint(out / "last"), model, optimizer, ranks, train_config, device)
        if ranks.is_main:
            MetricsLog.truncate_after(metrics_path, state.step)
        log.info("resuming %s at step %d (epoch %d, position %d)", out, state.step, state.epoch, state.position)
    else:
        state = TrainingState()  # the previous run's metrics.jsonl is gone (clear_run above)
        if ranks.enabled:
            torch.manual_seed(train_config.seed + ranks.rank)  # each rank's rows get their own dropout masks
    state.world_size = ranks.world_size
    trained = model
    if ranks.enabled:
        # Averages gradients across ranks in backward; on CUDA each rank's model lives on its own GPU.
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    corpus_info = _corpus_info(corpus, train)
    # The held-out splits' ids, from the token cache too (encoded there once), read when first scored (after the
    # first step): every evaluation then reads them.
    heldout = _HeldOut(corpus, tokenizer, token_cache)
    latest: dict[str, Any] = {}

    def evaluate() -> EvalResult:
        figures = [0.0] * 5
        if ranks.is_main:
            result = evaluate_text(model, tokenizer, corpus.valid.text, corpus.valid.raw_words, train_config.eval_max_chars,
                                   ids=heldout["valid"])
            figures = [result.nll, result.units, result.chars, result.words, float(result.words_estimated)]
        nll, units, chars, words, estimated = ranks.broadcast_floats(figures)
        result = EvalResult(nll=nll, units=int(units), chars=int(chars), words=words, words_estimated=bool(estimated))
        latest["valid"] = result.as_dict()
        return result

    def save(name: str) -> None:
        whole = replace(state, carried=ranks.gather_rows(state.carried) if state.carried is not None else None)
        generators = ranks.gather_stack(torch.get_rng_state())
        accelerator = accelerator_rng_state(device)  # None on every rank, or a state on every rank
        accelerators = ranks.gather_stack(accelerator) if accelerator is not None else None
        if ranks.is_main:
            summary = {
                **latest, "steps": state.step, "epochs": state.epoch, "training_tokens": state.tokens,
                "training_seconds": state.elapsed, "clip_threshold": state.clip_threshold,
                "clipped_steps": state.clipped_steps, "skipped_steps": state.skipped_steps, "rollbacks": state.rollbacks,
            }
            save_checkpoint(out / name, model, tokenizer, tokenizer_config, train_config, corpus=corpus_info,
                            metrics=summary, optimizer=optimizer, state=whole, rng_states=generators,
                            accelerator_rng=accelerators)
        ranks.barrier()

    def restore_best() -> bool:
        try:
            best = resolve_checkpoint(out / "best")
        except CheckpointError:
            return False
        restored = _restore(best, model, optimizer, ranks, train_config, device)
        for key, value in restored.__dict__.items():
            setattr(state, key, value)
        return True

    metrics = MetricsLog(metrics_path) if ranks.is_main else MetricsLog(None)
    if not resume:
        metrics.write({"kind": "run", "step": 0, "parameters": count_parameters(model), "tokenizer": tokenizer.describe(),
                       "train_units": train_ids.numel(), "token_cache": {"path": str(train.path), "reused": train.reused,
                                                                         "seconds": round(train.seconds, 3)},
                       "seconds_before_training": round(time.perf_counter() - begun, 3),
                       # The process's CPU time since it started (imports included): what a start costs, whatever the load.
                       "cpu_seconds_before_training": round(time.process_time(), 3),
                       "batch_size": train_config.batch_size, "processes": ranks.world_size,
                       "device": str(device), "precision": train_config.precision,
                       "bptt": train_config.bptt, "bptt_stride": train_config.stride})
    try:
        state = fit(trained, optimizer, data, train_config, state, metrics,
                    Hooks(evaluate=evaluate, save=save, restore_best=restore_best, should_stop=should_stop, progress=progress,
                          agree=ranks.agree), world_size=ranks.world_size)
        if ranks.enabled:
            spread = ranks.weight_spread(model)
            metrics.write({"kind": "processes", "step": state.step, "processes": ranks.world_size, "max_weight_difference": spread})
            if spread > 0:
                log.warning("weights differ across processes by up to %.3g", spread)
    finally:
        metrics.close()
    if not ranks.is_main:
        return None
    best = load_checkpoint(out)  # on the CPU
    scored = best.model.to(device)
    valid = evaluate_text(scored, best.tokenizer, corpus.valid.text, corpus.valid.raw_words, ids=heldout["valid"])
    test = evaluate_text(scored, best.tokenizer, corpus.test.text, corpus.test.raw_words, ids=heldout["test"])
    text_cache = tune_text_cache(scored, best.tokenizer, corpus, heldout) if train_config.tune_text_cache else None
    best.model.cpu()  # the accuracy reads words with the CPU engine
    figures = None
    if train_config.accuracy_positions and accuracy is not None:
        figures = {**accuracy(best, corpus.test.text, train_config.accuracy_positions), "split": "test"}
    update_metrics(best.directory, {"valid": valid.as_dict(), "test": test.as_dict(), "evaluation": HOW_STATE_FLOWS,
                                    "accuracy": figures, **({TEXT_CACHE_METRIC: text_cache} if text_cache is not None else {})})
    with MetricsLog(metrics_path) as final:
        final.write({"kind": "eval", "split": "test", "step": state.step, "checkpoint": best.directory.name, **test.as_dict()})
    return RunResult(out, state, valid, test, count_parameters(model), time.perf_counter() - begun, state.stopped,
                     model_config, figures)


def tune_text_cache(model: RNNLanguageModel, tokenizer: Tokenizer, corpus: Corpus, heldout: Mapping[str, list[int]],
                    settings: TextCacheConfig | None = None) -> dict[str, Any]:
    """The text cache (a continuous cache over the text read, Grave et al. 2017) tuned on the whole valid split as
    `lm evaluate --text-cache tune` does (unless `settings` gives its window, theta and stream weight), its weight then
    tuned by memory size on prompts of the valid split, with the valid and test figures it gives: what
    `metrics["text_cache"]` stores and the predictor
    applies. `heldout` maps "valid" and "test" to their ids."""
    if settings is None:
        scores = score_stream(model, heldout["valid"], tokenizer.newline_id)
        settings, _, _ = tune_text_cache_on_stream(scores)
        del scores  # the valid split's features: the largest thing held here
    # The weight again by how much text the memory holds: requests are prompts, not one long stream.
    settings, by_size = tune_size_weights(model, heldout["valid"], tokenizer, replace(settings, size_weights=()))
    valid = evaluate_text(model, tokenizer, corpus.valid.text, corpus.valid.raw_words, text_cache=settings, ids=heldout["valid"])
    test = evaluate_text(model, tokenizer, corpus.test.text, corpus.test.raw_words, text_cache=settings, ids=heldout["test"])
    log.info("text cache tuned on valid: window %d, theta %g, weight %g; by memory size %s (test %.4f bpc)",
             settings.window, settings.theta, settings.weight,
             ", ".join(f"{keys} keys {weight:g}" for keys, weight in settings.size_weights), test.bpc)
    return {**asdict(settings), "chosen": "tuned on the valid split, the weight by memory size on prompts of it",
            "size_tuning": [{key: value for key, value in row.items() if key != "trials"} for row in by_size],
            "valid": valid.as_dict(), "test": test.as_dict()}


def _restore(directory: Path, model: RNNLanguageModel, optimizer: torch.optim.Optimizer, ranks: Distributed,
             config: TrainConfig, device: torch.device) -> TrainingState:
    """A checkpoint's training progress in live objects on `device`: weights, optimiser, RNGs, this rank's carried rows."""
    resumed = restore_training(directory, model, optimizer, ranks.rank, ranks.world_size, config.seed)
    state = TrainingState.from_json(resumed.state, resumed.carried)
    if state.carried is not None:
        state.carried = state.carried[:, ranks.rows(config.batch_size)].to(device)
    if not set_accelerator_rng_state(device, resumed.accelerator_rng) and device.type == "cuda":
        torch.cuda.manual_seed(config.seed + 7919 * (state.step + 1) + ranks.rank)
        log.warning("%s has no GPU random state for this process (trained on another device or process count): "
                    "dropout masks on the GPU are reseeded", directory)
    return state


def _tokenizer(out: Path, resume: bool, config: TokenizerConfig, corpus: Corpus, ranks: Distributed, token_cache: Path,
               fingerprint: str) -> Tokenizer:
    """The run's tokenizer: from the checkpoint when resuming, else from the token cache or trained on a bounded
    sample of the training split (by rank 0, shared through `out`)."""
    if resume:
        return load_checkpoint(out / "last").tokenizer
    if not ranks.enabled:
        return cached_tokenizer(corpus.train, config, token_cache, fingerprint)
    shared = out / ".tokenizer"
    if ranks.is_main:
        tokenizer = cached_tokenizer(corpus.train, config, token_cache, fingerprint)
        shared.mkdir(parents=True, exist_ok=True)
        tokenizer.save(shared)
    ranks.barrier()
    return load_tokenizer(shared)


class _HeldOut(dict):
    """The held-out splits' ids by name, read from the token cache (small: encoded in this process) when first asked."""

    def __init__(self, corpus: Corpus, tokenizer: Tokenizer, token_cache: Path):
        super().__init__()
        self.corpus, self.tokenizer, self.token_cache = corpus, tokenizer, token_cache

    def __missing__(self, name: str) -> list[int]:
        self[name] = token_ids(self.corpus.split(name), self.tokenizer, self.token_cache, workers=1, progress=False).ids.tolist()
        return self[name]


def _train_ids(corpus: Corpus, tokenizer: Tokenizer, ranks: Distributed, token_cache: Path, fingerprint: str) -> TokenIds:
    """The training split's ids from the token cache; under torchrun rank 0 encodes them, the others then read them."""
    if ranks.enabled and not ranks.is_main:
        ranks.barrier()
        return token_ids(corpus.train, tokenizer, token_cache, fingerprint=fingerprint)
    found = token_ids(corpus.train, tokenizer, token_cache, fingerprint=fingerprint)
    if ranks.enabled:
        ranks.barrier()
    return found
