"""Next-word accuracy: keyboard-style recall@k of the predictor along a held-out text."""

from __future__ import annotations

import bisect
import math
import random
from typing import Iterator, NamedTuple

from tqdm import tqdm

from lm.checkpoint import Checkpoint
from lm.infer.predictor import Predictor
from lm.infer.query import Query, make_query, word_at
from lm.infer.reads import ContextState

__all__ = ["PROMPT_WORDS", "PairedAccuracy", "PromptOutcome", "checkpoint_accuracy", "describe_prompt_lengths",
           "next_word_accuracy", "paired_accuracy", "prompt_length_accuracy", "prompt_of", "prompt_positions",
           "sampled_positions", "sign_test", "word_positions"]

# The prompt lengths (in words) served quality is measured at: a few typed words to a long pasted text.
PROMPT_WORDS = (5, 12, 30, 100, 300, 1000)


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
    hits = {k: 0 for k in ks}
    ranks: list[int] = []
    remember = text_cache and predictor.text_cache_settings is not None  # mix in the continuous cache over the text read so far
    for position, context, query in _stream_contexts(predictor, text, chosen, remember, progress):
        result = predictor.predict_from(context, query, k=max(ks), beam_width=beam_width, text_cache=remember)
        truth = word_at(text, position)
        words = [p.word for p in result.predictions]
        for k in ks:
            hits[k] += truth in words[:k]
        ranks.append(words.index(truth) + 1 if truth in words else 0)
    total = max(len(chosen), 1)
    return {"positions": len(chosen), "of": len(candidates), "seed": seed if len(chosen) < len(candidates) else None,
            "cache": remember, **{f"top{k}": hits[k] / total for k in ks}, **({"ranks": ranks} if keep_ranks else {})}


def _stream_contexts(predictor: Predictor, text: str, chosen: list[int], text_cache: bool, progress: bool
                     ) -> Iterator[tuple[int, ContextState, Query]]:
    """Walk `text` as one stream from a zero state, yielding at each chosen word start the context read so far (with
    the text cache's memory when `text_cache` and the predictor has settings) and the query there."""
    tokenizer = predictor.tokenizer
    ids, spans = tokenizer.encode_with_offsets(text)
    ends = [end for _, end in spans]
    state = predictor.zero_state()
    read = 0  # units read so far (after the leading line break)
    pending = [tokenizer.newline_id]
    logits = None
    remember = text_cache and predictor.text_cache_settings is not None
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
            state, logits = predictor.read(pending, state)
            pending = []
        assert logits is not None
        # The context's units are not kept (the stream is long): no lookahead, which this walk never uses.
        yield position, ContextState(None, count, state, logits, line_start=predictor.ends_line(ids[count - 1] if count else None),
                                     memory=memory), query


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
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0)
    return next_word_accuracy(predictor, text, positions=positions, seed=0)


class PromptOutcome(NamedTuple):
    """One prediction after one prompt, judged against the word that really came next."""

    rank: int  # the true word's rank among the predictions (1 for the first), 0 when it is not among them
    logprob: float  # exact log P(true word | prompt) as served
    repeats: bool  # the top word is one of the prompt's own words


def prompt_positions(text: str, positions: int, seed: int = 0, min_words: int = 0) -> list[int]:
    """A seeded sample of `positions` word starts of `text` (text order) with at least `min_words` words before them
    and a next word that has a letter or digit (what a person typing waits for; punctuation is left out)."""
    starts = word_positions(text)
    candidates = [start for index, start in enumerate(starts)
                  if index >= min_words and any(char.isalnum() for char in word_at(text, start))]
    if positions < len(candidates):
        return sorted(random.Random(seed).sample(candidates, positions))
    return candidates


def prompt_of(text: str, position: int, words: int, starts: list[int] | None = None) -> str:
    """The `words` whitespace-separated words of `text` before `position` (a word start), with the whitespace
    after the last: what a person would have typed before the next word. `starts`: `word_positions(text)`, when
    the caller has them."""
    starts = word_positions(text) if starts is None else starts
    index = bisect.bisect_left(starts, position)  # the words before `position` are starts[:index]
    return text[starts[index - words] if index >= words else 0 : position]


def _outcome(predictor: Predictor, context: ContextState, query, truth: str, k: int, beam_width: int,
             text_cache: bool, prompt_words: set[str] | None = None) -> PromptOutcome:
    """Predict after `context` as served, and the true word's rank and exact log-probability there."""
    result = predictor.predict_from(context, query, k=k, beam_width=beam_width, text_cache=text_cache)
    words = [p.word for p in result.predictions]
    if truth in words:
        rank = words.index(truth) + 1
        logprob = result.predictions[rank - 1].logprob
    else:
        rank = 0
        (logprob,) = predictor.score_more(result, [truth])
    repeats = bool(words) and prompt_words is not None and words[0] in prompt_words
    return PromptOutcome(rank, float(logprob), repeats)


