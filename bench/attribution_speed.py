"""Time of gradient-reach attribution (k = 5) against plain prediction of the same text, for 20, 200 and 1,000 words.

    python bench/attribution_speed.py --model runs/base [--corpus DIR] [--repeats 5]

Both are cold (empty prefix cache) and include reading the context. Medians;
the ratio is attribution / prediction (the aim is at most 3).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from predict_speed import contexts, timed  # noqa: E402

from corpora import load_corpus  # noqa: E402
from lm.attribution import attribute  # noqa: E402
from lm.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from lm.predict import Predictor  # noqa: E402
from lm.runner import set_threads  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/base")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    parser.add_argument("--repeats", type=int, default=5)
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
    predictor.predict("Warm up the lookup tables. ")
    print(f"model {checkpoint.directory}: {checkpoint.model_config.cell} {checkpoint.model_config.num_layers}x"
          f"{checkpoint.model_config.hidden_dim}, {checkpoint.tokenizer.kind} vocabulary {checkpoint.tokenizer.vocab_size}")
    for words in (20, 200, 1000):
        plain, attributed = [], []
        for context, _ in contexts(text, words, args.repeats, seed=words):
            plain.append(timed(lambda: predictor.predict(context, k=5)))
            attributed.append(timed(lambda: attribute(predictor, context, k=5)))
        p, a = statistics.median(plain), statistics.median(attributed)
        print(f"{words:>5} words: prediction {p * 1000:7.1f} ms   attribution {a * 1000:7.1f} ms   ratio {a / p:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
