"""Same answers: every prediction and attribution of one model, from two versions of Reach's code, compared.

    python bench/same_answers.py --model runs/base --reference /path/to/other/checkout   # dump both, compare
    python bench/same_answers.py dump --model runs/base --out new.json [--code DIR]       # one side only
    python bench/same_answers.py compare old.json new.json

The texts: `--texts` (120) seeded cases from the test split, a third each of
cold (a context of 20-60 words ending in a space, the prefix cache empty),
warm after a word (the context read, then one more word typed) and warm
after two letters (the context read, then the first two letters of the next
word). For each: the k = 5 words with their exact log-probabilities, and
every word's saliency over the context. Equal means: the same words in the
same order, log-probabilities within --logprob-tolerance (1e-6), and each
influence vector within --influence-tolerance (1e-5) of the other relative
to its largest entry.

`dump --code DIR` imports Reach from DIR (another checkout, for instance the
commit before a refactor), so one script serves both sides; it knows the
module paths of the code before and after the `lm/infer` layout.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _reach(code: Path):
    """(load_checkpoint, load_corpus, Predictor, attribute) from the checkout at `code`."""
    sys.path.insert(0, str(code))
    from corpora import load_corpus
    from lm.checkpoint import load_checkpoint

    if (code / "lm" / "infer").is_dir():
        from lm.infer.attribution import attribute
        from lm.infer.predictor import Predictor
    else:  # the layout before lm/infer
        from lm.attribution import attribute
        from lm.predict import Predictor
    import lm

    if Path(lm.__file__).resolve().parent != (code / "lm").resolve():
        raise SystemExit(f"same_answers: imported Reach from {lm.__file__}, not from {code}")
    return load_checkpoint, load_corpus, Predictor, attribute


def cases(text: str, count: int, seed: int) -> list[dict]:
    """Seeded cases: {"kind", "before" (read first, warm cases), "text"} from whitespace words of `text`."""
    words = text.replace("\n", " \n ").split(" ")
    rng = random.Random(seed)
    found: list[dict] = []
    kinds = ("cold", "warm-word", "warm-letters")
    while len(found) < count:
        length = rng.randint(20, 60)
        end = rng.randrange(length + 2, len(words) - 2)
        context = " ".join(words[end - length : end]).replace(" \n ", "\n").strip() + " "
        following = words[end].strip()
        if not following.isalpha() or len(following) < 3:
            continue
        kind = kinds[len(found) % 3]
        if kind == "cold":
            found.append({"kind": kind, "before": None, "text": context})
        elif kind == "warm-word":
            found.append({"kind": kind, "before": context, "text": context + following + " "})
        else:
            found.append({"kind": kind, "before": context, "text": context + following[:2]})
    return found


def dump(model: str, out: Path, code: Path, corpus: str | None, count: int, seed: int) -> None:
    load_checkpoint, load_corpus, Predictor, attribute = _reach(code)
    checkpoint = load_checkpoint(model)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)
    test = load_corpus(corpus or checkpoint.train_config.corpus).test.text
    records = []
    for case in cases(test, count, seed):
        predictor.clear_cache()
        if case["before"] is not None:
            predictor.predict(case["before"])
        result = predictor.predict(case["text"])
        attribution = attribute(predictor, case["text"], k=5)
        records.append({
            **case,
            "predictions": [[p.word, p.logprob] for p in result.predictions],
            "attributed": [[item.prediction.word, item.prediction.logprob, [float(v) for v in item.influence]]
                           for item in attribution.predictions],
        })
    out.write_text(json.dumps({"model": str(model), "code": str(code), "cases": records}), encoding="utf-8")
    print(f"wrote {len(records)} cases to {out}")


def compare(first: Path, second: Path, logprob_tolerance: float, influence_tolerance: float) -> int:
    """Print the largest gaps; exit status 1 when any case differs beyond the tolerances."""
    a, b = (json.loads(path.read_text(encoding="utf-8"))["cases"] for path in (first, second))
    if [case["text"] for case in a] != [case["text"] for case in b]:
        print("the two dumps hold different texts")
        return 1
    word_lists, logprob_gap, influence_gap, failures = 0, 0.0, 0.0, []
    for left, right in zip(a, b):
        for key in ("predictions", "attributed"):
            if [p[0] for p in left[key]] != [p[0] for p in right[key]]:
                word_lists += 1
                failures.append(f"{left['kind']} {left['text'][-40:]!r}: {key} words differ")
                continue
            for p, q in zip(left[key], right[key]):
                logprob_gap = max(logprob_gap, abs(p[1] - q[1]))
                if key == "attributed":
                    top = max(max(map(abs, p[2]), default=0.0), 1e-30)
                    gap = max((abs(x - y) for x, y in zip(p[2], q[2])), default=0.0) / top
                    influence_gap = max(influence_gap, gap)
                    if len(p[2]) != len(q[2]) or gap > influence_tolerance:
                        failures.append(f"{left['kind']} {left['text'][-40:]!r}: influence of {p[0]!r} differs by {gap:.2e}")
                if abs(p[1] - q[1]) > logprob_tolerance:
                    failures.append(f"{left['kind']} {left['text'][-40:]!r}: log P({p[0]!r}) differs by {abs(p[1] - q[1]):.2e}")
    kinds = sorted({case["kind"] for case in a})
    print(f"{len(a)} cases ({', '.join(kinds)}): word lists that differ {word_lists}; largest log-probability gap "
          f"{logprob_gap:.2e} (tolerance {logprob_tolerance:g}); largest relative influence gap {influence_gap:.2e} "
          f"(tolerance {influence_tolerance:g})")
    for line in failures[:20]:
        print("  " + line)
    print("same answers" if not failures else f"{len(failures)} differences")
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=("both", "dump", "compare"), default="both")
    parser.add_argument("files", nargs="*", type=Path, help="compare: the two dumps")
    parser.add_argument("--model", help="a run or checkpoint directory")
    parser.add_argument("--reference", type=Path, help="both: the other checkout to compare this one with")
    parser.add_argument("--code", type=Path, default=ROOT, help="dump: the checkout whose code runs (default: this one)")
    parser.add_argument("--out", type=Path, help="dump: where to write")
    parser.add_argument("--corpus", help="corpus for the texts (default: the checkpoint's)")
    parser.add_argument("--texts", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logprob-tolerance", type=float, default=1e-6)
    parser.add_argument("--influence-tolerance", type=float, default=1e-5)
    args = parser.parse_args(argv)
    if args.action == "compare":
        if len(args.files) != 2:
            parser.error("compare needs two dump files")
        return compare(*args.files, args.logprob_tolerance, args.influence_tolerance)
    if not args.model:
        parser.error("--model is required")
    if args.action == "dump":
        if args.out is None:
            parser.error("dump needs --out")
        dump(args.model, args.out, args.code, args.corpus, args.texts, args.seed)
        return 0
    if args.reference is None:
        parser.error("comparing needs --reference (another checkout)")
    with tempfile.TemporaryDirectory() as scratch:
        outputs = []
        for name, code in (("reference", args.reference), ("this", ROOT)):
            out = Path(scratch) / f"{name}.json"
            command = [sys.executable, __file__, "dump", "--model", args.model, "--out", str(out), "--code", str(code),
                       "--texts", str(args.texts), "--seed", str(args.seed)] + (["--corpus", args.corpus] if args.corpus else [])
            subprocess.run(command, check=True)
            outputs.append(out)
        return compare(*outputs, args.logprob_tolerance, args.influence_tolerance)


if __name__ == "__main__":
    sys.exit(main())
