"""Is the reported reach true? Cut the text at the top word's 99%-mass reach and score the word again.

    python bench/reach_truth.py --model runs/base [--corpus DIR] [--contexts 100] [--words 250] [--seed 0]

At seeded positions of the test split, the prompt is the `--words` words
before the position (as `lm evaluate --prompt-words` cuts them). Each prompt
is attributed as served (`attribute`, k = 1, with the faithfulness check):
the top word's 99%-mass reach is taken, the text before it is cut off, the
rest is read from a zero state as if only it had been sent, and the word is
scored again through the same served path. The reach is true for that
context when log P(word) moves by less than `--tolerance` (0.1 nats).

Each context is measured twice, with the text cache (when the checkpoint
stores settings; forced on even for settings tuned only on a stream) and
with the model alone, and the fraction of true contexts is printed for
each, with the reach it cut at: with the cache it is the wider of the
gradient's and the cache's exact deletion reach (docs/REACH.md), and for
comparison the fraction when cutting at the gradient's own 99% reach (the
reach before the deletion reach existed) is also reported. The last line is
`true with the cache X of N; model alone Y of N`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpora import CorpusError  # noqa: E402
from lm.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from lm.infer.accuracy import prompt_of, prompt_positions, word_positions  # noqa: E402
from lm.infer.attribution import attribute  # noqa: E402
from lm.infer.predictor import Predictor  # noqa: E402
from lm.train.run import set_threads  # noqa: E402
from lm.train.tokens import load_streamed_corpus  # noqa: E402


def cut_change(predictor: Predictor, text: str, word: str, logprob: float, keep_units: int, text_cache: bool) -> float:
    """log P(word) after only the last `keep_units` units of `text`'s context, minus `logprob`."""
    from lm.infer.query import make_query

    query = make_query(text, predictor.tokenizer)
    _, spans = predictor.tokenizer.encode_with_offsets(query.context)
    start = spans[len(spans) - keep_units][0] if keep_units else len(query.context)
    return predictor.score_word(query.text[start:], word, text_cache=text_cache) - logprob


def measure(predictor: Predictor, texts: list[str], text_cache: bool, tolerance: float) -> dict:
    """The reach truth over `texts` with the text cache on or off."""
    true_reach, true_gradient, reaches, gradient_reaches, changes, seconds = 0, 0, [], [], [], []
    for text in texts:
        begun = time.perf_counter()
        result = attribute(predictor, text, k=1, verify=True, text_cache=text_cache)
        seconds.append(time.perf_counter() - begun)
        if not result.predictions:
            continue
        entry = result.predictions[0]
        change = entry.faithfulness["cut"]["logprob_change"]
        changes.append(abs(change))
        true_reach += abs(change) < tolerance
        reaches.append(entry.reach.mass99_words)
        gradient_reaches.append(entry.gradient_reach.mass99_words)
        if entry.gradient_reach.mass99_tokens == entry.reach.mass99_tokens:
            true_gradient += abs(change) < tolerance
        else:
            true_gradient += abs(cut_change(predictor, text, entry.prediction.word, entry.prediction.logprob,
                                            entry.gradient_reach.mass99_tokens, text_cache)) < tolerance
    return {"text_cache": text_cache, "contexts": len(changes), "true": true_reach, "true_at_gradient_reach": true_gradient,
            "median_abs_change": statistics.median(changes) if changes else None,
            "max_abs_change": max(changes) if changes else None,
            "median_mass99_words": statistics.median(reaches) if reaches else None,
            "median_gradient_mass99_words": statistics.median(gradient_reaches) if gradient_reaches else None,
            "median_seconds": statistics.median(seconds) if seconds else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="run or checkpoint directory")
    parser.add_argument("--corpus", default=None, help="corpus (default: the name the checkpoint stores)")
    parser.add_argument("--contexts", type=int, default=100, help="seeded contexts (default: 100)")
    parser.add_argument("--words", type=int, default=250, help="words of text before each prediction (default: 250)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.1, help="nats the cut may move log P (default: 0.1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.model)
        corpus = load_streamed_corpus(args.corpus or checkpoint.train_config.corpus)
    except (CheckpointError, CorpusError) as error:
        print(f"reach_truth: error: {error}", file=sys.stderr)
        return 1
    text = corpus.test.text
    starts = word_positions(text)
    texts = [prompt_of(text, position, args.words, starts)
             for position in prompt_positions(text, args.contexts, args.seed, min_words=args.words)]
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=checkpoint.text_cache_settings)
    rows = [measure(predictor, texts, False, args.tolerance)]
    if checkpoint.text_cache_settings is not None:
        rows.insert(0, measure(predictor, texts, True, args.tolerance))
    if args.json:
        print(json.dumps({"model": str(checkpoint.directory), "words": args.words, "tolerance": args.tolerance,
                          "rows": rows}, indent=2))
    for row in rows:
        what = "with the text cache" if row["text_cache"] else "model alone"
        print(f"{what}: cutting at the 99% reach (median {row['median_mass99_words']} words) moves log P by less than "
              f"{args.tolerance} nats in {row['true']} of {row['contexts']} contexts ({row['true'] / max(row['contexts'], 1):.0%}); "
              f"at the gradient's own 99% reach (median {row['median_gradient_mass99_words']} words) in "
              f"{row['true_at_gradient_reach']}; median |change| {row['median_abs_change']:.4f}, "
              f"max {row['max_abs_change']:.3f}; {row['median_seconds']:.2f} s per attribution")
    cached = rows[0] if rows[0]["text_cache"] else None
    alone = rows[-1]
    print(f"true with the cache {cached['true'] if cached else 'n/a'} of {cached['contexts'] if cached else 0}; "
          f"model alone {alone['true']} of {alone['contexts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
