"""Next-word accuracy: keyboard-style recall@k of the predictor along a held-out text."""

from __future__ import annotations

import bisect
import random

import torch
from tqdm import tqdm

from lm.checkpoint import Checkpoint
from lm.infer.predictor import Predictor
from lm.infer.query import make_query, word_at
from lm.infer.reads import ContextState

__all__ = ["checkpoint_accuracy", "next_word_accuracy", "sampled_positions", "word_positions"]


def word_positions(text: str) -> list[int]:
    """Offsets where a whitespace-separated word begins (the text start included)."""
    return [i for i, char in enumerate(text) if not char.isspace() and (i == 0 or text[i - 1].isspace())]


def sampled_positions(text: str, positions: int | None = None, seed: int = 0) -> list[int]:
    """The word starts `next_word_accuracy` scores: all of them, or a seeded sample of `positions`, in text order."""
    candidates = word_positions(text)
    if positions is not None and positions < len(candidates):
        return sorted(random.Random(seed).sample(candidates, positions))
    return candidates


def next_word_accuracy(predictor: Predictor, text: str, positions: int | None = None, seed: int = 0, ks: tuple[int, ...] = (1, 3, 5),
                       beam_width: int = 16, progress: bool = False, text_cache: bool = True) -> dict:
    """Keyboard-style recall@k: at each word start of normalised `text` (or a seeded sample), is the true
    next word among the top k predicted from all the text before it (read as one stream from a zero state)?"""
    candidates = word_positions(text)
    chosen = sampled_positions(text, positions, seed)
    tokenizer, model = predictor.tokenizer, predictor.model
    ids, spans = tokenizer.encode_with_offsets(text)
    ends = [end for _, end in spans]
    hits = {k: 0 for k in ks}
    state = model.init_state(1)
    read = 0  # units read so far (after the leading line break)
    pending = [tokenizer.newline_id]
    logits = None
    remember = text_cache and predictor.text_cache is not None  # mix in the continuous cache over the text read so far
    memory = None
    for position in tqdm(chosen, disable=not progress, desc="next-word accuracy", unit="word", leave=False):
        query = make_query(text[:position], tokenizer, normalized=True)
        cut = len(query.context)
        count = bisect.bisect_right(ends, cut)  # units wholly inside the context
        pending.extend(ids[read:count])
        read = count
        if pending and remember:
            state, logits, memory = predictor.read_remembering(pending, state, memory)
            pending = []
        elif pending:
            with torch.inference_mode():
                out, state = model(torch.tensor([pending], dtype=torch.long), state)
                logits = out[0, -1].float()
            pending = []
        assert logits is not None
        # The context's units are not kept (the stream is long): no lookahead, which this walk never uses.
        context = ContextState(None, count, state, logits, line_start=predictor.ends_line(ids[count - 1] if count else None),
                               memory=memory)
        result = predictor.predict_from(context, query, k=max(ks), beam_width=beam_width, text_cache=remember)
        truth = word_at(text, position)
        words = [p.word for p in result.predictions]
        for k in ks:
            hits[k] += truth in words[:k]
    total = max(len(chosen), 1)
    return {"positions": len(chosen), "of": len(candidates), "seed": seed if len(chosen) < len(candidates) else None,
            "cache": remember, **{f"top{k}": hits[k] / total for k in ks}}


def checkpoint_accuracy(checkpoint: Checkpoint, text: str, positions: int) -> dict:
    """`next_word_accuracy` of a checkpoint's model on `positions` seeded word starts of `text` (seed 0, no prefix
    cache): what a training run reports after training (`train_run`'s `accuracy`)."""
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, cache_size=0)
    return next_word_accuracy(predictor, text, positions=positions, seed=0)
