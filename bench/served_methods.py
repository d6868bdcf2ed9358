"""Every attribution method through the served path: POST /v1/predict with attribution "full", k = 5, on short
prompts and on 200-word texts, as a user of the page or the API sends them.

    python bench/served_methods.py --model runs/base [--corpus DIR] [--repeats 2]

The app is the real one (server.create_app, the model's stored text cache as
served, Flask's test client in one process; the access log is silenced).
Each text is sent once to warm up, then `repeats` times; the figure is the
median over every timed request of a group. "none" is the plain prediction
(attribution "none"), which the prefix cache serves once the text was read.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from predict_speed import contexts  # noqa: E402

from corpora import load_corpus  # noqa: E402

SHORT_PROMPTS = ["The capital of France is ", "The album was released in ", "In 1998, the band "]
METHODS = ["none", "saliency", "grad_x_input", "integrated_gradients", "occlusion"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/base", help="run or checkpoint directory (default: runs/base)")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    parser.add_argument("--texts", type=int, default=3, help="200-word texts from the test split (default: 3)")
    parser.add_argument("--repeats", type=int, default=2, help="timed requests per text (default: 2)")
    args = parser.parse_args(argv)
    if not Path(args.model).exists():
        print(f"served_methods: error: no model at {args.model} (train one: python train.py --out runs/base)", file=sys.stderr)
        return 1
    from server import create_app
    from server.observability import ACCESS_LOG

    client = create_app({"TESTING": True, "REACH_MODELS": {"m": str(Path(args.model).resolve())}}).test_client()
    logging.getLogger(ACCESS_LOG).setLevel(logging.WARNING)
    groups = {"short prompts": SHORT_PROMPTS,
              "200 words": [text for text, _ in contexts(load_corpus(args.corpus).test.text, 200, args.texts, 13)]}
    print(f"model {args.model}; POST /v1/predict, k 5, median ms over {args.repeats} requests per text")
    for label, texts in groups.items():
        figures = []
        for method in METHODS:
            body = {"k": 5, "attribution": "none"} if method == "none" else {"k": 5, "attribution": "full", "method": method}
            times = []
            for text in texts:
                client.post("/v1/predict", json={**body, "text": text})
                for _ in range(args.repeats):
                    begun = time.perf_counter()
                    response = client.post("/v1/predict", json={**body, "text": text})
                    times.append(time.perf_counter() - begun)
                    if response.status_code != 200:
                        print(f"served_methods: error: {response.status_code} {response.get_json()}", file=sys.stderr)
                        return 1
            figures.append(f"{method} {statistics.median(times) * 1e3:.1f}")
        print(f"{label}: " + ", ".join(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
