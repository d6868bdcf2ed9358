"""Truncated backpropagation through time, gradient clipping, and the training loop.

TBPTT(k1, k2) in the sense of Williams and Peng (1990): every k1 steps one
update, from gradients that flow back k2 steps. The stream of units is cut
into B parallel streams (`batchify`); the hidden state is carried from one
window to the next and detached at the window boundary, so that gradients
stop there while the state (the memory) goes on.

With k1 = k2 windows do not overlap. With k1 < k2 each window starts k2 - k1
steps before its first scored position: that overlap is recomputed from the
state carried at its start, and only the last k1 positions contribute to the
loss, so the earliest scored position still sees k2 - k1 + 1 steps of
gradient and the last one k2.

Clipping lives in `clip_gradients`, between `backward()` and the update: by
global L2 norm (Pascanu, Mikolov and Bengio 2013) and/or by value. The norm
before clipping is returned and logged for every step; a step whose gradient
is NaN or infinite is skipped, not applied. With fp16 the loss is scaled
(torch.amp.GradScaler) and the gradients are unscaled before
`clip_gradients`, so the threshold and the logged norm mean the same at
every precision; a step the scaler skips (overflow) is a skipped step.

The batchified data lives on the training device for the whole run (see
`fit`); windows are views of it, so no window is copied between devices.
On the CPU it is a view of the memory-mapped token cache, in uint16 or
uint32: each window is turned into int64 ids as it is read (`_ids`), the
same ids a int64 stream would give.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch
from torch import Tensor

from lm.config import TrainConfig
from lm.eval.figures import EvalResult
from lm.model import RNNLanguageModel
from lm.train.devices import autocast, make_scaler

__all__ = [
    "TrainingState",
    "Window",
    "batchify",
    "build_optimizer",
    "clip_gradients",
    "detach_hidden",
    "learning_rate",
    "iterate_windows",
    "train_step",
    "fit",
]

log = logging.getLogger(__name__)


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut a stream of N units into B rows, each a contiguous piece: (N,) -> (B, N // B).

    With the alphabet as the stream and B = 4:
        ┌ a b c d e f ┐
        │ g h i j k l │   row b holds units b*6 ... b*6+5; the window at
        │ m n o p q r │   position p reads column p of every row at once.
        └ s t u v w x ┘
    The N mod B units left over at the end are dropped.
    """
    columns = ids.numel() // batch_size
    if columns < 2:
        raise ValueError(f"{ids.numel()} units are too few for {batch_size} streams")
    return ids[: columns * batch_size].view(batch_size, columns).contiguous()


def detach_hidden(state: Tensor) -> Tensor:
    """Cut the graph at a window boundary: keep the state's value, drop its history.

    Without this, every backward pass would go back through all earlier
    windows, to the start of the stream: time and memory would grow without
    bound and truncation would not happen.
    """
    return state.detach()


@dataclass(frozen=True)
class Window:
    """One TBPTT window over the batchified stream."""

    inputs: Tensor  # (B, W) units at stream positions start .. start + W - 1
    targets: Tensor  # (B, W) the next unit for each input
    start: int  # stream position of the first input
    loss_from: int  # offset of the first scored position within the window
    carry_at: int  # offset at which the next window's carried state is taken
    next_position: int  # first scored position of the next window

    @property
    def scored(self) -> int:
        """Number of scored positions per stream (this window's k1)."""
        return self.inputs.size(1) - self.loss_from


def window_start(position: int, overlap: int) -> int:
    """Stream position of the first input of the window whose first scored position is `position`."""
    return max(0, position - overlap)


def iterate_windows(data: Tensor, position: int, k1: int, k2: int, rng: random.Random | None = None) -> Iterator[Window]:
    """Windows from `position` to the end of the stream; `rng` varies k1 as AWD-LSTM does.

    With `rng`, a window's k1 is drawn like AWD-LSTM's sequence length
    (Merity et al. 2017): mostly around k1, sometimes around k1 / 2, never
    below 2, so that the start of every window moves across epochs. The
    overlap k2 - k1 stays fixed.
    """
    overlap = k2 - k1
    last = data.size(1) - 1  # the final column is only ever a target
    while position < last:
        step = k1
        if rng is not None:
            base = k1 if rng.random() < 0.95 else k1 / 2
            step = max(2, min(int(rng.gauss(base, 5)), k1 + 20))
        step = min(step, last - position)
        start = window_start(position, overlap)
        next_position = position + step
        yield Window(
            inputs=_ids(data[:, start : position + step]),
            targets=_ids(data[:, start + 1 : position + step + 1]),
            start=start,
            loss_from=position - start,
            carry_at=window_start(next_position, overlap) - start,
            next_position=next_position,
        )
        position = next_position


