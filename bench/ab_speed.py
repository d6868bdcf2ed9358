"""Same speed: this checkout's prediction and attribution against another checkout's, alternated in one process.

    python bench/ab_speed.py --model runs/base --reference /path/to/other/checkout [--contexts 20] [--rounds 3]

The other checkout's `lm` package is copied to a temporary directory as
`lm_reference` (its imports rewritten to match) and imported beside this
one, so both run on the same model weights, in the same process, under the
same machine pace; each side loads the checkpoint with its own code (the
same weights in its own model class). Each context is timed with the reference code and with
this code in turn, `--rounds` times each, and keeps the median of its
new / reference ratios; the figure is the median over contexts (a ratio
below 1 means this checkout is faster). Measured: prediction cold and warm
(one more word typed) after 20 and 200 words, and attribution (k = 5) after
20 and 200 words (for half as many contexts).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predict_speed import contexts  # noqa: E402

from corpora import load_corpus  # noqa: E402
from lm.checkpoint import load_checkpoint  # noqa: E402
from lm.cli_support import positive_int  # noqa: E402
from lm.infer.attribution import attribute  # noqa: E402
from lm.infer.predictor import Predictor  # noqa: E402
from lm.train.run import set_threads  # noqa: E402


def load_reference(checkout: Path, scratch: Path):
    """(load_checkpoint, Predictor, attribute) from the checkout's `lm`, imported as the package `lm_reference`."""
    target = scratch / "lm_reference"
    shutil.copytree(checkout / "lm", target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(re.sub(r"\b(from|import) lm(\.|\b)", r"\1 lm_reference\2", text), encoding="utf-8")
    sys.path.insert(0, str(scratch))
    if (target / "infer").is_dir():
        predictor = importlib.import_module("lm_reference.infer.predictor")
        attribution = importlib.import_module("lm_reference.infer.attribution")
    else:  # the layout before lm/infer
        predictor = importlib.import_module("lm_reference.predict")
        attribution = importlib.import_module("lm_reference.attribution")
    checkpoint = importlib.import_module("lm_reference.checkpoint")
    return checkpoint.load_checkpoint, predictor.Predictor, attribution.attribute


def timed(function) -> float:
    begun = time.perf_counter()
    function()
    return time.perf_counter() - begun


def forget(predictor) -> None:
    """Empty a predictor's prefix cache, by this checkout's name for it or an older one's (`clear_cache`)."""
    (getattr(predictor, "clear_prefix_cache", None) or predictor.clear_cache)()


def ratio(measure_reference, measure_new, rounds: int) -> float:
    """Median over rounds of new / reference, the two timed one after the other, which one first alternating
    (whichever runs second finds the caches warmer)."""
    ratios = []
    for round_ in range(rounds):
        if round_ % 2:
            new = measure_new()
            reference = measure_reference()
        else:
            reference = measure_reference()
            new = measure_new()
        ratios.append(new / reference)
    return statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/base")
    parser.add_argument("--reference", type=Path, required=True, help="the other checkout (its lm/ is imported)")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    parser.add_argument("--contexts", type=positive_int, default=20)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    checkpoint = load_checkpoint(args.model)
    text = load_corpus(args.corpus).test.text
    with tempfile.TemporaryDirectory() as scratch:
        reference_load, ReferencePredictor, reference_attribute = load_reference(args.reference, Path(scratch))
        reference = reference_load(args.model)
        sides = {
            "reference": (ReferencePredictor(reference.model, reference.tokenizer), reference_attribute),
            "new": (Predictor(checkpoint.model, checkpoint.tokenizer), attribute),
        }
        for predictor, _ in sides.values():
            predictor.warm_up()
        print(f"model {checkpoint.directory}; reference code {args.reference}; {args.contexts} contexts, {args.rounds} rounds")

        def cold(side, context):
            predictor, _ = sides[side]
            forget(predictor)
            return timed(lambda: predictor.predict(context, k=5))

        def warm(side, context, following):
            predictor, _ = sides[side]
            forget(predictor)
            predictor.predict(context, k=5)
            return timed(lambda: predictor.predict(context + following + " ", k=5))

        def attributed(side, context):
            predictor, attribute_function = sides[side]
            forget(predictor)
            return timed(lambda: attribute_function(predictor, context, k=5))

        for words in (20, 200):
            samples = contexts(text, words, args.contexts, seed=words)
            rows = {
                "cold prediction": [ratio(lambda: cold("reference", c), lambda: cold("new", c), args.rounds) for c, _ in samples],
                "warm prediction": [ratio(lambda: warm("reference", c, f), lambda: warm("new", c, f), args.rounds) for c, f in samples],
                "attribution": [ratio(lambda: attributed("reference", c), lambda: attributed("new", c), args.rounds)
                                for c, _ in samples[: max(1, args.contexts // 2)]],
            }
            for name, ratios in rows.items():
                spread = f", from {min(ratios):.3f} to {max(ratios):.3f}" if len(ratios) > 1 else ""
                print(f"{words:>4} words  {name:<16} new / reference: median {statistics.median(ratios):.3f} "
                      f"over {len(ratios)} contexts{spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
