"""The BPTT lab's report: PNG figures and one self-contained HTML page, from lab.json's measurements."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lm.cells import get_cell
from lm.reports.html import escape, png_data

__all__ = ["write_report", "findings"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _median(values):
    return float(np.median(values)) if values else float("nan")


def _truncation_cells(lab: dict) -> tuple[str, str]:
    """The gated cell and the vanilla RNN whose truncation lengths the lab swept (lab.json from before they were
    settings: the LSTM and the tanh RNN)."""
    gated, vanilla = lab["settings"].get("truncation_cells", ("lstm", "rnn_tanh"))
    return gated, vanilla


def _runs(lab: dict, group: str) -> list[dict]:
    return [r for r in lab["runs"] if group in r["run"]["groups"]]


def _figure_valid(lab: dict):
    plt = _plt()
    groups = ("cells", "truncation", "clipping")
    figure, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for axis, group in zip(axes, groups):
        for run in _runs(lab, group):
            curve = run["valid_curve"]
            if curve:
                axis.plot([p["step"] for p in curve], [p["bpc"] for p in curve], "o-", markersize=3, label=run["run"]["name"])
        axis.set(title=f"validation ({group})", xlabel="step", ylabel="bits per character")
        axis.legend(fontsize=7)
    return figure


def _figure_gradients(lab: dict):
    plt = _plt()
    runs = lab["runs"]
    figure, axes = plt.subplots(2, 1, figsize=(15, 8), constrained_layout=True)
    series_axis, hist_axis = axes
    for run in runs:
        norms = np.array([n if n is not None and math.isfinite(n) else np.nan for n in run["grad_norm"]["series"]])
        if norms.size:
            series_axis.plot(np.arange(1, norms.size + 1), norms, linewidth=0.6,
                             label=f"{run['run']['name']} (clip rate {run['clip_rate']:.0%}, skipped {run['skipped_steps']})")
            finite = norms[np.isfinite(norms) & (norms > 0)]
            if finite.size:
                bins = np.logspace(np.log10(finite.min()), np.log10(finite.max()) + 1e-9, 40)
                hist_axis.hist(finite, bins=bins, histtype="step", label=run["run"]["name"])
    series_axis.set(title="gradient L2 norm before clipping, every step", xlabel="step", yscale="log")
    series_axis.legend(fontsize=7, ncol=2)
    hist_axis.set(title="distribution of the gradient norm before clipping", xlabel="norm", xscale="log", ylabel="steps")
    hist_axis.legend(fontsize=7, ncol=2)
    return figure


def _figure_reach(lab: dict):
    plt = _plt()
    figure, axes = plt.subplots(2, 2, figsize=(14, 9), constrained_layout=True)
    (cells_axis, truncation_axis), (k2_axis, jacobian_axis) = axes
    for axis, group in ((cells_axis, "cells"), (truncation_axis, "truncation")):
        for run in _runs(lab, group):
            curve = run["reach"]["by_unit_distance"]["median"]
            if curve:
                axis.plot(np.arange(1, len(curve) + 1), np.maximum(curve, 1e-12), label=run["run"]["name"])
        axis.set(title=f"median influence by distance ({group})", xlabel="distance back, units", ylabel="influence / max",
                 xscale="log", yscale="log", ylim=(1e-6, 1.5))
        axis.legend(fontsize=7)
    for cell, marker in zip(_truncation_cells(lab), "os"):
        runs = sorted((r for r in _runs(lab, "truncation") if r["run"]["cell"] == cell), key=lambda r: r["run"]["bptt"])
        if runs:
            k2 = [r["run"]["bptt"] for r in runs]
            k2_axis.plot(k2, [r["reach"]["reach"]["tokens"].get("median", np.nan) for r in runs], marker + "-", label=f"{cell}: threshold reach")
            k2_axis.plot(k2, [r["reach"]["reach"]["mass90_tokens"].get("median", np.nan) for r in runs], marker + "--", label=f"{cell}: 90% mass reach")
    all_k2 = [r["run"]["bptt"] for r in _runs(lab, "truncation")]
    if all_k2:
        k2_axis.plot([min(all_k2), max(all_k2)], [min(all_k2), max(all_k2)], color="#999", linestyle=":", label="reach = k2")
    k2_axis.set(title="median reach against the truncation length k2", xlabel="k2 (units)", ylabel="reach (units)", xscale="log", yscale="log")
    k2_axis.legend(fontsize=7)
    for run in lab["runs"]:
        norms = run["jacobian"]["jacobian_norm"]
        if norms:
            jacobian_axis.plot(run["jacobian"]["distance"], np.maximum(norms, 1e-30), label=run["run"]["name"])
    jacobian_axis.set(title="||d h_T / d h_(T-d)|| of the recurrence (trained weights)", xlabel="d (units)", yscale="log", xscale="log")
    jacobian_axis.legend(fontsize=7)
    return figure


def findings(lab: dict) -> list[str]:
    """Sentences computed from the measurements (nothing here is written in advance)."""
    out = []
    by_name = {r["run"]["name"]: r for r in lab["runs"]}

    def reach(run):
        return run["reach"]["reach"]["tokens"].get("median", float("nan"))

    cells = {r["run"]["cell"]: r for r in _runs(lab, "cells")}
    gated, vanilla = _truncation_cells(lab)
    if gated in cells and vanilla in cells:
        gated_reach, vanilla_reach = reach(cells[gated]), reach(cells[vanilla])
        verdict = "exceeds" if gated_reach > vanilla_reach else "does not exceed"
        out.append(f"At equal parameters and k2 = {cells[gated]['run']['bptt']}, the {get_cell(gated).title}'s median "
                   f"threshold reach ({gated_reach:.0f} units) {verdict} the {get_cell(vanilla).title}'s ({vanilla_reach:.0f} units).")
    ranked = sorted(cells.values(), key=lambda r: r["test"]["bpc"])
    if ranked:
        out.append("Held-out test bits per character, best first: " + ", ".join(f"{r['run']['cell']} {r['test']['bpc']:.3f}" for r in ranked) + ".")
    for cell in _truncation_cells(lab):
        runs = sorted((r for r in _runs(lab, "truncation") if r["run"]["cell"] == cell), key=lambda r: r["run"]["bptt"])
        if len(runs) >= 2:
            parts = ", ".join(f"k2 {r['run']['bptt']}: reach {reach(r):.0f}, {r['test']['bpc']:.3f} bpc" for r in runs)
            beyond = [r["run"]["bptt"] for r in runs if reach(r) > r["run"]["bptt"]]
            out.append(f"{cell} by truncation length: {parts}." + (f" Reach beyond k2 at k2 = {', '.join(map(str, beyond))}: the carried state "
                       "passes influence on even though no gradient crossed the window boundary in training." if beyond else ""))
    clipping = {r["run"]["clipping"]: r for r in _runs(lab, "clipping")}
    if clipping:
        parts = []
        for mode in ("off", "norm", "value"):
            if mode in clipping:
                r = clipping[mode]
                parts.append(f"{mode}: max norm {r['grad_norm']['max'] or float('nan'):.3g}, clip rate {r['clip_rate']:.0%}, "
                             f"{r['skipped_steps']} skipped, {r['test']['bpc']:.3f} bpc")
        out.append("tanh RNN clipping: " + "; ".join(parts) + ".")
    if not by_name:
        out.append("No runs.")
    return out


def write_report(lab: dict, out: Path) -> Path:
    """Write the PNGs and report.html into `out`; returns the page's path."""
    plt = _plt()
    images = {}
    for name, make in (("validation", _figure_valid), ("gradients", _figure_gradients), ("reach", _figure_reach)):
        figure = make(lab)
        data, uri = png_data(figure)
        plt.close(figure)
        (out / f"{name}.png").write_bytes(data)
        images[name] = uri
    rows = []
    for run in lab["runs"]:
        r, test, accuracy = run["run"], run["test"], run["accuracy"] or {}
        reach = run["reach"]["reach"]
        rows.append(
            "<tr>" + "".join(f"<td>{escape(v)}</td>" for v in (
                r["name"], ", ".join(r["groups"]), r["cell"], r["hidden_dim"], f"{run['parameters']:,}", r["bptt"], r["clipping"],
                f"{run['steps']:,}", f"{run['tokens']:,}", f"{run['clip_rate']:.0%}", run["skipped_steps"],
                f"{run['grad_norm']['median']:.3g}" if run["grad_norm"]["median"] is not None else "-",
                f"{test['bpc']:.3f}", f"{test['word_ppl']:.1f}",
                f"{accuracy.get('top1', float('nan')):.1%}", f"{accuracy.get('top5', float('nan')):.1%}",
                f"{reach['tokens'].get('median', float('nan')):.0f}", f"{reach['mass90_tokens'].get('median', float('nan')):.0f}",
                f"{reach['words'].get('median', float('nan')):.0f}",
                f"{run['reach']['faithfulness']['abs_logprob_change'].get('median', float('nan')):.3f}",
            )) + "</tr>")
    header = ("run", "experiments", "cell", "hidden", "parameters", "k2", "clipping", "steps", "tokens", "clip rate", "skipped",
              "median grad norm", "test bpc", "per-word ppl", "top-1", "top-5", "reach (units)", "90% mass (units)", "reach (words)",
              "|Δ log P|, filler beyond 99% mass")
    settings, corpus = lab["settings"], lab["corpus"]
    held = f" (valid and test cut to their first {corpus['heldout_chars']:,} characters)" if corpus.get("heldout_chars") else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Reach BPTT lab</title>