def _ids(units: Tensor) -> Tensor:
    """Unit ids as int64 (what embeddings and the loss index with): a view when they are already, else a copy."""
    return units if units.dtype == torch.long else units.to(torch.long)


def clip_gradients(parameters: list[Tensor], clip_norm: float | None, clip_value: float | None) -> tuple[float, bool]:
    """Measure the global gradient L2 norm, then clip; returns (norm before clipping, clipped).

    A non-finite norm is returned as is and nothing is clipped: the caller
    skips that step.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0, False
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0).item()
    if not math.isfinite(norm):
        return norm, False
    clipped = False
    if clip_value is not None:
        largest = max(g.abs().max().item() for g in grads)
        if largest > clip_value:
            for g in grads:
                g.clamp_(-clip_value, clip_value)
            clipped = True
    if clip_norm is not None and norm > clip_norm:
        # After value clipping the norm may already be smaller; measure again.
        current = norm if not clipped else torch.nn.utils.get_total_norm(grads).item()
        if current > clip_norm:
            torch.nn.utils.clip_grads_with_norm_(parameters, clip_norm, torch.tensor(current))
        clipped = True
    return norm, clipped


def build_optimizer(model: RNNLanguageModel, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (the classic recipe) or AdamW; biases and other vectors get no weight decay."""
    decay = [p for name, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for name, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99), eps=1e-8)


