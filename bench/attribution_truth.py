"""Which explanation tells the truth? Every registered attribution method, side by side, judged three ways.

    python bench/attribution_truth.py --model runs/base [--recall DIR] [--contexts 20] [--words 200]
        [--cost-words 20 200 1000] [--cost-contexts 3] [--methods ...] [--json FILE]

1. Planted keys (`--recall DIR`, a `lm lab --task recall` report directory:
   its recall.json and runs/<run>/): the lab's test questions are rebuilt from
   the settings recall.json records, and each real question is attributed
   (k = 1) by every method. Of the keys recalled with P(key) >= 0.5 (the
   "confident recalls"), the share whose key lies inside each method's
   threshold reach and inside its 99%-mass reach; and the key's share of each
   method's influence (the units of the planted key over all units), median
   over confident recalls and over every real question.
2. Wikipedia contexts (`--model`, test split, `--contexts` prompts of
   `--words` words, seeded as bench/reach_truth.py seeds them), the model
   alone (no text cache): the occlusion reach (occlusion's `exact_reach`, the
   shortest kept distance from which no rung of its ladder moves log P by
   0.1 nats) is the reference. For each method: how often its 99%-mass reach
   covers the occlusion reach, the median ratio of the two, and how often
   replacing the text beyond its 99%-mass reach by filler really moves
   log P by less than 0.1 nats (lm/infer/faithfulness.py). And ERASER's
   deletion figures (DeYoung et al. 2020), with units removed from the text
   at 1, 5, 10, 20 and 50% of its units, most influential first:
   comprehensiveness (P(word | text) - P(word | text without them), averaged
   over the bins: higher is truer) and sufficiency (P(word | text) -
   P(word | only them): lower is truer).
3. Cost at `--cost-words` words of text: each method's time as a ratio to the
   prediction it explains (attribution's own `cost`: prediction_ms is the
   read of the text, the search and the exact scoring, uncached; method_ms
   every prediction's influence, k = 5), medians over `--cost-contexts`
   contexts after one warm-up.

Every figure printed is measured in the run; nothing is assumed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpora import CorpusError, load_corpus  # noqa: E402
from corpora.planted import planted_corpus  # noqa: E402
from lm.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from lm.infer.accuracy import prompt_of, prompt_positions, word_positions  # noqa: E402
from lm.infer.attribution import attribute  # noqa: E402
from lm.infer.faithfulness import faithfulness  # noqa: E402
from lm.infer.methods import method_names  # noqa: E402
from lm.infer.predictor import Predictor  # noqa: E402
from lm.train.run import set_threads  # noqa: E402
from lm.train.tokens import load_streamed_corpus  # noqa: E402

TOLERANCE = 0.1  # nats
CONFIDENCE = 0.5  # P(key) of a confident recall
BINS = (0.01, 0.05, 0.10, 0.20, 0.50)  # ERASER's shares of the units removed (or kept)


def _median(values: list[float]) -> float | None:
    values = [value for value in values if value is not None and math.isfinite(value)]
    return float(statistics.median(values)) if values else None


def planted_questions(directory: Path):
    """The recall lab's test questions and its run's predictor, rebuilt from recall.json's recorded settings."""
    record = json.loads((directory / "recall.json").read_text(encoding="utf-8"))
    recall, settings = record["recall_settings"], record["settings"]
    source = load_corpus(record.get("filler") or record["corpus"]["source"])
    test_distances = tuple(recall["test_distances"]) if recall.get("test_distances") else None
    planted = planted_corpus(source, seed=settings["seed"], counts=(recall["train_examples"], recall["heldout_examples"],
                                                                      recall["heldout_examples"]),
                             min_distance=recall["min_distance"], max_distance=recall["max_distance"],
                             control_share=recall["control_share"], plain_lines=recall["plain_lines"],
                             test_distances=test_distances)
    questions = [example for example in planted.examples["test"][: recall["measured"]] if not example.control]
    run = sorted((directory / "runs").iterdir())[0]
    checkpoint = load_checkpoint(run)
    return questions, Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0), run.name


