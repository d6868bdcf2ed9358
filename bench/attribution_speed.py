"""Time of gradient-reach attribution (k = 5) against plain prediction of the same text, for 20, 200 and 1,000 words.

    python bench/attribution_speed.py --model runs/base [--corpus DIR] [--contexts 5] [--repeats 3] [--saliency-only]

Both are cold (empty prefix cache) and include reading the context. Each
context is timed `repeats` times, prediction and attribution back to back,
and keeps its medians; the figures are medians over contexts, and the ratio
is the median of the per-context ratios attribution / prediction (the aim is
at most 3). The machine's pace is shown as in predict_speed.py.

With the checkpoint's continuous cache on (the default, as served), each
context is also attributed with the cache off in the same run: "cache
cost" is the median per-context ratio of attribution with the cache (the
mixed distributions differentiated, the keys' gradients carried back, the
pointer found) to attribution of the model alone.

The other methods are timed on the same contexts in the same run (unless
`--saliency-only`): integrated gradients (16 steps, zero baseline) as a
ratio to saliency attribution (the aim is at most 6), and occlusion (a
10-rung ladder) as a ratio to prediction (the aim is at most 3); each is
the median of the per-context ratios, and includes the prediction.

"floor" is the ratio no implementation of exact gradients can beat here:
the prediction plus only the matrix products that carrying k = 5 gradients
back through T units cannot skip, timed alone on the same context: per
layer, T products of the (k, G) gate gradients with the recurrent weight
(G, H), and the products that turn the gate gradients into input gradients
((T k, G) x (G, C), in blocks of 64 steps as lm/infer/context_grad.py does).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from predict_speed import contexts, per_context, reference_ms, speed_arguments, speed_setup, timed  # noqa: E402

from lm.infer.attribution import attribute  # noqa: E402
from lm.cells import layer_weights  # noqa: E402


def products_s(engine, units: int, k: int = 5, block: int = 64) -> float:
    """Seconds for the unavoidable products of a backward pass over `units` steps (see the module docstring)."""
    import torch

    total = 0.0
    with torch.inference_mode():
        for index, layer in enumerate(engine.model.layers):
            weights = layer_weights(layer)
            back = engine.recurrent_backward(index)
            gates = torch.randn(k, weights.recurrent.size(0))
            into = torch.empty(k, weights.recurrent.size(1))
            rows = torch.randn(block * k, weights.input.size(0))
            total += timed(lambda: [back(gates, into) for _ in range(units)])
            total += timed(lambda: [rows @ weights.input for _ in range(-(-units // block))])
    return total


def main(argv: list[str] | None = None) -> int:
    parser = speed_arguments(__doc__.split("\n\n")[0], contexts=5)
    parser.add_argument("--saliency-only", action="store_true", help="skip integrated gradients and occlusion")
    args = parser.parse_args(argv)
    checkpoint, text, predictor = speed_setup(args, "attribution_speed", prefix_cache_size=0)

    cached = predictor.text_cache_settings is not None

    def both(sample):
        context, _ = sample
        plain = timed(lambda: predictor.predict(context, k=5))
        attributed = timed(lambda: attribute(predictor, context, k=5))
        alone = timed(lambda: attribute(predictor, context, k=5, text_cache=False)) if cached else attributed
        floor = (plain + products_s(predictor.step_engine, len(checkpoint.tokenizer.encode(context)) + 1)) / plain
        if args.saliency_only:
            integrated = occluded = float("nan")
        else:
            integrated = timed(lambda: attribute(predictor, context, k=5, method="integrated_gradients"))
            occluded = timed(lambda: attribute(predictor, context, k=5, method="occlusion"))
        return (plain, attributed, attributed / plain, floor, attributed / alone, integrated, integrated / attributed,
                occluded / plain)

    for words in (20, 200, 1000):
        plain, attributed, ratios, floors, costs, integrated, integrated_ratios, occluded_ratios = zip(
            *per_context(contexts(text, words, args.contexts, seed=words), both, args.repeats))
        print(f"{words:>5} words: prediction {statistics.median(plain) * 1000:7.1f} ms   "
              f"attribution {statistics.median(attributed) * 1000:7.1f} ms   ratio {statistics.median(ratios):.2f}   "
              f"floor {statistics.median(floors):.2f}   ratio / floor "
              f"{statistics.median(r / f for r, f in zip(ratios, floors)):.2f}"
              + (f"   cache cost {statistics.median(costs):.2f}x the model alone's attribution" if cached else "")
              + ("" if args.saliency_only else
                 f"   integrated gradients {statistics.median(integrated) * 1000:7.1f} ms "
                 f"({statistics.median(integrated_ratios):.2f}x saliency)   "
                 f"occlusion {statistics.median(occluded_ratios):.2f}x prediction"))
    print(f"reference (one 16-row model step): {reference_ms(predictor):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
