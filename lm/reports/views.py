"""Views of an attribution: a terminal heatmap and a self-contained HTML page.

Influence falls off by orders of magnitude over a text, so colours follow
its logarithm: the strongest unit is hottest and anything below 1e-4 of it
is uncoloured. With the continuous cache, the earlier occurrences its
pointer copies the word from are marked apart from the colours (underlined
in a terminal, boxed in HTML).
"""

from __future__ import annotations

import html
import math

from lm.infer.attribution import Attribution

__all__ = ["level", "render_terminal", "render_html", "DECADES"]

DECADES = 4  # orders of magnitude shown
# xterm-256 background colours from cold to hot.
_RAMP = [236, 237, 17, 18, 19, 25, 31, 37, 72, 107, 142, 178, 214, 208, 202, 196]


def level(score: float, top: float) -> float:
    """Position of `score` on the colour scale, 0 (at or below 1e-4 of the top) to 1 (the top)."""
    if top <= 0 or score <= 0:
        return 0.0
    return min(1.0, max(0.0, 1 + math.log10(score / top) / DECADES))


def _reach_line(entry) -> str:
    r = entry.reach
    line = (f"reach {r.tokens} units / {r.words} words / {r.chars} chars (threshold {r.threshold:g});  "
            f"90% of influence within {r.mass90_tokens} units ({r.mass90_words} words), 99% within {r.mass99_tokens} ({r.mass99_words} words)")
    if entry.pointer is not None:
        line += f";  {_pointer_line(entry.pointer)}"
    if entry.faithfulness:
        f = entry.faithfulness
        line += (f";  beyond the 99% reach, filler moves log P by {f['logprob_change']:+.3f} and cutting the text by "
                 f"{f['cut']['logprob_change']:+.3f}")
    return line


def _pointer_line(pointer) -> str:
    """The cache's pointer in a few words."""
    if not pointer.entries:
        return "the cache copies none of the word's units from the text"
    return (f"the cache copied part of the word with probability {pointer.copy_probability:.2%} from "
            f"{pointer.entries} places; pointer reach {pointer.tokens} units / {pointer.words} words / {pointer.chars} "
            f"chars; the cache's part is within 1% once the text is cut to its last {pointer.deletion['99']['words']} words")


def _pointed(attribution: Attribution, entry) -> set[int]:
    """The context units inside the cache pointer's positions for a prediction."""
    if entry.pointer is None:
        return set()
    return {index for position in entry.pointer.positions for index, (_, start, end) in enumerate(attribution.units)
            if position.start <= start and end <= position.end}


def render_terminal(attribution: Attribution, chosen: int = 0, color: bool = True) -> str:
    """Predictions with their reach, then the text coloured by influence on the chosen prediction."""
    lines = []
    summary = attribution.context_summary()
    what = f"completing {attribution.result.query.partial!r}" if attribution.result.completing else "next word"
    lines.append(f"{what}; context {summary['tokens']} units, {summary['words']} words, {summary['chars']} chars"
                 + (f" (truncated: the first {summary['dropped_chars']} chars were not read)" if summary["truncated"] else "")
                 + ("; with the continuous cache over the text" if attribution.result.text_cache else "; the model alone"))
    for rank, entry in enumerate(attribution.predictions, 1):
        mark = "*" if rank - 1 == chosen else " "
        lines.append(f"{mark}{rank:>2}. {entry.prediction.word!r:<18} p={entry.prediction.probability:.4f}  {_reach_line(entry)}")
    if not attribution.predictions:
        return "\n".join(lines + ["(no prediction)"])
    entry = attribution.predictions[chosen]
    pointed = _pointed(attribution, entry)
    lines.append(f"\ninfluence of the text on {entry.prediction.word!r} ({attribution.method}; colour = log10 of influence "
                 f"relative to the strongest unit, {DECADES} decades; '|' marks the threshold reach"
                 + ("; underlined: where the cache's pointer copies the word from" if pointed and color else "") + "):")
    top = float(entry.influence.max()) if entry.influence.size else 0.0
    reach_unit = len(attribution.units) - entry.reach.tokens if entry.reach.tokens else None
    text = attribution.result.query.context
    pieces, cursor = [], 0
    for index, ((unit_text, start, end), score) in enumerate(zip(attribution.units, entry.influence)):
        if start > cursor:
            pieces.append(text[cursor:start])
        if index == reach_unit:
            pieces.append("\x1b[1;33m|\x1b[0m" if color else "|")
        shown = text[start:end]
        if color:
            code = _RAMP[min(len(_RAMP) - 1, int(level(float(score), top) * (len(_RAMP) - 1)))]
            foreground = "\x1b[97m" if code not in (236, 237) else ""
            underline = "\x1b[4m" if index in pointed else ""
            shown = "".join(f"\x1b[48;5;{code}m{foreground}{underline}{part}\x1b[0m" if part else "\n"
                            for part in shown.split("\n"))
        pieces.append(shown)
        cursor = max(cursor, end)
    pieces.append(text[cursor:])
    lines.append("".join(pieces) + ("\x1b[0m" if color else ""))
    if color:
        legend = "".join(f"\x1b[48;5;{code}m  \x1b[0m" for code in _RAMP)
        lines.append(f"\n1e-{DECADES} {legend} 1 (of the strongest unit)")
    else:
        ranked = sorted(zip(attribution.word_scores(entry.influence), attribution.words), key=lambda item: -item[0])[:10]
        lines.append("\nstrongest words: " + ", ".join(f"{word!r} {score / (ranked[0][0] or 1):.3f}" for score, (word, _, _) in ranked))
    if entry.pointer is not None and entry.pointer.positions:
        strongest = sorted(entry.pointer.positions, key=lambda position: -position.share)[:10]
        lines.append("cache pointer (copies the word from): " + ", ".join(
            f"{position.text!r} at char {position.start} ({position.share:.1%})" for position in strongest))
    return "\n".join(lines)


