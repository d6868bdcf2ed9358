"""Views of an attribution: a terminal heatmap and a self-contained HTML page.

Influence falls off by orders of magnitude over a text, so colours follow
its logarithm: the strongest unit is hottest and anything below 1e-4 of it
is uncoloured. A view colours units, or each word or sentence by the sum of
its units' influence (the JSON's word_influence and sentence_influence). With the continuous cache, the earlier occurrences its
pointer copies the word from are marked apart from the colours (underlined
in a terminal, boxed in HTML).
"""

from __future__ import annotations

import html
import math

from typing import NamedTuple

from lm.infer.attribution import Attribution

__all__ = ["level", "render_terminal", "render_html", "DECADES", "VIEWS", "Piece", "pieces"]

VIEWS = ("units", "words", "sentences")  # what one coloured piece of the text is

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


def _figures_line(attribution: Attribution, entry) -> str:
    """The method's own figures on one prediction (occlusion's exact reach, integrated gradients' completeness), or ''."""
    figures = entry.figures
    objective = "log P" if attribution.foil is None else "log P - log P(foil)"
    parts = []
    if figures.exact_reach is not None:
        words, _ = attribution.distance(figures.exact_reach)
        parts.append(f"occlusion reach {figures.exact_reach} units / {words} words: keeping that much or more, replacing "
                     f"the rest by filler moves {objective} by under {figures.tolerance:g} nats")
    if figures.completeness is not None:
        check = figures.completeness
        parts.append(f"completeness: the attributions sum to {check.attribution_sum:+.4f}, {objective} changes by "
                     f"{check.input_value - check.baseline_value:+.4f} from the baseline (gap {check.gap:+.1e})")
    return ";  ".join(parts)


def _method_line(attribution: Attribution) -> str:
    """The method, what it cost against the prediction, and the foil."""
    cost = attribution.cost
    line = f"method {attribution.method}: {cost.method_ms:.0f} ms"
    if cost.prediction_ms > 0:
        line += f", {cost.method_ms / cost.prediction_ms:.1f}x the prediction's {cost.prediction_ms:.0f} ms"
    if attribution.foil is not None:
        foil = attribution.foil
        line += (f"; against {foil.word!r} (log P {foil.logprob:.3f}): each word's log P minus the foil's"
                 if foil.logprob is not None else f"; {foil.word!r} has probability 0 here: no contrast")
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


class Piece(NamedTuple):
    """One coloured stretch of the context: a unit, a word or a sentence, with its (summed) influence."""

    start: int  # offsets into the read text (result.query.context)
    end: int
    score: float
    pointed: bool  # the cache's pointer copies the word from (part of) it
    reach_mark: bool  # the threshold reach begins here ('|' before it)


