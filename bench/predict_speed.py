"""Latency of next-word prediction (k = 5) for contexts of 20, 200 and 1,000 words, cold and with the prefix cache warm,
and throughput when many texts are predicted in one batch.

    python bench/predict_speed.py --model runs/base [--corpus DIR] [--contexts 20] [--repeats 3] [--cache on|off] [--words 200]
    python bench/predict_speed.py --model runs/base --compare-cache [--words 200]

Contexts are the words of the test split before seeded positions. Cold: the
cache is empty, so the whole context is read. Warm: the context was read just
before, and one more word is typed (a true next word of the text). Each
context is timed `repeats` times and keeps its median; the figure is the
median over contexts. Timing on a shared machine drifts, so the run also
times a fixed reference (one model step for 16 rows, the unit of a beam
step) before and after, and again right before every warm prediction: the
warm figure is also given in those interleaved reference steps, which stays
put while the machine's pace moves (8.4-8.6 steps in three runs whose warm
medians ranged from 10.0 to 12.4 ms).

`--cache on` (the default) predicts as served: with the continuous cache
over the text when the checkpoint stores settings; `--cache off` with the
model alone. The header says which. `--compare-cache` times both in one
run: every context is predicted cold and warm with the cache and with the
model alone, in alternating order, and the figure is the median over
contexts of each context's ratio (cache / alone), which the machine's drift
mostly cancels.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from corpora import load_corpus  # noqa: E402
from lm.checkpoint import Checkpoint, CheckpointError, load_checkpoint  # noqa: E402
from lm.cli_support import positive_int  # noqa: E402
from lm.infer.predictor import Predictor  # noqa: E402
from lm.train.run import set_threads  # noqa: E402


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


def reference_ms(predictor, rows: int = 16, repeats: int = 200, warm_up: int = 20) -> float:
    """Median time of one model step for `rows` rows (no autograd, prepacked weights): the machine's pace."""
    import torch

    ids = torch.zeros(rows, dtype=torch.long)
    state = predictor.zero_state(rows)
    with torch.inference_mode():
        for _ in range(warm_up):
            predictor.step(ids, state)
        return statistics.median(timed(lambda: predictor.step(ids, state)) for _ in range(repeats)) * 1000


def per_context(samples: list, measure, repeats: int) -> list[tuple]:
    """For each sample, the median over `repeats` of each figure that measure(sample) returns."""
    results = []
    for sample in samples:
        runs = [measure(sample) for _ in range(repeats)]
        results.append(tuple(statistics.median(values) for values in zip(*runs)))
    return results


