"""Latency of next-word prediction (k = 5) for contexts of 20, 200 and 1,000 words, cold and with the prefix cache warm,
and throughput when many texts are predicted in one batch.

    python bench/predict_speed.py --model runs/base [--corpus DIR] [--repeats 7]

Contexts are the words of the test split before seeded positions. Cold: the
cache is empty, so the whole context is read. Warm: the context was read just
before, and one more word is typed (a true next word of the text). Medians.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpora import load_corpus  # noqa: E402
from lm.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from lm.predict import Predictor  # noqa: E402
from lm.runner import set_threads  # noqa: E402


def contexts(text: str, words: int, count: int, seed: int) -> list[tuple[str, str]]:
    """`count` seeded (context of `words` words ending in a space, the next word) pairs from `text`."""
    tokens = text.replace("\n", " \n ").split(" ")
    spans = []
    rng = random.Random(seed)
    while len(spans) < count:
        end = rng.randrange(words + 1, len(tokens) - 2)
        chunk = " ".join(tokens[end - words * 2 : end]).replace(" \n ", "\n")
        kept = chunk.split(" ")[-words:]
        following = tokens[end].strip()
        if following and following != "\n":
            spans.append((" ".join(kept) + " ", following))
    return spans


def timed(function) -> float:
    begun = time.perf_counter()
    function()
    return time.perf_counter() - begun


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/base", help="run or checkpoint directory (default: runs/base)")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32, help="texts per batch for the throughput figure")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.model)
    except CheckpointError as error:
        print(f"predict_speed: error: {error} (train one first: python train.py --out runs/base)", file=sys.stderr)
        return 1
    text = load_corpus(args.corpus).test.text
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, cache_size=64)
    predictor.predict("Warm up the lookup tables. ")
    print(f"model {checkpoint.directory}: {checkpoint.model_config.cell} {checkpoint.model_config.num_layers}x"
          f"{checkpoint.model_config.hidden_dim}, {checkpoint.tokenizer.kind} vocabulary {checkpoint.tokenizer.vocab_size}")
    for words in (20, 200, 1000):
        samples = contexts(text, words, args.repeats, seed=words)
        cold, warm, units = [], [], []
        for context, following in samples:
            predictor.clear_cache()
            cold.append(timed(lambda: predictor.predict(context, k=5)))
            units.append(len(checkpoint.tokenizer.encode(context)))
            warm.append(timed(lambda: predictor.predict(context + following + " ", k=5)))
        print(f"{words:>5} words (~{statistics.median(units):,.0f} units): cold {statistics.median(cold) * 1000:7.1f} ms   "
              f"warm, one more word {statistics.median(warm) * 1000:7.1f} ms")
    texts = [context for context, _ in contexts(text, 200, args.batch, seed=7)]
    predictor.clear_cache()
    one_by_one = timed(lambda: [predictor.predict(t, k=5, use_cache=False) for t in texts])
    batched = timed(lambda: predictor.predict_many(texts, k=5))
    print(f"throughput, {args.batch} texts of 200 words: one by one {args.batch / one_by_one:.1f} texts/s, "
          f"one batch {args.batch / batched:.1f} texts/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