def pieces(attribution: Attribution, entry, view: str = "units") -> list[Piece]:
    """The context cut into units, words or sentences for one prediction, each with its influence summed over its
    units. The threshold reach is marked before its first unit or word (a sentence view has no mark: the reach is
    counted in units and words)."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, not {view!r}")
    pointed = _pointed(attribution, entry)
    if view == "units":
        spans = [(start, end) for _, start, end in attribution.units]
        scores = [float(score) for score in entry.influence]
        marked = pointed
        reach = len(spans) - entry.reach.tokens if entry.reach.tokens else None
    else:
        owner = attribution.unit_word if view == "words" else [
            attribution.word_sentence[word] if word >= 0 else -1 for word in attribution.unit_word]
        spans = [(start, end) for _, start, end in (attribution.words if view == "words" else attribution.sentences)]
        scores = (attribution.word_scores if view == "words" else attribution.sentence_scores)(entry.influence)
        marked = {owner[unit] for unit in pointed if owner[unit] >= 0}
        reach = len(spans) - entry.reach.words if view == "words" and entry.reach.words else None
    return [Piece(start, end, score, index in marked, index == reach)
            for index, ((start, end), score) in enumerate(zip(spans, scores))]


def render_terminal(attribution: Attribution, chosen: int = 0, color: bool = True, view: str = "units") -> str:
    """Predictions with their reach, then the text coloured by influence on the chosen prediction: per unit, or
    summed over each word or sentence (`view`)."""
    lines = []
    summary = attribution.context_summary()
    what = f"completing {attribution.result.query.partial!r}" if attribution.result.completing else "next word"
    lines.append(f"{what}; context {summary['tokens']} units, {summary['words']} words, {summary['chars']} chars"
                 + (f" (truncated: the first {summary['dropped_chars']} chars were not read)" if summary["truncated"] else "")
                 + ("; with the continuous cache over the text" if attribution.result.text_cache else "; the model alone"))
    lines.append(_method_line(attribution))
    for rank, entry in enumerate(attribution.predictions, 1):
        mark = "*" if rank - 1 == chosen else " "
        lines.append(f"{mark}{rank:>2}. {entry.prediction.word!r:<18} p={entry.prediction.probability:.4f}  {_reach_line(entry)}")
        figures = _figures_line(attribution, entry)
        if figures:
            lines.append(f"     {figures}")
    if not attribution.predictions:
        return "\n".join(lines + ["(no prediction)"])
    entry = attribution.predictions[chosen]
    pointed = _pointed(attribution, entry)  # for the legend only; pieces() marks them
    summed = "" if view == "units" else f"summed over each {view[:-1]}, "
    lines.append(f"\ninfluence of the text on {entry.prediction.word!r} ({attribution.method}; colour = log10 of influence "
                 f"{summed}relative to the strongest {view[:-1]}, {DECADES} decades"
                 + ("" if view == "sentences" else "; '|' marks the threshold reach")
                 + ("; underlined: where the cache's pointer copies the word from" if pointed and color else "") + "):")
    shown_pieces = pieces(attribution, entry, view)
    top = max((piece.score for piece in shown_pieces), default=0.0)
    text = attribution.result.query.context
    out, cursor = [], 0
    for piece in shown_pieces:
        if piece.start > cursor:
            out.append(text[cursor:piece.start])
        if piece.reach_mark:
            out.append("\x1b[1;33m|\x1b[0m" if color else "|")
        shown = text[max(piece.start, cursor):piece.end]
        if color:
            code = _RAMP[min(len(_RAMP) - 1, int(level(piece.score, top) * (len(_RAMP) - 1)))]
            foreground = "\x1b[97m" if code not in (236, 237) else ""
            underline = "\x1b[4m" if piece.pointed else ""
            shown = "".join(f"\x1b[48;5;{code}m{foreground}{underline}{part}\x1b[0m" if part else "\n"
                            for part in shown.split("\n"))
        out.append(shown)
        cursor = max(cursor, piece.end)
    out.append(text[cursor:])
    lines.append("".join(out) + ("\x1b[0m" if color else ""))
    if color:
        legend = "".join(f"\x1b[48;5;{code}m  \x1b[0m" for code in _RAMP)
        lines.append(f"\n1e-{DECADES} {legend} 1 (of the strongest {view[:-1]})")
    else:
        ranked = sorted(zip(attribution.word_scores(entry.influence), attribution.words), key=lambda item: -item[0])[:10]
        lines.append("\nstrongest words: " + ", ".join(f"{word!r} {score / (ranked[0][0] or 1):.3f}" for score, (word, _, _) in ranked))
    if len(attribution.sentences) > 1:
        sentence_scores = attribution.sentence_scores(entry.influence)
        total = sum(sentence_scores) or 1.0
        ranked = sorted(zip(sentence_scores, attribution.sentences), key=lambda item: -item[0])[:3]
        lines.append("strongest sentences (share of the influence): " + "; ".join(
            f"{score / total:.1%} {_clip(sentence)!r}" for score, (sentence, _, _) in ranked))
    if entry.pointer is not None and entry.pointer.positions:
        strongest = sorted(entry.pointer.positions, key=lambda position: -position.share)[:10]
        lines.append("cache pointer (copies the word from): " + ", ".join(
            f"{position.text!r} at char {position.start} ({position.share:.1%})" for position in strongest))
    return "\n".join(lines)


def _clip(sentence: str, width: int = 60) -> str:
    """A sentence shortened to about `width` characters for a one-line summary."""
    sentence = " ".join(sentence.split())
    return sentence if len(sentence) <= width else sentence[:width - 1] + "…"


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


_VIEW_TITLES = {"units": "per unit", "words": "per word (its units' influence summed)",
                "sentences": "per sentence (its words' influence summed)"}


def _html_text(attribution: Attribution, entry, view: str) -> str:
    """The context as spans coloured by influence (one per unit, word or sentence), the reach marked, the pointer boxed."""
    text = attribution.result.query.context
    shown_pieces = pieces(attribution, entry, view)
    top = max((piece.score for piece in shown_pieces), default=0.0)
    spans, cursor = [], 0
    for piece in shown_pieces:
        if piece.start > cursor:
            spans.append(html.escape(text[cursor:piece.start]))
        if piece.reach_mark:
            spans.append('<span class="reach" title="threshold reach">|</span>')
        pointer = ' class="pointer"' if piece.pointed else ""
        spans.append(f'<span{pointer} style="background:rgba(214,39,40,{level(piece.score, top):.3f})" '
                     f'title="{piece.score:.3e}">{html.escape(text[max(piece.start, cursor):piece.end])}</span>')
        cursor = max(cursor, piece.end)
    spans.append(html.escape(text[cursor:]))
    return "".join(spans)


def render_html(attribution: Attribution, model_name: str = "") -> str:
    """A self-contained page: the predictions, the text coloured by influence for each (per unit, per word and per
    sentence, one tab each), and decay profiles."""
    sections = []
    for rank, entry in enumerate(attribution.predictions, 1):
        faith = ""
        if entry.faithfulness:
            faith = f"<li>filler beyond the 99% reach moves log P by {entry.faithfulness['logprob_change']:+.3f}</li>"
        figures = _figures_line(attribution, entry)
        if figures:
            faith += "".join(f"<li>{html.escape(part)}</li>" for part in figures.split(";  "))
        r = entry.reach
        sections.append(
            f"<section><h2>{rank}. {html.escape(entry.prediction.word)} "
            f"<small>p = {entry.prediction.probability:.4f}</small></h2>"
            f"<ul><li>threshold reach ({r.threshold:g}): {r.tokens} units, {r.words} words, {r.chars} characters</li>"
            f"<li>90% of influence within {r.mass90_tokens} units ({r.mass90_words} words); 99% within {r.mass99_tokens} units ({r.mass99_words} words)</li>"
            f"{f'<li>{html.escape(_pointer_line(entry.pointer))}</li>' if entry.pointer is not None else ''}{faith}</ul>"
            + "".join(f'<details{" open" if view == "units" else ""}><summary>{_VIEW_TITLES[view]}</summary>'
                      f'<div class="text" data-view="{view}">{_html_text(attribution, entry, view)}</div></details>'
                      for view in VIEWS)
            + f"<h3>influence by distance (log-log)</h3>{_svg_profile(entry.profile())}</section>")
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
<p>Model {html.escape(model_name)}; {html.escape(_method_line(attribution))}; context {summary['tokens']} units, {summary['words']} words,
{summary['chars']} characters{' (truncated)' if summary['truncated'] else ''}. Colour: log10 of each unit's influence relative to the
strongest, over {DECADES} decades; per word and per sentence, the sum over its units. The model reads the text in evaluation mode from a zero state.
<span class="pointer">Boxed</span>: the units of the text the continuous cache copies the word from (its pointer).</p>
{''.join(sections)}
</body></html>
"""