<style>
body {{ font: 14px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 78rem; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; }} td, th {{ border: 1px solid #ddd; padding: 2px 6px; text-align: right; }}
th {{ background: #f4f4f4; }} td:first-child, td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>BPTT lab: vanishing and exploding gradients, measured</h1>
<p>Corpus <b>{escape(corpus['name'])}</b> ({escape(corpus['source'])}){escape(held)}. Budget <b>{settings['minutes']:g} minutes</b> of
training per run, seed {settings['seed']}, {escape(settings['tokenizer'])} tokenizer, every cell sized to about
{settings['parameters']:,} parameters{' (quick mode)' if settings['quick'] else ''}. Reach {escape(lab['versions']['reach'])},
torch {escape(lab['versions']['torch'])}, Python {escape(lab['versions']['python'])}, {lab['machine']['threads']} threads;
{escape(lab['created'])}. Every number and figure below was measured in this run.</p>
<h2>Findings</h2><ul>{''.join(f'<li>{escape(line)}</li>' for line in findings(lab))}</ul>
<h2>Summary</h2>
<table><tr>{''.join(f'<th>{escape(h)}</th>' for h in header)}</tr>{''.join(rows)}</table>
<p>Reach: the farthest position whose gradient influence on the top prediction is at least {lab['runs'][0]['reach']['threshold'] if lab['runs'] else 0.01:g}
of the strongest, median over {settings['samples']} test contexts of up to {settings['context_chars']:,} characters.
|Δ log P|, filler beyond 99% mass: the median over contexts of how much the prediction's log-probability moves when the text
farther back than its 99% mass reach (not the threshold reach) is replaced by neutral filler of the same length.</p>
<h2>Validation curves</h2><img alt="validation curves" src="{images['validation']}">
<h2>Exploding gradients: the norm before clipping</h2><img alt="gradient norms" src="{images['gradients']}">
<h2>Vanishing gradients: how far back influence reaches</h2><img alt="reach profiles" src="{images['reach']}">
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
