"""Next-word accuracy: keyboard-style recall@k of the predictor along a held-out text."""

from __future__ import annotations

import bisect
import math
import random
from typing import NamedTuple

import torch
from tqdm import tqdm

from lm.checkpoint import Checkpoint
from lm.infer.predictor import Predictor
from lm.infer.query import make_query, word_at
from lm.infer.reads import ContextState

__all__ = ["PairedAccuracy", "checkpoint_accuracy", "next_word_accuracy", "paired_accuracy", "sampled_positions",
           "sign_test", "word_positions"]


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
                       beam_width: int = 16, progress: bool = False, text_cache: bool = True, keep_ranks: bool = False) -> dict:
    """Keyboard-style recall@k: at each word start of normalised `text` (or a seeded sample), is the true
    next word among the top k predicted from all the text before it (read as one stream from a zero state)?

    With `keep_ranks` the result also holds "ranks": at each scored position, the true word's rank among the
    max(ks) predictions (1 for the first), 0 when it is not among them (what `paired_accuracy` compares)."""
    candidates = word_positions(text)
    chosen = sampled_positions(text, positions, seed)
    tokenizer, model = predictor.tokenizer, predictor.model
    ids, spans = tokenizer.encode_with_offsets(text)
    ends = [end for _, end in spans]
    hits = {k: 0 for k in ks}
    ranks: list[int] = []
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
        ranks.append(words.index(truth) + 1 if truth in words else 0)
    total = max(len(chosen), 1)
    return {"positions": len(chosen), "of": len(candidates), "seed": seed if len(chosen) < len(candidates) else None,
            "cache": remember, **{f"top{k}": hits[k] / total for k in ks}, **({"ranks": ranks} if keep_ranks else {})}


class PairedAccuracy(NamedTuple):
    """Two predictors' top-k at the same positions, compared position by position."""

    k: int
    gained: int  # positions where the second's top k holds the true word and the first's does not
    lost: int  # the reverse
    p_value: float  # exact two-sided sign test on those discordant positions (McNemar's exact test)

    def as_dict(self) -> dict:
        return self._asdict()

    def describe(self, first: str = "the model alone", second: str = "the cache") -> str:
        """One line: how many positions each finds that the other misses, and the test's p."""
        return (f"top-{self.k}: {second} finds the true word where {first} misses it at {self.gained:,} positions, "
                f"the reverse at {self.lost:,} (sign test p = {self.p_value:.2g})")


def paired_accuracy(first: list[int], second: list[int], ks: tuple[int, ...] = (1, 3, 5)) -> list[PairedAccuracy]:
    """Compare two lists of ranks (`next_word_accuracy`'s "ranks", same positions) at each k.

    Both were scored on the same positions, so only the positions where they
    disagree say which is better; the sign test asks how likely a split at
    least this uneven would be if each disagreement went either way with
    probability 1/2. Far more sensitive than comparing the two percentages:
    most positions are hits or misses for both.
    """
    if len(first) != len(second):
        raise ValueError(f"ranks of {len(first)} and {len(second)} positions cannot be paired")
    results = []
    for k in ks:
        gained = sum(1 for a, b in zip(first, second) if 0 < b <= k and not 0 < a <= k)
        lost = sum(1 for a, b in zip(first, second) if 0 < a <= k and not 0 < b <= k)
        results.append(PairedAccuracy(k, gained, lost, sign_test(gained, lost)))
    return results


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided p-value of `wins` against `losses` when each is equally likely (1.0 when both are 0)."""
    trials, fewer = wins + losses, min(wins, losses)
    if trials == 0:
        return 1.0
    tail = sum(math.comb(trials, i) for i in range(fewer + 1)) / 2**trials
    return min(1.0, 2 * tail)


def checkpoint_accuracy(checkpoint: Checkpoint, text: str, positions: int) -> dict:
    """`next_word_accuracy` of a checkpoint's model on `positions` seeded word starts of `text` (seed 0, no prefix
    cache): what a training run reports after training (`train_run`'s `accuracy`)."""
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, cache_size=0)
    return next_word_accuracy(predictor, text, positions=positions, seed=0)
