"""Plots of a run's metrics.jsonl: losses, gradient norms before clipping, learning rate, speed."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["read_metrics", "plot_metrics"]


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file (a run directory is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics at {str(path)!r}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _smooth(values: list[float], weight: float = 0.95) -> list[float]:
    out, running = [], None
    for value in values:
        if not math.isfinite(value):
            out.append(value)
            continue
        running = value if running is None else weight * running + (1 - weight) * value
        out.append(running)
    return out


def plot_metrics(path: Path, out: Path) -> Path:
    """Draw a run's training curves to a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(path)
    steps = [r for r in records if r.get("kind") == "step"]
    evals = [r for r in records if r.get("kind") == "eval" and r.get("split") == "valid"]
    if not steps:
        raise ValueError(f"{str(path)!r} holds no training steps yet")
    x = [r["step"] for r in steps]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    loss_axis, norm_axis, lr_axis, speed_axis = axes.flat

    loss_axis.plot(x, [r["loss"] for r in steps], color="#bbb", linewidth=0.6, label="train (per step)")
    loss_axis.plot(x, _smooth([r["loss"] for r in steps]), color="#1f77b4", label="train (smoothed)")
    if evals:
        loss_axis.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", color="#d62728", label="valid")
    loss_axis.set(title="loss (nats per unit)", xlabel="step")
    loss_axis.legend()

    norms = [r["grad_norm"] if math.isfinite(r["grad_norm"]) else float("nan") for r in steps]
    norm_axis.plot(x, norms, linewidth=0.6, color="#2ca02c", label="norm before clipping")
    clipped = [(r["step"], r["grad_norm"]) for r in steps if r["clipped"] and math.isfinite(r["grad_norm"])]
    if clipped:
        norm_axis.scatter(*zip(*clipped), s=4, color="#ff7f0e", label=f"clipped ({len(clipped)})", zorder=3)
    skipped = [r["step"] for r in steps if r["skipped"]]
    for step in skipped:
        norm_axis.axvline(step, color="#d62728", linewidth=0.5)
    auto = [r for r in records if r.get("kind") == "clip_auto"]
    for record in auto:
        norm_axis.axhline(record["threshold"], color="#ff7f0e", linestyle="--", linewidth=0.8, label="auto threshold")
    norm_axis.set(title=f"gradient L2 norm ({len(skipped)} non-finite steps skipped)", xlabel="step", yscale="log")
    norm_axis.legend()

    lr_axis.plot(x, [r["lr"] for r in steps], color="#9467bd")
    lr_axis.set(title="learning rate", xlabel="step")

    speed_axis.plot(x, _smooth([r["tokens_per_s"] for r in steps], 0.9), color="#8c564b")
    speed_axis.set(title="training units per second (smoothed)", xlabel="step")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