def planted_truth(predictor: Predictor, questions, methods: list[str]) -> dict:
    """Per method: the confident recalls with the key inside its reach, and the key's share of its influence."""
    rows = {method: {"inside_threshold": 0, "inside_mass99": 0, "confident_shares": [], "shares": []} for method in methods}
    confident = 0
    for example in questions:
        key_logprob = predictor.score_word(example.question, example.key)
        for method in methods:
            attribution = attribute(predictor, example.question, k=1, method=method)
            if not attribution.predictions:
                continue
            top = attribution.predictions[0]
            distance = len(attribution.result.query.context) - example.key_start
            key_end = example.key_start + len(example.planted)
            on_key = [index for index, (_, start, end) in enumerate(attribution.units)
                      if start < key_end and end > example.key_start]
            total = float(top.influence.sum())
            share = float(top.influence[on_key].sum()) / total if total > 0 and on_key else 0.0
            row = rows[method]
            row["shares"].append(share)
            if top.prediction.word == example.key and key_logprob >= math.log(CONFIDENCE):
                if method == methods[0]:
                    confident += 1
                row["inside_threshold"] += distance <= top.reach.chars
                row["inside_mass99"] += distance <= top.reach.mass99_chars
                row["confident_shares"].append(share)
    return {"questions": len(questions), "confident_recalls": confident,
            "methods": {method: {"inside_threshold": row["inside_threshold"], "inside_mass99": row["inside_mass99"],
                                 "key_share_confident": _median(row["confident_shares"]),
                                 "key_share_all": _median(row["shares"])} for method, row in rows.items()}}


def logprob_after(predictor: Predictor, units: tuple[int, ...], query, word: str) -> float:
    """Exact log P(word) after reading exactly `units` (no prefix cache), the model alone."""
    context = predictor.context_state(units, use_prefix_cache=False)
    return predictor.score_word_from(context, query, word, text_cache=False)


def eraser(predictor: Predictor, units: tuple[int, ...], query, word: str, logprob: float, influence: np.ndarray) -> tuple[float, float]:
    """ERASER's comprehensiveness and sufficiency (in probability, averaged over BINS) for one prediction."""
    order = np.argsort(-influence, kind="stable")
    base = math.exp(logprob)
    comprehensiveness, sufficiency = [], []
    for share in BINS:
        chosen = set(order[: max(1, int(round(share * len(units))))].tolist())
        removed = tuple(unit for index, unit in enumerate(units) if index not in chosen)
        kept = tuple(unit for index, unit in enumerate(units) if index in chosen)
        comprehensiveness.append(base - math.exp(logprob_after(predictor, removed, query, word)))
        sufficiency.append(base - math.exp(logprob_after(predictor, kept, query, word)))
    return float(np.mean(comprehensiveness)), float(np.mean(sufficiency))


def wikipedia_truth(predictor: Predictor, texts: list[str], methods: list[str], deletion: bool) -> dict:
    """Per method: agreement of its 99%-mass reach with the occlusion reach, the truth of cutting at it, ERASER."""
    rows = {method: {"covers": 0, "ratios": [], "true": 0, "comprehensiveness": [], "sufficiency": [], "mass99": []}
            for method in methods}
    references, counted = [], 0
    for text in texts:
        reference = attribute(predictor, text, k=1, method="occlusion", text_cache=False)
        if not reference.predictions:
            continue
        counted += 1
        occlusion_reach = reference.predictions[0].figures.exact_reach
        references.append(occlusion_reach)
        units = tuple(predictor.tokenizer.encode(reference.result.query.context))
        spans = [(start, end) for _, start, end in reference.units]
        for method in methods:
            attribution = reference if method == "occlusion" else attribute(predictor, text, k=1, method=method,
                                                                          text_cache=False)
            top = attribution.predictions[0]
            row = rows[method]
            row["mass99"].append(top.reach.mass99_tokens)
            row["covers"] += top.reach.mass99_tokens >= occlusion_reach
            if occlusion_reach > 0:
                row["ratios"].append(top.reach.mass99_tokens / occlusion_reach)
            check = faithfulness(predictor, attribution.result.query, spans, top.reach, top.prediction, text_cache=False)
            change = check["logprob_change"]
            row["true"] += change is not None and abs(change) < TOLERANCE
            if deletion:
                comprehensive, sufficient = eraser(predictor, units, attribution.result.query, top.prediction.word,
                                                   top.prediction.logprob, top.influence)
                row["comprehensiveness"].append(comprehensive)
                row["sufficiency"].append(sufficient)
    return {"contexts": counted, "median_occlusion_reach_units": _median(references),
            "methods": {method: {"covers_occlusion_reach": row["covers"], "median_ratio_to_occlusion_reach": _median(row["ratios"]),
                                 "median_mass99_units": _median(row["mass99"]), "true_at_mass99": row["true"],
                                 "comprehensiveness": _median(row["comprehensiveness"]) if deletion else None,
                                 "sufficiency": _median(row["sufficiency"]) if deletion else None}
                        for method, row in rows.items()}}


def cost(predictor: Predictor, texts: list[str], methods: list[str]) -> dict:
    """Per method: median method_ms, prediction_ms and their ratio over `texts` (after one warm-up each)."""
    result = {}
    for method in methods:
        attribute(predictor, texts[0], k=5, method=method, text_cache=False)  # warm-up: tables, kernels
        ratios, method_ms, prediction_ms = [], [], []
        for text in texts:
            predictor.clear_prefix_cache()
            attribution = attribute(predictor, text, k=5, method=method, text_cache=False)
            ratios.append(attribution.cost.method_ms / attribution.cost.prediction_ms)
            method_ms.append(attribution.cost.method_ms)
            prediction_ms.append(attribution.cost.prediction_ms)
        result[method] = {"method_ms": _median(method_ms), "prediction_ms": _median(prediction_ms), "ratio": _median(ratios)}
    return result


