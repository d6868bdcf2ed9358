"""The recall lab's report: PNG figures and one self-contained HTML page, from recall.json's measurements."""

from __future__ import annotations

import math
from pathlib import Path


from lm.cells import get_cell
from lm.reports.html import escape, png_data

__all__ = ["recall_findings", "write_recall_report"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _middle(row: dict) -> float:
    """A bucket's place on a distance axis: its geometric middle (the last, open bucket: 1.5 times its start)."""
    return math.sqrt(row["from"] * row["to"]) if row["to"] else 1.5 * row["from"]


def _groups(lab: dict) -> list[tuple[str, list[dict]]]:
    return [(group, [run for run in lab["runs"] if group in run["run"]["groups"]]) for group in ("cells", "truncation", "clipping")]


def _figure_accuracy(lab: dict):
    plt = _plt()
    groups = [(g, runs) for g, runs in _groups(lab) if runs]
    figure, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4), squeeze=False)
    for axis, (group, runs) in zip(axes[0], groups):
        for run in runs:
            rows = [row for row in run["recall"]["by_distance"] if row["examples"]]
            axis.plot([_middle(r) for r in rows], [r["top1"] for r in rows], "o-", label=run["run"]["name"])
        axis.axhline(lab["chance"], color="#999", linestyle=":", label="chance")
        axis.set(title=f"recall of the key by distance ({group})", xlabel="distance back to the key (characters)",
                 ylabel="top-1 accuracy", xscale="log", ylim=(-0.02, 1.02))
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def _figure_reach(lab: dict):
    plt = _plt()
    figure, (reach_axis, scatter_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    largest = 1
    for run in lab["runs"]:
        if "cells" not in run["run"]["groups"]:
            continue
        rows = [row for row in run["recall"]["by_distance"] if row["examples"]]
        reach_axis.plot([_middle(r) for r in rows], [r["reach_chars"] for r in rows], "o-", label=run["run"]["name"])
        largest = max(largest, *(r["to"] or r["from"] for r in rows)) if rows else largest
    reach_axis.plot([1, largest], [1, largest], color="#999", linestyle=":", label="reach = distance to the key")
    reach_axis.set(title="median threshold reach at the question", xlabel="distance back to the key (characters)",
                   ylabel="reach (characters)", xscale="log", yscale="log")
    reach_axis.legend(fontsize=7)
    real = [m for run in lab["runs"] for m in run["recall"]["measures"] if not m["control"]]
    for recalled, color, label in ((True, "#1b7837", "key recalled"), (False, "#b2182b", "key missed")):
        points = [m for m in real if m["recalled"] == recalled]
        scatter_axis.scatter([m["distance"] for m in points], [max(m["reach_chars"], 1) for m in points], s=9, alpha=0.5,
                             color=color, label=f"{label} ({len(points)})")
    scatter_axis.plot([1, largest], [1, largest], color="#999", linestyle=":", label="above: key inside the reach")
    scatter_axis.set(title="every question of every run", xlabel="distance back to the key (characters)",
                     ylabel="threshold reach (characters)", xscale="log", yscale="log")
    scatter_axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def recall_findings(lab: dict) -> list[str]:
    """Sentences computed from the measurements (nothing here is written in advance)."""
    out = []
    chance = lab["chance"]
    for run in lab["runs"]:
        if "cells" not in run["run"]["groups"]:
            continue
        rows = [row for row in run["recall"]["by_distance"] if row["examples"]]
        above = [row for row in rows if row["top1"] > 2 * chance]
        title = get_cell(run["run"]["cell"]).title
        if not above:
            out.append(f"The {title} recalls the key no better than twice chance ({2 * chance:.0%}) at any distance measured.")
        else:
            falls = next((row for row in rows if row["from"] > above[0]["from"] and row["top1"] <= 2 * chance), None)
            reach = f"falls to within twice chance from {falls['from']} characters" if falls else "stays above twice chance at every distance measured"
            out.append(f"The {title} recalls the key {rows[0]['top1']:.0%} of the time at {rows[0]['from']}-{rows[0]['to'] or 'more'} "
                       f"characters and {reach}; its controls: {run['recall']['control_top1']:.0%} (chance {chance:.0%}).")
    for run in lab["runs"]:
        truth = run["recall"]["truthfulness"]
        if truth["confident_recalls"]:
            out.append(f"{run['run']['name']}: of {truth['confident_recalls']} keys recalled with P >= {truth['confidence']:g}, "
                       f"{truth['key_inside_reach_when_recalled']:.0%} lie inside the reported threshold reach.")
    return out


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def write_recall_report(lab: dict, out: Path) -> Path:
    """Write recall_accuracy.png, recall_reach.png and recall.html into `out`; returns the page's path."""
    plt = _plt()
    images = {}
    for name, make in (("recall_accuracy", _figure_accuracy), ("recall_reach", _figure_reach)):
        figure = make(lab)
        data, uri = png_data(figure)
        plt.close(figure)
        (out / f"{name}.png").write_bytes(data)
        images[name] = uri
    header = ("run", "experiments", "cell", "parameters", "k2", "clipping", "steps", "test bpc", "clip rate", "skipped",
              "median grad norm", "recall (top-1)", "controls", "key inside reach when recalled", "key share (recalled / missed)",
              "ablation agrees with reach", "|Δ log P| inside / outside")
    rows = []
    for run in lab["runs"]:
        r, recall, truth = run["run"], run["recall"], run["recall"]["truthfulness"]
        rows.append("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in (
            r["name"], ", ".join(r["groups"]), r["cell"], f"{run['parameters']:,}", r["bptt"], r["clipping"], f"{run['steps']:,}",
            f"{run['test']['bpc']:.3f}", f"{run['clip_rate']:.0%}", run["skipped_steps"], _fmt(run["grad_norm"]["median"], ".3g"),
            f"{recall['top1']:.0%}", f"{recall['control_top1']:.0%}", _fmt(truth["key_inside_reach_when_recalled"], ".0%"),
            f"{_fmt(truth['key_share_recalled'], '.2f')} / {_fmt(truth['key_share_missed'], '.2f')}",
            _fmt(truth["ablation_agreement"], ".0%"),
            f"{_fmt(truth['ablation_change_inside'], '.3f')} / {_fmt(truth['ablation_change_outside'], '.3f')}",
        )) + "</tr>")
    settings, recall_settings = lab["settings"], lab["recall_settings"]
    buckets = []
    for run in lab["runs"]:
        for row in run["recall"]["by_distance"]:
            buckets.append("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in (
                run["run"]["name"], f"{row['from']}-{row['to'] or ''}", row["examples"], _fmt(row["top1"], ".0%"),
                _fmt(row["key_probability"], ".3f"), row["controls"], _fmt(row["control_top1"], ".0%"), f"{row['chance']:.1%}",
                _fmt(row["reach_chars"], ".0f"), _fmt(row["mass99_chars"], ".0f"), _fmt(row["key_share"], ".3f"))) + "</tr>")
    bucket_header = ("run", "distance (chars)", "questions", "top-1", "median P(key)", "controls", "controls top-1", "chance",
                     "median reach (chars)", "median 99% mass reach", "median key share")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Reach recall lab</title>
