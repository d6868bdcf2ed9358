"""How often exact scoring's cap of 1,024 partial spellings binds, and what it costs in log-probability.

    python bench/spelling_cap.py --model runs/base [--corpus DIR] [--texts 120] [-k 5] [--tolerance 1e-6] [--cap 1024]

Exact scoring (`lm/infer/scoring.py: spell_many`) keeps at most `max_nodes` (1,024)
partial spellings alive at once and drops the least probable beyond that.
For seeded texts of the valid split (half ending in a space: the next word;
half ending inside a word: completions), this predicts the top k words
twice through the public `Predictor.predict`, once with the cap and once
with a cap so large it never binds, and reports how often the cap bound
(some step had more partial spellings than the cap) and the largest
difference in log P(word) between the two runs for the words both returned.
The cap is changed by wrapping `spell_many` where `score_words` calls it
(the predictor has no knob for it); the predictor's caches are cleared before every prediction so that
both runs read the same things.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpora import load_corpus  # noqa: E402
from lm.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from lm.cli_support import positive_int  # noqa: E402
from lm.infer import scoring  # noqa: E402
from lm.infer.predictor import Predictor  # noqa: E402
from lm.infer.reads import Reads  # noqa: E402
from lm.infer.scoring import SPELLING_TOLERANCE  # noqa: E402
from lm.train.run import set_threads  # noqa: E402

CAP = 1024  # the default of spell_many's max_nodes
UNCAPPED = 10**9


def texts(valid: str, count: int, seed: int, chars: int = 400) -> list[str]:
    """`count` seeded texts of about `chars` characters: even ones end in a space, odd ones inside a word."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        end = rng.randrange(chars, len(valid) - 50)
        start = valid.rfind("\n", 0, end - chars) + 1
        end = valid.find(" ", end)
        if end < 0:
            continue
        text = valid[start:end + 1]
        if len(out) % 2:  # stop inside the next word, after 1-3 of its characters
            word_end = valid.find(" ", end + 1)
            word = valid[end + 1:word_end]
            if len(word) < 3 or not word.isalpha():
                continue
            text += word[:rng.randint(1, min(3, len(word) - 1))]
        out.append(text)
    return out


class Probe:
    """Wraps `spell_many` to set the cap and record the largest batch of partial spellings it reads at once."""

    def __init__(self, tolerance: float):
        self.cap, self.tolerance, self.largest, self.inside = CAP, tolerance, 0, False
        self._spell_many, self._read_all = scoring.spell_many, Reads.read_all
        probe = self

        def spell_many(*args, **kwargs):
            kwargs.update(max_nodes=probe.cap, tolerance=probe.tolerance)
            probe.inside = True
            try:
                return probe._spell_many(*args, **kwargs)
            finally:
                probe.inside = False

        def read_all(known, sequences):
            if probe.inside:
                probe.largest = max(probe.largest, len(sequences))
            return probe._read_all(known, sequences)

        scoring.spell_many, Reads.read_all = spell_many, read_all

    def run(self, predictor: Predictor, text: str, k: int, cap: int) -> tuple[dict[str, float], int, float]:
        """{word: logprob}, the largest batch of partial spellings read at once, seconds."""
        self.cap, self.largest = cap, 0
        predictor.clear_prefix_cache()
        begun = time.perf_counter()
        result = predictor.predict(text, k=k)
        return {p.word: p.logprob for p in result.predictions}, self.largest, time.perf_counter() - begun


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--corpus", default=None, help="corpus (default: the one the model was trained on)")
    parser.add_argument("--texts", type=positive_int, default=120)
    parser.add_argument("-k", type=positive_int, default=5)
    parser.add_argument("--tolerance", type=float, default=SPELLING_TOLERANCE, help="exact scoring's tolerance (default: the served one)")
    parser.add_argument("--cap", type=positive_int, default=CAP, help="the cap to test (default: the served 1024; "
                        "a small one shows that the probe sees it bind)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.model)
    except CheckpointError as error:
        print(f"spelling_cap: error: {error}", file=sys.stderr)
        return 1
    corpus = load_corpus(args.corpus or checkpoint.train_config.corpus)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0)
    probe = Probe(args.tolerance)
    bound, largest_gap, worst, words, differing_lists, seconds = 0, 0.0, None, 0, 0, [0.0, 0.0]
    largest_batch = 0
    for text in texts(corpus.split("valid").text, args.texts, args.seed):
        capped, _, capped_s = probe.run(predictor, text, args.k, args.cap)
        full, full_batch, full_s = probe.run(predictor, text, args.k, UNCAPPED)
        seconds[0] += capped_s
        seconds[1] += full_s
        largest_batch = max(largest_batch, full_batch)
        bound += full_batch > args.cap  # both runs are the same until the first step with more than CAP spellings
        differing_lists += list(capped) != list(full)
        for word in capped.keys() & full.keys():
            words += 1
            gap = abs(capped[word] - full[word])
            if gap > largest_gap:
                largest_gap, worst = gap, {"text_end": text[-60:], "word": word, "capped": capped[word], "uncapped": full[word]}
    report = {
        "model": str(checkpoint.directory), "tokenizer": checkpoint.tokenizer.kind, "vocab_size": checkpoint.tokenizer.vocab_size,
        "texts": args.texts, "k": args.k, "tolerance": args.tolerance, "cap": args.cap,
        "texts_where_cap_binds": bound, "largest_partial_spellings_at_once": largest_batch,
        "words_compared": words, "texts_with_different_top_k": differing_lists,
        "largest_abs_logprob_difference": largest_gap, "worst": worst,
        "seconds_capped": round(seconds[0], 2), "seconds_uncapped": round(seconds[1], 2),
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