def speed_arguments(description: str, contexts: int) -> argparse.ArgumentParser:
    """The flags both speed benches take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="runs/base", help="run or checkpoint directory (default: runs/base)")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    parser.add_argument("--contexts", type=positive_int, default=contexts, help=f"contexts per length (default: {contexts})")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timings per context; each context keeps its median")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", choices=("on", "off"), default="on",
                        help="on: the continuous cache the checkpoint stores, as served (default); off: the model alone")
    return parser


class SpeedSetup(NamedTuple):
    """What a speed bench measures with."""

    checkpoint: Checkpoint
    text: str  # the test split
    predictor: Predictor  # warmed up


def speed_setup(args: argparse.Namespace, name: str, prefix_cache_size: int) -> SpeedSetup:
    """Threads, the checkpoint, the test text and a warmed-up predictor, with the run's header printed; exits
    with status 1 after one line on stderr when the model cannot be loaded."""
    set_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.model)
    except CheckpointError as error:
        print(f"{name}: error: {error} (train one first: python train.py --out runs/base)", file=sys.stderr)
        raise SystemExit(1) from None
    text = load_corpus(args.corpus).test.text
    settings = checkpoint.text_cache_settings if args.cache == "on" else None
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=prefix_cache_size, text_cache_settings=settings)
    predictor.warm_up()
    print(f"model {checkpoint.directory}: {checkpoint.model_config.cell} {checkpoint.model_config.num_layers}x"
          f"{checkpoint.model_config.hidden_dim}, {checkpoint.tokenizer.kind} vocabulary {checkpoint.tokenizer.vocab_size}; "
          + (f"continuous cache {settings}" if settings is not None else "the model alone (no continuous cache)"))
    print(f"reference (one 16-row model step): {reference_ms(predictor):.3f} ms")
    return SpeedSetup(checkpoint, text, predictor)


def main(argv: list[str] | None = None) -> int:
    parser = speed_arguments(__doc__.split("\n\n")[0], contexts=20)
    parser.add_argument("--batch", type=positive_int, default=32, help="texts per batch for the throughput figure")
    parser.add_argument("--words", type=positive_int, nargs="+", default=[20, 200, 1000], help="context lengths (default: 20 200 1000)")
    parser.add_argument("--no-throughput", action="store_true", help="skip the batch throughput figure")
    parser.add_argument("--compare-cache", action="store_true",
                        help="time every context with the stored continuous cache and with the model alone, in one run")
    args = parser.parse_args(argv)
    if args.compare_cache:
        args.cache = "on"
    checkpoint, text, predictor = speed_setup(args, "predict_speed", prefix_cache_size=64)
    if args.compare_cache:
        return compare_cache(checkpoint, text, predictor, args)

    def cold_then_warm(sample):
        context, following = sample
        predictor.clear_prefix_cache()
        cold = timed(lambda: predictor.predict(context, k=5))
        reference = reference_ms(predictor, repeats=7, warm_up=0) / 1000  # the pace right now
        warm = timed(lambda: predictor.predict(context + following + " ", k=5))
        return cold, warm, warm / reference

    for words in args.words:
        samples = contexts(text, words, args.contexts, seed=words)
        units = [len(checkpoint.tokenizer.encode(context)) for context, _ in samples]
        cold, warm, in_steps = zip(*per_context(samples, cold_then_warm, args.repeats))
        print(f"{words:>5} words (~{statistics.median(units):,.0f} units): cold {statistics.median(cold) * 1000:7.1f} ms   "
              f"warm, one more word {statistics.median(warm) * 1000:7.1f} ms   "
              f"(quartiles {np.percentile(warm, 25) * 1000:.1f}-{np.percentile(warm, 75) * 1000:.1f}; "
              f"{statistics.median(in_steps):.2f} reference steps)")
    if args.no_throughput:
        print(f"reference (one 16-row model step): {reference_ms(predictor):.3f} ms")
        return 0
    texts = [context for context, _ in contexts(text, 200, args.batch, seed=7)]
    predictor.clear_prefix_cache()
    one_by_one = timed(lambda: [predictor.predict(t, k=5, use_prefix_cache=False) for t in texts])
    batched = timed(lambda: predictor.predict_many(texts, k=5))
    print(f"throughput, {args.batch} texts of 200 words: one by one {args.batch / one_by_one:.1f} texts/s, "
          f"one batch {args.batch / batched:.1f} texts/s")
    print(f"reference (one 16-row model step): {reference_ms(predictor):.3f} ms")
    return 0


def compare_cache(checkpoint: Checkpoint, text: str, cached: Predictor, args: argparse.Namespace) -> int:
    """Cold and warm latency with the continuous cache against the model alone, context by context."""
    if cached.text_cache_settings is None:
        print("predict_speed: error: the checkpoint stores no continuous cache settings to compare with", file=sys.stderr)
        return 1
    alone = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=64)
    alone.warm_up()
    flip = [False]

    def both(sample):
        context, following = sample
        times = {}
        flip[0] = not flip[0]
        for name, predictor in ((("cache", cached), ("alone", alone)) if flip[0] else (("alone", alone), ("cache", cached))):
            predictor.clear_prefix_cache()
            times[name, "cold"] = timed(lambda: predictor.predict(context, k=5))
            times[name, "warm"] = timed(lambda: predictor.predict(context + following + " ", k=5))
        return tuple(times[name, phase] for phase in ("cold", "warm") for name in ("cache", "alone"))

    for words in args.words:
        samples = contexts(text, words, args.contexts, seed=words)
        figures = per_context(samples, both, args.repeats)
        line = [f"{words:>5} words:"]
        for phase, (on, off) in (("cold", (0, 1)), ("warm", (2, 3))):
            with_cache = statistics.median(f[on] for f in figures) * 1000
            without = statistics.median(f[off] for f in figures) * 1000
            ratio = statistics.median(f[on] / f[off] for f in figures)
            line.append(f"{phase} {with_cache:7.1f} ms with the cache, {without:7.1f} ms alone (ratio {ratio:.3f})")
        print("   ".join(line))
    print(f"reference (one 16-row model step): {reference_ms(cached):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