def _bucket(name: str, words: int | None, alone: list[PromptOutcome], mixed: list[PromptOutcome] | None,
            ks: tuple[int, ...]) -> dict:
    """One row of the prompt-length table: top-k and log loss of the model alone and (when given) with the text
    cache, compared position by position."""
    def figures(outcomes: list[PromptOutcome]) -> dict:
        count = max(len(outcomes), 1)
        finite = [o.logprob for o in outcomes if math.isfinite(o.logprob)]
        return {**{f"top{k}": sum(0 < o.rank <= k for o in outcomes) / count for k in ks},
                "nats_per_word": -sum(finite) / max(len(finite), 1), "unscored": len(outcomes) - len(finite),
                "repeats_prompt_word": sum(o.repeats for o in outcomes) / count}

    row = {"prompt": name, "words": words, "positions": len(alone), "alone": figures(alone)}
    if mixed is not None:
        row["text_cache"] = figures(mixed)
        row["text_cache_against_alone"] = [c.as_dict() for c in paired_accuracy([o.rank for o in alone],
                                                                                  [o.rank for o in mixed], ks)]
        gains = [float(c.logprob - a.logprob) for a, c in zip(alone, mixed)
                 if math.isfinite(a.logprob) and math.isfinite(c.logprob)]
        better, worse = sum(1 for g in gains if g > 0), sum(1 for g in gains if g < 0)
        row["logprob_gain"] = {"mean": sum(gains) / max(len(gains), 1), "better": better, "worse": worse,
                               "p_value": sign_test(better, worse)}
    return row


def prompt_length_accuracy(predictor: Predictor, text: str, lengths: tuple[int, ...] = PROMPT_WORDS, positions: int = 200,
                           seed: int = 0, ks: tuple[int, ...] = (1, 3, 5), beam_width: int = 16, stream: bool = True,
                           progress: bool = False, text_cache: bool = True) -> list[dict]:
    """Served next-word quality by prompt length: at the same seeded positions of `text`, the prompt is the N words
    before the position, for each N in `lengths` (and, with `stream`, all of the text before it read as one stream,
    as `next_word_accuracy` reads it); each prompt predicted through the served path with the model alone and, when
    `text_cache` and the predictor has text-cache settings, with the text cache (whatever its default); the true
    word's rank and exact log-probability compared position by position.

    A prompt is predicted as a request would be (`Predictor.predict`: normalised, read from a zero state), the
    prefix cache shared between the two switches of one prompt (it keeps states, not answers)."""
    chosen = prompt_positions(text, positions, seed, min_words=max(lengths, default=0))
    with_text_cache = text_cache and predictor.text_cache_settings is not None
    k = max(ks)
    rows = []
    tokenizer = predictor.tokenizer
    starts = word_positions(text)
    total = len(lengths) * len(chosen)
    bar = tqdm(total=total, disable=not progress, desc="prompt lengths", unit="prompt", leave=False)
    for words in lengths:
        alone, mixed = [], []
        for position in chosen:
            prompt = prompt_of(text, position, words, starts)
            truth = word_at(text, position)
            query = make_query(prompt, tokenizer)
            context = predictor.context_state(tuple(tokenizer.encode(query.context)))
            seen = {word for word in query.context.split()}
            alone.append(_outcome(predictor, context, query, truth, k, beam_width, False, seen))
            if with_text_cache:
                mixed.append(_outcome(predictor, context, query, truth, k, beam_width, True, seen))
            bar.update()
        rows.append(_bucket(f"{words} words", words, alone, mixed if with_text_cache else None, ks))
    bar.close()
    if stream:
        alone_run = _stream_outcomes(predictor, text, chosen, k, beam_width, False, progress)
        mixed_run = _stream_outcomes(predictor, text, chosen, k, beam_width, True, progress) if with_text_cache else None
        rows.append(_bucket("stream", None, alone_run, mixed_run, ks))
    return rows


def _stream_outcomes(predictor: Predictor, text: str, chosen: list[int], k: int, beam_width: int, text_cache: bool,
                     progress: bool) -> list[PromptOutcome]:
    """Each chosen position predicted from all of `text` before it, read as one stream (as `next_word_accuracy`)."""
    outcomes = []
    for position, context, query in _stream_contexts(predictor, text, chosen, text_cache, progress):
        outcomes.append(_outcome(predictor, context, query, word_at(text, position), k, beam_width, text_cache))
    return outcomes


def describe_prompt_lengths(rows: list[dict]) -> str:
    """`prompt_length_accuracy`'s rows as a table: top-1 and top-5 with the text cache / alone, the paired counts
    (gained/lost, sign test p), and the log loss in nats per word."""
    lines = [f"served next-word quality by prompt length ({rows[0]['positions'] if rows else 0} positions; "
             "with the text cache / the model alone):"]
    for row in rows:
        alone, mixed = row["alone"], row.get("text_cache")
        if mixed is None:
            lines.append(f"  {row['prompt']:>10}: top-1 {alone['top1']:.1%}  top-5 {alone['top5']:.1%}  "
                         f"{alone['nats_per_word']:.3f} nats/word (model alone)")
            continue
        paired = {c["k"]: c for c in row["text_cache_against_alone"]}
        cells = []
        for k in (1, 5):
            c = paired[k]
            cells.append(f"top-{k} {mixed[f'top{k}']:.1%} / {alone[f'top{k}']:.1%} "
                         f"(+{c['gained']} -{c['lost']}, p {c['p_value']:.2g})")
        lines.append(f"  {row['prompt']:>10}: {'  '.join(cells)}  {mixed['nats_per_word']:.3f} / "
                     f"{alone['nats_per_word']:.3f} nats/word")
    return "\n".join(lines)
