"""Time of gradient-reach attribution (k = 5) against plain prediction of the same text, for 20, 200 and 1,000 words.

    python bench/attribution_speed.py --model runs/base [--corpus DIR] [--contexts 5] [--repeats 3]

Both are cold (empty prefix cache) and include reading the context. Each
context is timed `repeats` times, prediction and attribution back to back,
and keeps its medians; the figures are medians over contexts, and the ratio
is the median of the per-context ratios attribution / prediction (the aim is
at most 3). The machine's pace is shown as in predict_speed.py.

"floor" is the ratio no implementation of exact gradients can beat here:
the prediction plus only the matrix products that carrying k = 5 gradients
back through T units cannot skip, timed alone on the same context: per
layer, T products of the (k, G) gate gradients with the recurrent weight
(G, H), and the products that turn the gate gradients into input gradients
((T k, G) x (G, C), in blocks of 64 steps as lm/context_grad.py does).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from predict_speed import contexts, per_context, reference_ms, timed  # noqa: E402

from corpora import load_corpus  # noqa: E402
from lm.attribution import attribute  # noqa: E402
from lm.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from lm.cli_support import positive_int  # noqa: E402
from lm.context_grad import _product_with  # noqa: E402
from lm.predict import Predictor  # noqa: E402
from lm.runner import set_threads  # noqa: E402


def products_s(model, units: int, k: int = 5, block: int = 64) -> float:
    """Seconds for the unavoidable products of a backward pass over `units` steps (see the module docstring)."""
    import torch

    total = 0.0
    with torch.inference_mode():
        for index, layer in enumerate(model.layers):
            back = _product_with(model, index)
            gates = torch.randn(k, layer.weight_hh_l0.size(0))
            rows = torch.randn(block * k, layer.weight_ih_l0.size(0))
            total += timed(lambda: [back(gates) for _ in range(units)])
            total += timed(lambda: [rows @ layer.weight_ih_l0 for _ in range(-(-units // block))])
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/base")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    parser.add_argument("--contexts", type=positive_int, default=5, help="contexts per length (default: 5)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timings per context; each context keeps its medians")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.model)
    except CheckpointError as error:
        print(f"attribution_speed: error: {error} (train one first: python train.py --out runs/base)", file=sys.stderr)
        return 1
    text = load_corpus(args.corpus).test.text
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, cache_size=0)
    predictor.warm_up()
    print(f"model {checkpoint.directory}: {checkpoint.model_config.cell} {checkpoint.model_config.num_layers}x"
          f"{checkpoint.model_config.hidden_dim}, {checkpoint.tokenizer.kind} vocabulary {checkpoint.tokenizer.vocab_size}")
    print(f"reference (one 16-row model step): {reference_ms(checkpoint.model):.3f} ms")

    def both(sample):
        context, _ = sample
        plain = timed(lambda: predictor.predict(context, k=5))
        attributed = timed(lambda: attribute(predictor, context, k=5))
        floor = (plain + products_s(checkpoint.model, len(checkpoint.tokenizer.encode(context)) + 1)) / plain
        return plain, attributed, attributed / plain, floor

    for words in (20, 200, 1000):
        plain, attributed, ratios, floors = zip(*per_context(contexts(text, words, args.contexts, seed=words), both, args.repeats))
        print(f"{words:>5} words: prediction {statistics.median(plain) * 1000:7.1f} ms   "
              f"attribution {statistics.median(attributed) * 1000:7.1f} ms   ratio {statistics.median(ratios):.2f}   "
              f"floor {statistics.median(floors):.2f}")
    print(f"reference (one 16-row model step): {reference_ms(checkpoint.model):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