def learning_rate(config: TrainConfig, state: "TrainingState", progress: float) -> float:
    """The learning rate for the next update: warm-up, then the schedule, times the annealing scale."""
    lr = config.lr * state.lr_scale
    if config.warmup_steps and state.step < config.warmup_steps:
        lr *= (state.step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        lr *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return lr


@dataclass
class TrainingState:
    """Everything beyond weights and optimiser needed to continue a run exactly."""

    step: int = 0  # updates attempted (skipped ones included)
    epoch: int = 0
    position: int = 0  # first scored position of the next window
    tokens: int = 0  # scored training units so far
    elapsed: float = 0.0  # seconds of training, evaluation excluded
    lr_scale: float = 1.0  # divided by anneal_factor on a plateau or a rollback
    best_valid: float | None = None
    clip_threshold: float | None = None  # the norm threshold in force ('auto' fills it in)
    auto_norms: list[float] = field(default_factory=list)
    clipped_steps: int = 0
    skipped_steps: int = 0
    rollbacks: int = 0
    evaluations: int = 0
    last_saved_step: int = -1
    world_size: int = 1  # processes that trained (each carries B / world_size streams)
    stopped: bool = False  # ended by a stop request rather than a budget
    python_rng: list | None = None  # random.Random.getstate() of the window-length sampler
    planned_steps: int | None = None  # a time budget's schedule, planned in updates (see plan_schedule)
    planned_minutes: float | None = None  # the max_minutes that plan was made for
    grad_scaler: dict | None = None  # fp16: torch.amp.GradScaler.state_dict() (its scale and growth count)
    carried: Tensor | None = None  # (L, B, S) state at the next window's start

    def to_json(self) -> dict:
        """JSON-ready fields (the carried state goes to safetensors)."""
        return {k: v for k, v in self.__dict__.items() if k != "carried"}

    @classmethod
    def from_json(cls, payload: dict, carried: Tensor | None) -> "TrainingState":
        known = {k: payload[k] for k in cls.__dataclass_fields__ if k in payload and k != "carried"}
        return cls(**known, carried=carried)


@dataclass(frozen=True)
class StepResult:
    """What one update did."""

    loss: float
    grad_norm: float
    clipped: bool
    skipped: bool
    scored: int  # units scored per stream


def train_step(
    model: RNNLanguageModel,
    optimizer: torch.optim.Optimizer,
    window: Window,
    state: Tensor,
    clip_norm: float | None,
    clip_value: float | None,
    precision: Callable[[], ContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[StepResult, Tensor]:
    """One TBPTT(k1, k2) update from `state` (the carried state at the window's start).

    `precision` wraps the forward pass (autocast, lm/train/devices.py); `scaler`
    scales the loss for fp16. Returns the step's figures and the detached
    float32 state for the next window.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    inputs = window.inputs
    targets = window.targets[:, window.loss_from :]  # only the last k1 positions are scored
    with precision():
        if 0 < window.carry_at < inputs.size(1):
            # The next window starts inside this one: take the state there from
            # the same pass, and let this window's gradient flow on through it.
            scores, _, carried = model(inputs, state, split_at=window.carry_at, targets=targets, score_from=window.loss_from)
        else:
            scores, final = model(inputs, state, targets=targets, score_from=window.loss_from)  # (B, k1)
            carried = final if window.carry_at == inputs.size(1) else state
    loss = -scores.float().mean()
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip and measure the true gradient, not the scaled one
    parameters = [p for p in model.parameters() if p.requires_grad]
    norm, clipped = clip_gradients(parameters, clip_norm, clip_value)
    value = loss.item()
    skipped = not math.isfinite(norm) or not math.isfinite(value)
    if skipped:
        optimizer.zero_grad(set_to_none=True)  # never apply a NaN or infinite update
    elif scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)  # the gradients are finite (checked above), so the scaler steps
    if scaler is not None:
        scaler.update()  # after an overflow (a skipped step) the scale is lowered
    return StepResult(value, norm, clipped, skipped, window.scored), detach_hidden(carried).float()


class MetricsLog:
    """Append-only JSONL of training steps, evaluations and events."""

    def __init__(self, path: Path | None):
        """Append to `path`; None writes nothing (ranks other than 0)."""
        self.path = path
        self._file = open(path, "a", encoding="utf-8") if path is not None else None

    def write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=True) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def truncate_after(path: Path, step: int) -> None:
        """Drop records of steps after `step` (written after the checkpoint a run resumes from), and a last line
        torn by a crash while it was written."""
        if not path.exists():
            return
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = []
        for number, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number < len(lines) - 1:
                    raise
                log.warning("%s: dropped a last line cut short by a crash", path)
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


@dataclass
class Hooks:
    """How `fit` reaches the outside world; every field is optional."""

    evaluate: Callable[[], EvalResult] | None = None  # score the validation split
    save: Callable[[str], None] | None = None  # write checkpoint "last" or "best"
    restore_best: Callable[[], bool] | None = None  # load "best" into model, optimiser and state
    should_stop: Callable[[], bool] = lambda: False  # Ctrl-C, SIGTERM
    progress: Callable[[float, dict], None] | None = None  # fraction done, figures
    agree: Callable[[bool, float, float], tuple[bool, float, float]] = lambda stop, elapsed, loss: (stop, elapsed, loss)  # across ranks


# A time budget's schedule is planned in updates after this many, from their measured pace (see plan_schedule).
PLAN_AFTER_STEPS = 20


def _progress(config: TrainConfig, state: TrainingState, columns: int) -> float:
    """Fraction of the budget used: the largest of steps, epochs and time. Decides when training stops."""
    parts = [0.0]
    if config.max_steps:
        parts.append(state.step / config.max_steps)
    if config.epochs:
        parts.append((state.epoch + state.position / max(columns - 1, 1)) / config.epochs)
    if config.max_minutes:
        parts.append(state.elapsed / (config.max_minutes * 60))
    return max(parts)


def schedule_progress(config: TrainConfig, state: TrainingState, columns: int) -> float:
    """Where the learning-rate schedule stands: `_progress` with the time budget replaced by its plan in updates.

    Wall-clock progress would make the schedule depend on the machine's pace
    at every step, so a resumed run could not repeat an uninterrupted one.
    A time budget therefore counts as `state.step / state.planned_steps` once
    planned (`plan_schedule`), and as nothing before (the schedule's start).
    """
    parts = [0.0]
    if config.max_steps:
        parts.append(state.step / config.max_steps)
    if config.epochs:
        parts.append((state.epoch + state.position / max(columns - 1, 1)) / config.epochs)
    if config.max_minutes and state.planned_steps:
        parts.append(state.step / state.planned_steps)
    return max(parts)


def plan_schedule(config: TrainConfig, state: TrainingState) -> int:
    """Plan a time budget's schedule in updates: the steps done plus what the rest of the budget allows at the
    pace measured so far. Stored in the state (and so in checkpoints), it stays fixed on resume unless the
    time budget is changed, which plans again from that point."""
    pace = state.elapsed / max(state.step, 1)  # seconds per update
    remaining = max(config.max_minutes * 60 - state.elapsed, 0.0)
    state.planned_steps = max(state.step + round(remaining / max(pace, 1e-9)), state.step, 1)
    state.planned_minutes = config.max_minutes
    return state.planned_steps


def fit(
    model: RNNLanguageModel,
    optimizer: torch.optim.Optimizer,
    data: Tensor,
    config: TrainConfig,
    state: TrainingState,
    metrics: MetricsLog,
    hooks: Hooks,
    world_size: int = 1,
) -> TrainingState:
    """Train on batchified `data` (B, N) until a budget ends or a stop is asked for; returns the state.

    `model` may be wrapped in DistributedDataParallel; `data` then holds this
    rank's rows, and `world_size` scales the token counts to the whole job.
    Training runs on `data`'s device, where the model and `state.carried` must
    already be, in `config.precision`. `hooks.save("last")` runs at every
    evaluation, after `config.checkpoint_minutes` of training without one, and
    at the end.
    """
    if not (config.max_steps or config.epochs or config.max_minutes):
        raise ValueError("set at least one budget: max_steps, epochs or max_minutes")
    network = getattr(model, "module", model)  # the model inside a DDP wrapper
    k1, k2 = config.stride, config.bptt
    sampler = random.Random(config.seed)
    if state.python_rng is not None:
        sampler.setstate(_tuplify(state.python_rng))
    if state.carried is None:
        state.carried = network.init_state(data.size(0))
    device = data.device
    precision = lambda: autocast(device, config.precision)  # noqa: E731
    scaler = make_scaler(device, config.precision)
    if scaler is not None and state.grad_scaler is not None:
        scaler.load_state_dict(state.grad_scaler)
    if config.clip_norm not in (None, "auto"):
        state.clip_threshold = float(config.clip_norm)
    smoothed_rate = None
    recent_clips: list[bool] = []
    if config.max_minutes and state.planned_minutes is not None and state.planned_minutes != config.max_minutes:
        # Resumed with another time budget: the schedule is planned again for the new one, from here.
        before = state.planned_steps
        plan_schedule(config, state)
        log.info("the time budget changed to %g minutes: the learning-rate schedule is re-planned to end at update %d "
                 "(it was planned for %d)", config.max_minutes, state.planned_steps, before)
        metrics.write({"kind": "plan", "step": state.step, "planned_steps": state.planned_steps, "replanned": True})
    # The training time at the last save of "last": a checkpoint is also due on the clock (config.checkpoint_minutes),
    # so a crash loses at most that much training whatever the eval interval. Training time, not the wall clock:
    # every rank has the same (agreed at each step), so every rank joins the same saves.
    saved_at = state.elapsed
    stop, _, _ = hooks.agree(hooks.should_stop(), state.elapsed, 0.0)
    while _progress(config, state, data.size(1)) < 1.0 and not stop:
        windows = iterate_windows(data, state.position, k1, k2, sampler if config.variable_bptt else None)
        for window in windows:
            lr = learning_rate(config, state, schedule_progress(config, state, data.size(1)))
            if config.variable_bptt:
                lr *= window.scored / k1  # longer windows average over more positions
            for group in optimizer.param_groups:
                group["lr"] = lr
            begun = time.perf_counter()
            threshold = state.clip_threshold
            result, state.carried = train_step(model, optimizer, window, state.carried, threshold, config.clip_value,
                                               precision, scaler)
            if scaler is not None:
                state.grad_scaler = scaler.state_dict()
            seconds = time.perf_counter() - begun
            # Every rank stops together, counts the slowest rank's time and logs the loss of all rows.
            stop, state.elapsed, loss = hooks.agree(hooks.should_stop(), state.elapsed + seconds, result.loss)
            state.step += 1
            state.position = window.next_position
            state.tokens += result.scored * data.size(0) * world_size
            state.clipped_steps += result.clipped
            state.skipped_steps += result.skipped
            state.python_rng = list(sampler.getstate())
            if config.max_minutes and state.planned_steps is None and state.step >= PLAN_AFTER_STEPS:
                # Every rank has the same elapsed time (agreed above), so every rank makes the same plan.
                plan_schedule(config, state)
                metrics.write({"kind": "plan", "step": state.step, "planned_steps": state.planned_steps,
                               "seconds_per_step": state.elapsed / state.step})
            rate = result.scored * data.size(0) * world_size / max(seconds, 1e-9)
            smoothed_rate = rate if smoothed_rate is None else 0.9 * smoothed_rate + 0.1 * rate
            recent_clips = (recent_clips + [result.clipped])[-100:]
            metrics.write({
                "kind": "step", "step": state.step, "epoch": state.epoch, "position": window.start + window.loss_from,
                "loss": loss, "grad_norm": result.grad_norm, "clipped": result.clipped,
                "skipped": result.skipped, "lr": lr, "k1": result.scored, "tokens_per_s": rate,
                "elapsed": state.elapsed,
            })
            if config.clip_norm == "auto" and state.clip_threshold is None and math.isfinite(result.grad_norm):
                state.auto_norms.append(result.grad_norm)
                if len(state.auto_norms) >= config.clip_auto_steps:
                    # Pascanu et al. 2013: the average norm over many updates.
                    state.clip_threshold = sum(state.auto_norms) / len(state.auto_norms)
                    metrics.write({"kind": "clip_auto", "step": state.step, "threshold": state.clip_threshold})
                    log.info("clip_norm auto: threshold %.4g from the mean of %d steps", state.clip_threshold, len(state.auto_norms))
            if hooks.progress:
                hooks.progress(_progress(config, state, data.size(1)), {
                    "loss": loss, "tok/s": smoothed_rate, "clip": sum(recent_clips) / len(recent_clips),
                    "lr": lr, "step": state.step,
                })
            done = _progress(config, state, data.size(1)) >= 1.0
            if state.step % config.eval_interval == 0 or done:
                if _evaluate(config, state, metrics, hooks):
                    if state.python_rng is not None:
                        sampler.setstate(_tuplify(state.python_rng))
                    if scaler is not None and state.grad_scaler is not None:
                        scaler.load_state_dict(state.grad_scaler)
                    break  # rolled back: restart the window iterator at the restored position
            elif _checkpoint_due(config, state, saved_at) and hooks.save and not stop:
                # Written first: a crash during the save leaves the record of a later step than the checkpoint's,
                # which resuming drops with the other records after it.
                metrics.write({"kind": "checkpoint", "step": state.step, "elapsed": state.elapsed, "reason": "clock"})
                state.last_saved_step = state.step
                hooks.save("last")
            if state.last_saved_step == state.step:
                saved_at = state.elapsed
            if done or stop:
                break
        else:
            state.epoch += 1
            state.position = 0
            state.carried = network.init_state(data.size(0))  # each epoch starts from a zero state
            continue
        if stop or _progress(config, state, data.size(1)) >= 1.0:
            break
    state.stopped = stop
    if hooks.save and state.last_saved_step != state.step:
        state.last_saved_step = state.step
        hooks.save("last")  # stopped early: keep every finished step
    return state


def _checkpoint_due(config: TrainConfig, state: TrainingState, saved_at: float) -> bool:
    """Whether `checkpoint_minutes` of training have passed since "last" was saved at training time `saved_at`."""
    return bool(config.checkpoint_minutes) and state.elapsed - saved_at >= config.checkpoint_minutes * 60


def _evaluate(config: TrainConfig, state: TrainingState, metrics: MetricsLog, hooks: Hooks) -> bool:
    """Validate, save, anneal or roll back; returns True after a rollback."""
    if hooks.evaluate is None:
        if hooks.save:
            hooks.save("last")
            state.last_saved_step = state.step
        return False
    result = hooks.evaluate()
    state.evaluations += 1
    record = {"kind": "eval", "split": "valid", "step": state.step, "epoch": state.epoch, "tokens": state.tokens, **result.as_dict()}
    metrics.write(record)
    log.info("step %d: valid loss %.4f, %.4f bpc, per-word ppl %.1f", state.step, result.loss, result.bpc, result.word_ppl)
    exploded = not math.isfinite(result.loss) or (state.best_valid is not None and result.loss > config.rollback_ratio * state.best_valid)
    if exploded and hooks.restore_best is not None:
        scale, rollbacks, elapsed = state.lr_scale, state.rollbacks, state.elapsed
        if hooks.restore_best():
            state.lr_scale = scale / config.anneal_factor
            state.rollbacks = rollbacks + 1
            state.elapsed = elapsed  # the wall clock does not go back
            metrics.write({"kind": "rollback", "step": state.step, "valid_loss": result.loss, "lr_scale": state.lr_scale})
            log.warning("validation loss %.4g exploded; rolled back to step %d with the learning rate divided by %g", result.loss, state.step, config.anneal_factor)
            return True
        state.lr_scale /= config.anneal_factor
        log.warning("validation loss %.4g exploded and there is no earlier checkpoint; dividing the learning rate by %g", result.loss, config.anneal_factor)
    elif state.best_valid is None or result.loss < state.best_valid:
        state.best_valid = result.loss
        if hooks.save:
            hooks.save("best")
    elif config.schedule == "plateau":
        state.lr_scale /= config.anneal_factor
        metrics.write({"kind": "anneal", "step": state.step, "lr_scale": state.lr_scale})
        log.info("validation did not improve: learning rate divided by %g", config.anneal_factor)
    if hooks.save:
        state.last_saved_step = state.step
        hooks.save("last")
    return False


def _tuplify(value):
    """JSON turns the tuples of random.getstate() into lists; turn them back."""
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value
