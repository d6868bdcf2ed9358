"""Same answers: every prediction and attribution of one model, from two versions of Reach's code, compared through
the library, HTTP and the command line.

    python bench/same_answers.py --model runs/base --reference /path/to/other/checkout   # dump both, compare
    python bench/same_answers.py dump --model runs/base --out new.json [--code DIR]       # one side only
    python bench/same_answers.py compare old.json new.json

The texts: `--texts` (120) seeded cases from the test split, a third each of
cold (a context of 20-60 words ending in a space, the prefix cache empty),
warm after a word (the context read, then one more word typed) and warm
after two letters (the context read, then the first two letters of the next
word). Each case is answered three ways, each with k = 5:

- library: `Predictor.predict` (after reading the context first, for a warm
  case) and `attribute`, with the model alone;
- http: the Flask app (`server.create_app`, the checkpoint served as "m",
  its stored text cache as served) through its test client: POST
  /v1/predict plain, then with "attribution": "full" (for a warm case the
  context is posted first);
- cli: `python -m lm attribute --json` run by its `main(argv)` in the dump's
  process, for every case; the first `--cli-processes` (10) cases also run
  as their own `python -m lm` process in the code's directory (cli-process).

Equal means, channel by channel: the same words in the same order,
log-probabilities within --logprob-tolerance (1e-6), and each influence
vector within --influence-tolerance (1e-5) of the other relative to its
largest entry. Only words, log-probabilities and per-unit influence scores
are read from the JSON answers, so a renamed or added field elsewhere in
them does not count as a difference.

`dump --code DIR` imports Reach from DIR (another checkout, for instance the
commit before a refactor), so one script serves both sides; it knows the
module paths of the code before and after the `lm/infer` layout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ("library", "http", "cli", "cli-process")


def _reach(code: Path):
    """(load_checkpoint, load_corpus, Predictor, attribute) from the checkout at `code`."""
    sys.path.insert(0, str(code))
    from corpora import load_corpus
    from lm.checkpoint import load_checkpoint

    layout = (code / "lm" / "infer").is_dir()  # else the layout before lm/infer
    attribute = importlib.import_module("lm.infer.attribution" if layout else "lm.attribution").attribute
    Predictor = importlib.import_module("lm.infer.predictor" if layout else "lm.predict").Predictor
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


def _forget(predictor) -> None:
    """Empty the prefix cache, by this checkout's name for it or an older one's (`clear_cache`)."""
    (getattr(predictor, "clear_prefix_cache", None) or predictor.clear_cache)()


def read_answer(body: dict) -> dict:
    """Words, log-probabilities and per-unit influence from a JSON answer (HTTP or --json), whatever else it holds:
    {"predictions": [[word, logprob]], "attributed": [[word, logprob, [score per unit]]]} ("attributed" only where
    the answer has influence)."""
    predictions, attributed = [], []
    for item in body.get("predictions") or []:
        logprob = item["logprob"] if item.get("logprob") is not None else math.log(item["probability"])
        predictions.append([item["word"], logprob])
        if item.get("influence") is not None:
            attributed.append([item["word"], logprob, [float(unit["score"]) for unit in item["influence"]]])
    return {"predictions": predictions, **({"attributed": attributed} if attributed else {})}


def _library(predictor, attribute, case: dict) -> dict:
    _forget(predictor)
    if case["before"] is not None:
        predictor.predict(case["before"])
    result = predictor.predict(case["text"])
    attribution = attribute(predictor, case["text"], k=5)
    return {"predictions": [[p.word, p.logprob] for p in result.predictions],
            "attributed": [[item.prediction.word, item.prediction.logprob, [float(v) for v in item.influence]]
                           for item in attribution.predictions]}


def _http(client, case: dict) -> dict:
    def post(**fields) -> dict:
        response = client.post("/v1/predict", json={"model": "m", "k": 5, **fields})
        if response.status_code != 200:
            raise SystemExit(f"same_answers: POST /v1/predict answered {response.status_code}: {response.get_data(as_text=True)}")
        return response.get_json()

    if case["before"] is not None:
        post(text=case["before"])
    plain = read_answer(post(text=case["text"]))
    attributed = read_answer(post(text=case["text"], attribution="full"))
    return {"predictions": plain["predictions"], "attributed": attributed.get("attributed", [])}


def _cli_arguments(model: str, text: str) -> list[str]:
    return ["attribute", "--model", model, "--json", "-k", "5", "--", text]


def _cli(lm_main, model: str, case: dict) -> dict:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = lm_main(_cli_arguments(model, case["text"]))
    if status != 0:
        raise SystemExit(f"same_answers: lm attribute exited with {status} on {case['text'][-40:]!r}")
    return read_answer(json.loads(printed.getvalue()))


def _cli_process(code: Path, model: str, case: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "lm", *_cli_arguments(model, case["text"])], cwd=code,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"same_answers: python -m lm attribute exited with {done.returncode}: {done.stderr.strip()}")
    return read_answer(json.loads(done.stdout))


def dump(model: str, out: Path, code: Path, corpus: str | None, count: int, seed: int, cli_processes: int) -> None:
    """Answer every case through every channel with the code at `code`; write them to `out`."""
    load_checkpoint, load_corpus, Predictor, attribute = _reach(code)
    from lm.__main__ import main as lm_main
    from server import create_app

    model = str(Path(model).resolve())  # the CLI processes run in the code's directory
    checkpoint = load_checkpoint(model)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)
    client = create_app({"REACH_MODELS": {"m": model}, "TESTING": True}).test_client()
    test = load_corpus(corpus or checkpoint.train_config.corpus).test.text
    records = []
    for index, case in enumerate(cases(test, count, seed)):
        record = {**case, "library": _library(predictor, attribute, case), "http": _http(client, case),
                  "cli": _cli(lm_main, model, case)}
        if index < cli_processes:
            record["cli-process"] = _cli_process(code, model, case)
        records.append(record)
    out.write_text(json.dumps({"model": model, "code": str(code), "cases": records}), encoding="utf-8")
    print(f"wrote {len(records)} cases to {out}")


def _gaps(left: dict, right: dict, logprob_tolerance: float, influence_tolerance: float) -> tuple[list[str], float, float]:
    """How one channel's answers to one case differ: (failures, largest log-probability gap, largest relative influence
    gap)."""
    failures, logprob_gap, influence_gap = [], 0.0, 0.0
    for key in ("predictions", "attributed"):
        if [p[0] for p in left.get(key, [])] != [p[0] for p in right.get(key, [])]:
            failures.append(f"{key} words differ")
            continue
        for p, q in zip(left.get(key, []), right.get(key, [])):
            gap = abs(p[1] - q[1]) if math.isfinite(p[1]) or math.isfinite(q[1]) else 0.0
            logprob_gap = max(logprob_gap, gap)
            if not gap <= logprob_tolerance:
                failures.append(f"log P({p[0]!r}) differs by {gap:.2e}")
            if key == "attributed":
                top = max(max(map(abs, p[2]), default=0.0), 1e-30)
                spread = max((abs(x - y) for x, y in zip(p[2], q[2])), default=0.0) / top
                influence_gap = max(influence_gap, spread)
                if len(p[2]) != len(q[2]) or spread > influence_tolerance:
                    failures.append(f"influence of {p[0]!r} differs by {spread:.2e} ({len(p[2])} and {len(q[2])} units)")
    return failures, logprob_gap, influence_gap


def compare(first: Path, second: Path, logprob_tolerance: float, influence_tolerance: float) -> int:
    """Print, channel by channel, how many cases agree and the largest gaps; exit status 1 when any case differs
    beyond the tolerances (or a channel one dump has is missing from the other)."""
    a, b = (json.loads(path.read_text(encoding="utf-8"))["cases"] for path in (first, second))
    if [case["text"] for case in a] != [case["text"] for case in b]:
        print("the two dumps hold different texts")
        return 1
    kinds = sorted({case["kind"] for case in a})
    print(f"{len(a)} cases ({', '.join(kinds)}); log-probability tolerance {logprob_tolerance:g}, relative influence "
          f"tolerance {influence_tolerance:g}")
    failures = []
    for channel in CHANNELS:
        pairs = [(left, right) for left, right in zip(a, b) if channel in left or channel in right]
        if not pairs:
            continue
        same, logprob_gap, influence_gap = 0, 0.0, 0.0
        for left, right in pairs:
            if channel not in left or channel not in right:
                failures.append(f"{channel}: {left['text'][-40:]!r} answered by one side only")
                continue
            found, lp, infl = _gaps(left[channel], right[channel], logprob_tolerance, influence_tolerance)
            logprob_gap, influence_gap = max(logprob_gap, lp), max(influence_gap, infl)
            same += not found
            failures.extend(f"{channel}: {left['kind']} {left['text'][-40:]!r}: {line}" for line in found)
        print(f"  {channel:<12} {same}/{len(pairs)} cases identical; largest log-probability gap {logprob_gap:.2e}, "
              f"largest relative influence gap {influence_gap:.2e}")
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
    parser.add_argument("--cli-processes", type=int, default=10,
                        help="the first N cases also through their own `python -m lm` process (default: 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides (default: 1)")
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
        import torch

        torch.set_num_threads(args.threads)
        dump(args.model, args.out, args.code.resolve(), args.corpus, args.texts, args.seed, args.cli_processes)
        return 0
    if args.reference is None:
        parser.error("comparing needs --reference (another checkout)")
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "REACH_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as scratch:
        outputs = []
        for name, code in (("reference", args.reference), ("this", ROOT)):
            out = Path(scratch) / f"{name}.json"
            command = [sys.executable, __file__, "dump", "--model", args.model, "--out", str(out), "--code", str(code),
                       "--texts", str(args.texts), "--seed", str(args.seed), "--cli-processes", str(args.cli_processes),
                       "--threads", str(args.threads)] + (["--corpus", args.corpus] if args.corpus else [])
            subprocess.run(command, check=True, env=environment)
            outputs.append(out)
        return compare(*outputs, args.logprob_tolerance, args.influence_tolerance)


if __name__ == "__main__":
    sys.exit(main())
