"""Is the reach faithful? How far a predicted word's log-probability moves when the text beyond its reach is changed.

Attribution's `verify` asks this of every prediction: the text beyond the
99% mass reach is replaced by neutral filler of the same length (frequent
function words, `FILLER`, line breaks kept where they were), and cut off
(the rest read from a zero state as if only it had been sent); the word is
scored exactly both times, as it was predicted (with the text cache when it
was). A faithful reach leaves both changes small.
"""

from __future__ import annotations

from lm.infer.predictor import Predictor, WordPrediction
from lm.infer.query import Query
from lm.infer.reach import Reach

__all__ = ["FILLER", "faithfulness"]

# Neutral filler for the faithfulness check: frequent function words.
FILLER = "the of and in to a was is for on as by with at from that it "


def faithfulness(predictor: Predictor, query: Query, spans: list[tuple[int, int]], reach: Reach,
                 prediction: WordPrediction, temperature: float = 1.0, text_cache: bool = False) -> dict:
    """How far log P(word) moves when the text beyond the 99% mass reach is replaced by neutral filler of the same
    length (`logprob_change`), and when it is cut off, the rest read from a zero state as if only it had been sent
    (`cut`). Both scored as the word was (with the text cache when `text_cache`). `spans` are the context's units'
    offsets into `query.context`."""
    n = len(spans)
    keep_from = spans[n - reach.mass99_tokens][0] if reach.mass99_tokens else len(query.context)
    if keep_from <= 0:
        return {"replaced_chars": 0, "logprob": prediction.logprob, "logprob_change": 0.0,
                "cut": {"removed_chars": 0, "logprob": prediction.logprob, "logprob_change": 0.0}}
    kept = query.text[keep_from:]
    head = query.text[:keep_from]
    filler = (FILLER * (len(head) // len(FILLER) + 1))[: len(head)]
    # Keep line breaks where they were, so the text keeps its shape.
    filler = "".join("\n" if original == "\n" else new for original, new in zip(head, filler))
    if kept and not kept[0].isspace() and filler and not filler[-1].isspace():
        filler = filler[:-1] + " "
    changed = predictor.score_word(filler + kept, prediction.word, temperature, text_cache)  # as the word was scored
    cut = predictor.score_word(kept, prediction.word, temperature, text_cache)
    return {"replaced_chars": keep_from, "logprob": changed, "logprob_change": changed - prediction.logprob,
            "cut": {"removed_chars": keep_from, "logprob": cut, "logprob_change": cut - prediction.logprob}}
