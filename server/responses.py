"""JSON bodies of the predict endpoint, built from lm's results (no tensor code here)."""

from __future__ import annotations

from lm.infer.attribution import Attribution
from lm.infer.predictor import PredictionResult
from lm.tokenizers import Tokenizer

__all__ = ["attribution_body", "prediction_body"]


def _unknown(tokenizer: Tokenizer, text: str) -> int:
    """Units of the text the model reads as unknown (char models) or spells as bytes (subword models)."""
    return sum(tokenizer.unit_text(unit) is None for unit in tokenizer.encode(text))


def _unknown_chars(tokenizer: Tokenizer, text: str) -> int:
    """Characters of the text the model never saw: those covered by an unknown or byte unit (2-4 bytes are one character)."""
    units, spans = tokenizer.encode_with_offsets(text)
    return len({position for unit, (start, end) in zip(units, spans) if tokenizer.unit_text(unit) is None
                for position in range(start, end)})


def prediction_body(model: str, tokenizer: Tokenizer, result: PredictionResult) -> dict:
    """The body for `"attribution": "none"`."""
    context = result.query.context
    return {
        "model": model,
        "text": result.cut.text,
        "context": {**result.context_summary(), "unknown_units": _unknown(tokenizer, context),
                    "unknown_chars": _unknown_chars(tokenizer, result.cut.text)},
        "completing": result.completing,
        "partial": result.query.partial,
        "predictions": [p.as_dict() for p in result.predictions],
        "cache": result.text_cache,
    }


def attribution_body(model: str, tokenizer: Tokenizer, attribution: Attribution, full: bool) -> dict:
    """The body for `"attribution": "summary"` or `"full"`."""
    body = {"model": model, **attribution.as_dict(full=full)}
    body["context"]["unknown_units"] = _unknown(tokenizer, attribution.result.query.context)
    body["context"]["unknown_chars"] = _unknown_chars(tokenizer, attribution.result.cut.text)
    return body