def _svg_profile(profile: list[float], width: int = 520, height: int = 160) -> str:
    """A log-scale line chart of influence by distance, as inline SVG."""
    points = [(d, v) for d, v in enumerate(profile, 1) if v > 0]
    if not points:
        return "<p>(no influence)</p>"
    low = max(min(v for _, v in points), 1e-8)
    span = max(math.log10(1 / low), 1e-9)
    far = max(d for d, _ in points)
    coords = " ".join(f"{40 + (width - 50) * (math.log10(d) / max(math.log10(far), 1e-9) if far > 1 else 0):.1f},"
                      f"{10 + (height - 30) * (-math.log10(v) / span):.1f}" for d, v in points)
    ticks = []
    for power in range(0, int(math.log10(far)) + 1):
        x = 40 + (width - 50) * (power / max(math.log10(far), 1e-9))
        ticks.append(f'<text x="{x:.0f}" y="{height - 4}" font-size="10" text-anchor="middle">{10 ** power}</text>')
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="influence by distance">'
            f'<rect x="40" y="10" width="{width - 50}" height="{height - 30}" fill="#fafafa" stroke="#ccc"/>'
            f'<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="{coords}"/>'
            f'<text x="2" y="16" font-size="10">1</text><text x="2" y="{height - 20}" font-size="10">{low:.0e}</text>'
            + "".join(ticks) + "</svg>")


def render_html(attribution: Attribution, model_name: str = "") -> str:
    """A self-contained page: the predictions, the text coloured by influence for each, and decay profiles."""
    text = attribution.result.query.context
    sections = []
    for rank, entry in enumerate(attribution.predictions, 1):
        top = float(entry.influence.max()) if entry.influence.size else 0.0
        reach_unit = len(attribution.units) - entry.reach.tokens if entry.reach.tokens else None
        spans, cursor = [], 0
        pointed = _pointed(attribution, entry)
        for index, ((_, start, end), score) in enumerate(zip(attribution.units, entry.influence)):
            if start > cursor:
                spans.append(html.escape(text[cursor:start]))
            if index == reach_unit:
                spans.append('<span class="reach" title="threshold reach">|</span>')
            alpha = level(float(score), top)
            pointer = ' class="pointer"' if index in pointed else ""
            spans.append(f'<span{pointer} style="background:rgba(214,39,40,{alpha:.3f})" title="{float(score):.3e}">'
                         f"{html.escape(text[start:end])}</span>")
            cursor = max(cursor, end)
        spans.append(html.escape(text[cursor:]))
        faith = ""
        if entry.faithfulness:
            faith = f"<li>filler beyond the 99% reach moves log P by {entry.faithfulness['logprob_change']:+.3f}</li>"
        r = entry.reach
        sections.append(
            f"<section><h2>{rank}. {html.escape(entry.prediction.word)} "
            f"<small>p = {entry.prediction.probability:.4f}</small></h2>"
            f"<ul><li>threshold reach ({r.threshold:g}): {r.tokens} units, {r.words} words, {r.chars} characters</li>"
            f"<li>90% of influence within {r.mass90_tokens} units ({r.mass90_words} words); 99% within {r.mass99_tokens} units ({r.mass99_words} words)</li>"
            f"{f'<li>{html.escape(_pointer_line(entry.pointer))}</li>' if entry.pointer is not None else ''}{faith}</ul>"
            f'<div class="text">{"".join(spans)}</div>'
            f"<h3>influence by distance (log-log)</h3>{_svg_profile(entry.profile())}</section>")
    summary = attribution.context_summary()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Reach: gradient influence</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
.text {{ white-space: pre-wrap; font-family: ui-monospace, monospace; border: 1px solid #ddd; padding: .75rem; }}
.reach {{ color: #b8860b; font-weight: bold; }}
.pointer {{ outline: 2px solid #1f77b4; outline-offset: -1px; }}
small {{ color: #666; font-weight: normal; }}
</style></head><body>
<h1>Gradient reach</h1>
<p>Model {html.escape(model_name)}; method {attribution.method}; context {summary['tokens']} units, {summary['words']} words,
{summary['chars']} characters{' (truncated)' if summary['truncated'] else ''}. Colour: log10 of each unit's influence relative to the
strongest, over {DECADES} decades. The model reads the text in evaluation mode from a zero state.
<span class="pointer">Boxed</span>: the units of the text the continuous cache copies the word from (its pointer).</p>
{''.join(sections)}
</body></html>
"""