<style>
body {{ font: 14px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 78rem; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; margin-bottom: 1rem; }} td, th {{ border: 1px solid #ddd; padding: 2px 6px; text-align: right; }}
th {{ background: #f4f4f4; }} td:first-child, td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Recall lab: a planted key, a known distance, and whether reach tells the truth</h1>
<p>Each question plants a key from a closed set of {round(1 / lab['chance'])} ("the code word is saffron.") in filler text from
<b>{escape(lab['filler'])}</b> and asks for it {recall_settings['min_distance']}-{recall_settings['max_distance']} characters later
("... so the code word was"); chance is {lab['chance']:.1%}. Controls ask for a key the text does not hold. Budget
<b>{settings['minutes']:g} minutes</b> of training per run on {recall_settings['train_examples']:,} training lines, seed
{settings['seed']}, {escape(settings['tokenizer'])} tokenizer, every cell sized to about {settings['parameters']:,} parameters
{'(quick mode)' if settings['quick'] else ''}; {recall_settings['measured']} test questions measured per run. Reach
{escape(lab['versions']['reach'])}, torch {escape(lab['versions']['torch'])}, {lab['machine']['threads']} threads;
{escape(lab['created'])}. Every number and figure below was measured in this run.</p>
<h2>Findings</h2><ul>{''.join(f'<li>{escape(line)}</li>' for line in recall_findings(lab))}</ul>
<h2>Runs</h2>
<table><tr>{''.join(f'<th>{escape(h)}</th>' for h in header)}</tr>{''.join(rows)}</table>
<p>Key inside reach when recalled: of the questions answered with the key at P &ge; {recall_settings['confidence']:g}, the share whose key
lies within the threshold reach of that answer. Key share: the median share of the answer's gradient influence on the key's
units. Ablation: the key replaced by another; "agrees" when |&Delta; log P(answer)| &gt; 0.1 nats exactly when the key is inside
the reach.</p>
<h2>Recall by distance</h2><img alt="recall by distance" src="{images['recall_accuracy']}">
<h2>Reach at the question</h2><img alt="reach at the question" src="{images['recall_reach']}">
<h2>Every bucket</h2>
<table><tr>{''.join(f'<th>{escape(h)}</th>' for h in bucket_header)}</tr>{''.join(buckets)}</table>
</body></html>
"""
    path = out / "recall.html"
    path.write_text(page, encoding="utf-8")
    return path