def prompts(text: str, count: int, words: int, seed: int) -> list[str]:
    starts = word_positions(text)
    return [prompt_of(text, position, words, starts) for position in prompt_positions(text, count, seed, min_words=words)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="run or checkpoint directory for the Wikipedia contexts and the cost")
    parser.add_argument("--corpus", default=None, help="corpus (default: the name the checkpoint stores)")
    parser.add_argument("--recall", type=Path, default=None, help="a `lm lab --task recall` report directory (part 1)")
    parser.add_argument("--recall-questions", type=int, default=None, help="real questions measured (default: all)")
    parser.add_argument("--contexts", type=int, default=20, help="Wikipedia contexts (default: 20)")
    parser.add_argument("--words", type=int, default=200, help="words before each prediction (default: 200)")
    parser.add_argument("--no-deletion", action="store_true", help="skip ERASER's deletion figures")
    parser.add_argument("--cost-words", type=int, nargs="*", default=[20, 200, 1000])
    parser.add_argument("--cost-contexts", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=None, help="methods (default: every registered one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    methods = args.methods or list(method_names())
    unknown = sorted(set(methods) - set(method_names()))
    if unknown:
        print(f"attribution_truth: error: unknown methods {unknown} (registered: {', '.join(method_names())})", file=sys.stderr)
        return 2
    try:
        checkpoint = load_checkpoint(args.model)
        corpus = load_streamed_corpus(args.corpus or checkpoint.train_config.corpus)
    except (CheckpointError, CorpusError) as error:
        print(f"attribution_truth: error: {error}", file=sys.stderr)
        return 1
    record: dict = {"model": str(checkpoint.directory), "methods": methods, "tolerance": TOLERANCE}
    began = time.perf_counter()
    if args.recall is not None:
        questions, recall_predictor, run = planted_questions(args.recall)
        questions = questions[: args.recall_questions] if args.recall_questions else questions
        planted = planted_truth(recall_predictor, questions, methods)
        planted["run"] = run
        record["planted"] = planted
        print(f"planted keys ({run}): {planted['questions']} real questions, {planted['confident_recalls']} confident "
              f"recalls (P(key) >= {CONFIDENCE})")
        for method, row in planted["methods"].items():
            print(f"  {method:>22}: key inside the threshold reach {row['inside_threshold']}/{planted['confident_recalls']}, "
                  f"inside the 99% reach {row['inside_mass99']}/{planted['confident_recalls']}; key's share of the "
                  f"influence {_fmt(row['key_share_confident'])} (confident), {_fmt(row['key_share_all'])} (all)")
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)  # the model alone: no text cache
    test = corpus.test.text
    if args.contexts:
        wikipedia = wikipedia_truth(predictor, prompts(test, args.contexts, args.words, args.seed), methods,
                                    deletion=not args.no_deletion)
        record["wikipedia"] = wikipedia
        count = wikipedia["contexts"]
        print(f"Wikipedia, {count} contexts of {args.words} words; occlusion reach (median) "
              f"{_fmt(wikipedia['median_occlusion_reach_units'])} units")
        for method, row in wikipedia["methods"].items():
            print(f"  {method:>22}: 99% reach (median {_fmt(row['median_mass99_units'])} units) covers the occlusion reach "
                  f"in {row['covers_occlusion_reach']}/{count}, median ratio {_fmt(row['median_ratio_to_occlusion_reach'])}; "
                  f"filler beyond it moves log P < {TOLERANCE} in {row['true_at_mass99']}/{count}; comprehensiveness "
                  f"{_fmt(row['comprehensiveness'])}, sufficiency {_fmt(row['sufficiency'])}")
    if args.cost_words:
        record["cost"] = {}
        for words in args.cost_words:
            record["cost"][words] = cost(predictor, prompts(test, args.cost_contexts, words, args.seed + 1), methods)
            print(f"cost at {words} words (k 5; method time / prediction time): " + ", ".join(
                f"{method} {row['ratio']:.2f}x ({row['method_ms']:.0f} ms)" for method, row in record["cost"][words].items())
                + f"; prediction {statistics.median(row['prediction_ms'] for row in record['cost'][words].values()):.0f} ms")
    record["seconds"] = time.perf_counter() - began
    if args.json:
        args.json.write_text(json.dumps(record, indent=1, default=lambda value: value.item()), encoding="utf-8")  # numpy scalars
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    sys.exit(main())
