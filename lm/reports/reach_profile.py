"""Model-level reach profiles: gradient reach over many seeded contexts of a held-out split.

For each sampled word position, the text before it (up to `context_chars`
characters, cut at a line start) is attributed for the top prediction. The
profile is the median and quartiles over samples of influence by distance,
each sample divided by its own maximum; also the distribution of reach
figures and of the faithfulness check.

For comparison the plot marks what Khandelwal, He, Qi and Jurafsky (2018,
"Sharp Nearby, Fuzzy Far Away") measured for LSTM language models by
ablation: about 200 tokens of context used, word order mattering only within
about the last 50.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lm.infer.attribution import attribute
from lm.infer.accuracy import word_positions
from lm.infer.predictor import Predictor

__all__ = ["reach_profile", "plot_profiles", "KHANDELWAL"]

KHANDELWAL = {"context_used_tokens": 200, "word_order_tokens": 50}


def _quartiles(rows: list[list[float]]) -> dict:
    """Median and quartiles at each distance over the samples long enough to have it."""
    longest = max((len(r) for r in rows), default=0)
    median, low, high, count = [], [], [], []
    for d in range(longest):
        values = [r[d] for r in rows if len(r) > d]
        q1, q2, q3 = np.percentile(values, [25, 50, 75])
        median.append(float(q2))
        low.append(float(q1))
        high.append(float(q3))
        count.append(len(values))
    return {"median": median, "q25": low, "q75": high, "samples": count}


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(q2), "q25": float(q1), "q75": float(q3), "mean": float(np.mean(values)),
            "min": float(np.min(values)), "max": float(np.max(values))}


def reach_profile(predictor: Predictor, text: str, samples: int = 50, seed: int = 0, context_chars: int = 2000,
                  threshold: float = 0.01, verify: bool = True, method: str = "saliency", progress: bool = False) -> dict:
    """Attribute the top prediction at `samples` seeded word positions of `text`; aggregate the reach."""
    candidates = [p for p in word_positions(text) if p >= min(context_chars, 200)]
    rng = random.Random(seed)
    chosen = sorted(rng.sample(candidates, min(samples, len(candidates))))
    unit_rows, word_rows = [], []
    figures: dict[str, list[float]] = {key: [] for key in ("tokens", "words", "chars", "mass90_tokens", "mass99_tokens",
                                                           "mass90_words", "mass99_words")}
    faithfulness, context_units = [], []
    for position in tqdm(chosen, disable=not progress, desc="reach profile", unit="context", leave=False):
        start = max(0, position - context_chars)
        line = text.rfind("\n", 0, start)
        start = line + 1 if line >= 0 and start > 0 else start
        if start > 0 and text.find("\n", start, position) == -1:
            start = text.rfind(" ", 0, start) + 1  # no line start in range: cut at a word
        context = text[start:position]
        result = attribute(predictor, context, k=1, method=method, threshold=threshold, verify=verify)
        if not result.predictions:
            continue
        entry = result.predictions[0]
        unit_rows.append(entry.profile())
        word_scores = result.word_scores(entry.influence)[::-1]
        top = max(word_scores) if word_scores else 0.0
        word_rows.append([s / top if top > 0 else 0.0 for s in word_scores])
        for key in figures:
            figures[key].append(getattr(entry.reach, key))
        context_units.append(len(result.units))
        if entry.faithfulness:
            faithfulness.append(entry.faithfulness["logprob_change"])
    return {
        "samples": len(unit_rows),
        "seed": seed,
        "context_chars": context_chars,
        "threshold": threshold,
        "method": method,
        "context_units": _summary(context_units),
        "by_unit_distance": _quartiles(unit_rows),
        "by_word_distance": _quartiles(word_rows),
        "reach": {key: _summary(values) for key, values in figures.items()},
        "reach_values": figures,
        "faithfulness": {"logprob_change": _summary(faithfulness),
                         "abs_logprob_change": _summary([abs(v) for v in faithfulness]), "values": faithfulness},
        "khandelwal_2018": KHANDELWAL,
    }


def plot_profiles(profiles: dict[str, dict], out: Path) -> Path:
    """One PNG comparing models: influence by distance (units and words), reach figures, faithfulness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    units_axis, words_axis, reach_axis, faith_axis = axes.flat
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, profile) in enumerate(profiles.items()):
        colour = colours[index % len(colours)]
        for axis, key in ((units_axis, "by_unit_distance"), (words_axis, "by_word_distance")):
            curve = profile[key]
            x = np.arange(1, len(curve["median"]) + 1)
            if not len(x):
                continue
            median = np.maximum(curve["median"], 1e-12)
            axis.plot(x, median, color=colour, label=f"{name} (median, n={profile['samples']})")
            axis.fill_between(x, np.maximum(curve["q25"], 1e-12), np.maximum(curve["q75"], 1e-12), color=colour, alpha=0.2)
        values = profile["reach_values"]
        reach_axis.boxplot([values["words"], values["mass90_words"], values["mass99_words"]], positions=[index * 4 + 1, index * 4 + 2, index * 4 + 3],
                           widths=0.8, patch_artist=True, boxprops={"facecolor": colour, "alpha": 0.5})
        changes = profile["faithfulness"]["values"]
        if changes:
            faith_axis.hist(changes, bins=30, color=colour, alpha=0.5, label=name)
    for axis, unit in ((units_axis, "units (characters or pieces)"), (words_axis, "words")):
        axis.set(xscale="log", yscale="log", xlabel=f"distance back from the prediction, {unit}",
                 ylabel="influence / max (saliency)", ylim=(1e-6, 1.5))
    words_axis.axvline(KHANDELWAL["word_order_tokens"], color="#555", linestyle=":", label="Khandelwal 2018: word order matters (~50)")
    words_axis.axvline(KHANDELWAL["context_used_tokens"], color="#555", linestyle="--", label="Khandelwal 2018: context used (~200)")
    units_axis.set_title("influence by distance (median and quartiles)")
    words_axis.set_title("influence by distance in words")
    units_axis.legend(fontsize=8)
    words_axis.legend(fontsize=8)
    ticks = []
    for index, name in enumerate(profiles):
        ticks += [(index * 4 + 1, f"{name}\nthreshold"), (index * 4 + 2, "90%"), (index * 4 + 3, "99%")]
    reach_axis.set_xticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=7)
    reach_axis.set(yscale="log", ylabel="reach in words", title="reach figures per prediction")
    faith_axis.set(xlabel="change of log P(word) with filler beyond the 99% reach", ylabel="predictions",
                   title="faithfulness: small changes mean an honest reach")
    if any(p["faithfulness"]["values"] for p in profiles.values()):
        faith_axis.legend(fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def write_profiles(profiles: dict[str, dict], out: Path) -> tuple[Path, Path]:
    """Write `out`.json and `out`.png."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(profiles, indent=1), encoding="utf-8")
    return json_path, plot_profiles(profiles, out.with_suffix(".png"))
