"""`python -m lm COMMAND`: Reach's tools for trained models.

    predict          the next words after a text
    generate         continue a text word by word, sampled from the model
    attribute        the next words with their gradient reach (and the text cache's pointer reach), and the text as a heatmap
    reach-profile    reach over many held-out contexts, for one or several models, as JSON and PNG
    evaluate         held-out bits per character, per-word perplexity, next-word accuracy (also by prompt length)
    tune-text-cache  tune the text cache's weight by prompt length and store it in the checkpoint (old name: tune-cache)
    lab              train cells, truncation lengths and clipping modes; write a report
    plot             draw a run's training curves to a PNG

The text cache is the continuous cache over the text read (Grave et al. 2017); not the server's prefix cache nor
training's token cache.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

from lm.config import ATTRIBUTION_METHODS
from lm.cli_support import add_deprecated_flag, configure_logging, positive_int


def _plot(args: argparse.Namespace) -> int:
    from lm.reports.plots import plot_metrics

    run = Path(args.run)
    out = args.out or (run if run.is_dir() else run.parent) / "metrics.png"  # beside the metrics, given a run or its file
    try:
        path = plot_metrics(Path(args.run), out)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as error:
        print(f"lm plot: error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _load(model: str):
    """A checkpoint, or None after printing one clear line."""
    from lm.checkpoint import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(model)
    except CheckpointError as error:
        print(f"lm: error: {error}", file=sys.stderr)
        return None


def _load_with_corpus(args: argparse.Namespace, command: str):
    """The checkpoint of `args.model` and the corpus it is measured on (`args.corpus`, else the one it was trained on;
    streamed: the training split is not read), or None after printing one clear line."""
    from corpora import CorpusError
    from lm.train.tokens import load_streamed_corpus

    checkpoint = _load(args.model)
    if checkpoint is None:
        return None
    try:
        return checkpoint, load_streamed_corpus(args.corpus or checkpoint.train_config.corpus)
    except CorpusError as error:
        print(f"lm {command}: error: {error}", file=sys.stderr)
        return None


def _answer_json(model: str, tokenizer, result) -> str:
    """A prediction's or a generation's answer (lm/answers.py: the HTTP API's models) as JSON."""
    from lm.answers import generation_answer, prediction_answer, to_json
    from lm.infer.generate import Generation

    if isinstance(result, Generation):
        return to_json(generation_answer(model, result), indent=2)
    return to_json(prediction_answer(model, tokenizer, result), indent=2)


def _predicted(args: argparse.Namespace, command: str, work, print_json: bool = False):
    """(checkpoint, work(predictor)) for args.model, or the exit status after one clear line: 1 when the model
    cannot be loaded, 2 when `work` rejects its input (a ValueError). With `print_json` and --json, the result is
    printed as JSON (with the model's directory) and the status is 0."""
    from lm.infer.predictor import Predictor

    checkpoint = _load(args.model)
    if checkpoint is None:
        return 1
    try:
        result = work(Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=checkpoint.text_cache_settings))
    except ValueError as error:
        print(f"lm {command}: error: {error}", file=sys.stderr)
        return 2
    if print_json and args.json:
        print(_answer_json(str(checkpoint.directory), checkpoint.tokenizer, result))
        return 0
    return checkpoint, result


def _predict(args: argparse.Namespace) -> int:
    done = _predicted(args, "predict", lambda predictor: predictor.predict(
        args.text, k=args.k, beam_width=args.beam_width, max_word_length=args.max_word_length, temperature=args.temperature,
        text_cache=args.text_cache, max_units=args.max_units), print_json=True)
    if isinstance(done, int):
        return done
    _, result = done
    what = f"completing {result.query.partial!r}" if result.completing else "next word"
    mixed = "with the continuous cache over the text" if result.text_cache else "the model alone"
    unread = f" (the first {result.cut.chars} characters not read)" if result.cut.truncated else ""
    print(f"{result.query.text!r} ({what}; {result.context_units} units of context{unread}; {mixed}; on the CPU engine)")
    print(f"  {'#':>2}  {'word':<20} {'probability':>11}  {'logprob':>8}" + ("  to type" if result.completing else ""))
    for rank, prediction in enumerate(result.predictions, 1):
        rest = f"  {prediction.remainder}" if result.completing else ""
        print(f"  {rank:>2}  {prediction.word:<20} {prediction.probability:>11.4f}  {prediction.logprob:>8.3f}{rest}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from lm.infer.generate import GenerationSettings, generate

    def work(predictor):
        settings = GenerationSettings(words=args.words, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                      stop_at_newline=args.stop_at_newline)
        return generate(predictor, args.text, settings, seed=args.seed, text_cache=args.text_cache)

    done = _predicted(args, "generate", work, print_json=True)
    if isinstance(done, int):
        return done
    _, generation = done
    print(generation.text + generation.continuation)
    mixed = "with the continuous cache over the text" if generation.text_cache else "the model alone"
    print(f"({len(generation.words)} words, seed {generation.seed}, stopped: {generation.stopped}; {mixed})", file=sys.stderr)
    return 0


def _text_cache_flags(parser: argparse.ArgumentParser, what: str,
                      default: str = "on when the checkpoint's settings are tuned by prompt length") -> None:
    """--text-cache / --no-text-cache (old name --no-cache, deprecated): args.text_cache is True, False or None (the
    default: for predictions, on when the checkpoint's text cache settings are tuned by prompt length,
    Predictor.uses_text_cache)."""
    switch = parser.add_mutually_exclusive_group()
    switch.add_argument("--text-cache", dest="text_cache", action="store_const", const=True, default=None,
                        help=f"mix in {what} with the checkpoint's settings, even settings tuned only on a long stream "
                             f"(default: {default})")
    switch.add_argument("--no-text-cache", dest="text_cache", action="store_const", const=False,
                        help=f"the model alone: do not mix in {what}")
    add_deprecated_flag(switch, "--no-cache", "--no-text-cache", dest="text_cache", const=False)


def _top_p(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {value}")
    return value


def _attribute(args: argparse.Namespace) -> int:
    from lm.infer.attribution import attribute
    from lm.infer.methods import MethodOptions
    from lm.reports.views import render_html, render_terminal

    done = _predicted(args, "attribute", lambda predictor: attribute(
        predictor, args.text, k=args.k, method=args.method, threshold=args.threshold, verify=args.verify,
        max_units=args.max_units, text_cache=args.text_cache, foil=args.foil,
        options=MethodOptions(steps=args.steps, baseline=args.baseline, rungs=args.rungs)))
    if isinstance(done, int):
        return done
    checkpoint, result = done
    chosen = min(args.index, len(result.predictions)) - 1
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(render_html(result, str(checkpoint.directory)), encoding="utf-8")
    if args.json:
        from lm.answers import attribution_answer, to_json
        from lm.infer.attribution import HOW

        print(to_json(attribution_answer(str(checkpoint.directory), checkpoint.tokenizer, result, full=True, how=HOW), indent=1))
    else:
        color = not args.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty() or args.color
        print(render_terminal(result, chosen=max(chosen, 0), color=color, view=args.view))
        if args.html:
            print(f"\nwrote {args.html}")
    return 0


def _reach_profile(args: argparse.Namespace) -> int:
    from corpora import CorpusError
    from lm.infer.predictor import Predictor
    from lm.reports.reach_profile import reach_profile, write_profiles
    from lm.train.run import set_threads
    from lm.train.tokens import load_streamed_corpus

    set_threads(args.threads)
    checkpoints = []
    for model in args.model:
        checkpoint = _load(model)
        if checkpoint is None:
            return 1
        checkpoints.append(checkpoint)
    profiles = {}
    for checkpoint in checkpoints:
        try:
            corpus = load_streamed_corpus(args.corpus or checkpoint.train_config.corpus)  # the training split is not read
        except CorpusError as error:
            print(f"lm reach-profile: error: {error}", file=sys.stderr)
            return 1
        name = checkpoint.directory.parent.name if checkpoint.directory.name in ("best", "last") else checkpoint.directory.name
        profile = reach_profile(Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0), corpus.split(args.split).text,
                                samples=args.samples, seed=args.seed, context_chars=args.context_chars, threshold=args.threshold,
                                verify=not args.no_verify, method=args.method, progress=sys.stderr.isatty())
        profile["model"] = str(checkpoint.directory)
        profile["cell"] = checkpoint.model_config.cell
        profiles[name] = profile
        r, f = profile["reach"], profile["faithfulness"]["abs_logprob_change"]
        print(f"{name}: {profile['samples']} contexts; median reach {r['tokens'].get('median', 0):.0f} units / "
              f"{r['words'].get('median', 0):.0f} words; 90% of influence within {r['mass90_words'].get('median', 0):.0f} words, "
              f"99% within {r['mass99_words'].get('median', 0):.0f}" + (f"; median |change of log P| with filler {f['median']:.3f}" if f else ""))
    json_path, png_path = write_profiles(profiles, args.out)
    print(f"wrote {json_path} and {png_path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from lm.checkpoint import TEXT_CACHE_METRIC
    from lm.eval.figures import HOW_STATE_FLOWS, evaluate_adapted, evaluate_text
    from lm.infer.accuracy import describe_prompt_lengths, next_word_accuracy, paired_accuracy, prompt_length_accuracy
    from lm.infer.predictor import Predictor
    from lm.train.run import set_threads
    from lm.train.tokens import token_cache_directory, token_ids

    if args.no_text_cache and args.predict_text_cache is not None:
        print("lm evaluate: error: --predict-text-cache and --no-text-cache contradict each other: give one", file=sys.stderr)
        return 2
    set_threads(args.threads)
    loaded = _load_with_corpus(args, "evaluate")
    if loaded is None:
        return 1
    checkpoint, corpus = loaded
    split = corpus.split(args.split)
    try:
        ids = token_ids(split, checkpoint.tokenizer, token_cache_directory(None), progress=False).ids.tolist()  # encoded once, then cached
    except OSError as error:
        print(f"lm evaluate: warning: the token cache cannot be used ({error}); encoding the {args.split} split here", file=sys.stderr)
        ids = None
    figures = evaluate_text(checkpoint.model, checkpoint.tokenizer, split.text, split.raw_words, ids=ids)
    adapted = None
    try:
        if args.text_cache is not None or args.dynamic is not None:
            adapted = evaluate_adapted(checkpoint.model, checkpoint.tokenizer, split.text, split.raw_words,
                                       corpus.split("valid").text, text_cache=args.text_cache, dynamic_lr=args.dynamic)
    except FloatingPointError as error:  # dynamic evaluation at too high a learning rate
        print(f"lm evaluate: error: {error}; try a smaller --dynamic learning rate or 'tune'", file=sys.stderr)
        return 1
    stored = None if args.no_text_cache else args.predict_text_cache or checkpoint.text_cache_settings
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0, text_cache_settings=stored)
    accuracy = next_word_accuracy(predictor, split.text, positions=args.positions, seed=args.seed, beam_width=args.beam_width,
                                  progress=not args.json and sys.stderr.isatty(), text_cache=False, keep_ranks=True)
    alone_ranks = accuracy.pop("ranks")
    report = {"model": str(checkpoint.directory), "corpus": corpus.name, "split": args.split, **figures.as_dict(),
              "accuracy": accuracy, "evaluation": HOW_STATE_FLOWS, "stored_cache": checkpoint.metrics.get(TEXT_CACHE_METRIC)}
    cached_accuracy = None
    if stored is not None:  # the same positions predicted as served: with the stored text cache over the text read so far
        cached_accuracy = next_word_accuracy(predictor, split.text, positions=args.positions, seed=args.seed, beam_width=args.beam_width,
                                             progress=not args.json and sys.stderr.isatty(), keep_ranks=True)
        paired = paired_accuracy(alone_ranks, cached_accuracy.pop("ranks"))
        report["accuracy_with_cache"] = cached_accuracy
        report["accuracy_cache"] = {**asdict(stored), "given": args.predict_text_cache is not None}
        report["cache_against_alone"] = [comparison.as_dict() for comparison in paired]
    if adapted is not None:
        report["adapted"] = adapted.as_dict()
    by_prompt = None
    if args.prompt_words:  # served quality by prompt length: the N words before each position, read as a request is
        by_prompt = prompt_length_accuracy(predictor, split.text, tuple(args.prompt_words), positions=args.positions or 200,
                                           seed=args.seed, beam_width=args.beam_width,
                                           progress=not args.json and sys.stderr.isatty(), text_cache=stored is not None)
        report["by_prompt_length"] = by_prompt
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.split}: {figures.bpc:.4f} bpc  per-word ppl {figures.word_ppl:.2f}  per-unit ppl {figures.unit_ppl:.2f}  "
          f"({figures.words:,.0f} words, {figures.chars:,} chars, {figures.units:,} units)")
    sample = f"a seeded sample (seed {args.seed}) of {accuracy['positions']:,} of {accuracy['of']:,}" if accuracy["seed"] is not None else f"all {accuracy['of']:,}"
    if adapted is not None:
        print(f"with {adapted.describe()}: {adapted.figures.bpc:.4f} bpc  per-word ppl {adapted.figures.word_ppl:.2f}")
    print(f"next-word accuracy over {sample} word positions: top-1 {accuracy['top1']:.2%}  top-3 {accuracy['top3']:.2%}  top-5 {accuracy['top5']:.2%}")
    stored_cache = checkpoint.metrics.get(TEXT_CACHE_METRIC)
    if stored_cache:
        valid, test = stored_cache.get("valid", {}), stored_cache.get("test", {})
        print(f"stored text cache (window {stored_cache['window']} units, theta {stored_cache['theta']:g}, weight "
              f"{stored_cache['weight']:g}, {stored_cache.get('chosen', 'given')}): valid {valid.get('bpc', math.nan):.4f} bpc  "
              f"per-word ppl {valid.get('word_ppl', math.nan):.2f}; test {test.get('bpc', math.nan):.4f} bpc  "
              f"per-word ppl {test.get('word_ppl', math.nan):.2f}")
    else:
        print("stored text cache: none (predictions use the model alone)")
    if cached_accuracy is not None:
        which = ("the stored text cache" if args.predict_text_cache is None else
                 f"the text cache window {stored.window}, theta {stored.theta:g}, weight {stored.weight:g} (--predict-text-cache)")
        print(f"next-word accuracy with {which}, same positions: top-1 {cached_accuracy['top1']:.2%}  "
              f"top-3 {cached_accuracy['top3']:.2%}  top-5 {cached_accuracy['top5']:.2%}")
        for comparison in paired:  # position by position: only where the two disagree does one do better
            print(f"  {comparison.describe()}")
    if by_prompt is not None:
        print(describe_prompt_lengths(by_prompt))
    print(f"evaluation: {HOW_STATE_FLOWS}")
    return 0


def _tune_text_cache(args: argparse.Namespace) -> int:
    if args.command == "tune-cache":
        print("python -m lm: warning: tune-cache is deprecated; use tune-text-cache", file=sys.stderr)
    from lm.checkpoint import TEXT_CACHE_METRIC, update_metrics
    from lm.train.run import set_threads, tune_text_cache
    from lm.train.tokens import token_cache_directory, token_ids

    set_threads(args.threads)
    loaded = _load_with_corpus(args, args.command)
    if loaded is None:
        return 1
    checkpoint, corpus = loaded
    stored = checkpoint.text_cache_settings
    keep = None if args.all or stored is None else stored
    heldout = {name: token_ids(corpus.split(name), checkpoint.tokenizer, token_cache_directory(None), progress=False).ids.tolist()
               for name in ("valid", "test")}
    tuned = tune_text_cache(checkpoint.model, checkpoint.tokenizer, corpus, heldout, keep)
    if keep is not None:
        tuned["chosen"] = f"{stored.window}, {stored.theta:g}, {stored.weight:g} as stored; the weight by memory size " \
                          "tuned on prompts of the valid split (lm tune-text-cache)"
    update_metrics(checkpoint.directory, {TEXT_CACHE_METRIC: tuned})
    if args.json:
        print(json.dumps({"model": str(checkpoint.directory), "cache": tuned}, indent=2))
        return 0
    print(f"{checkpoint.directory}: text cache window {tuned['window']} units, theta {tuned['theta']:g}, "
          f"stream weight {tuned['weight']:g} ({'as stored' if keep is not None else 'tuned on the valid split'})")
    for row in tuned["size_tuning"]:
        low, high = row["keys"]
        print(f"  memory of {low:,}-{high - 1:,} keys: weight {row['weight']:g}  ({row['nats_per_unit']:.4f} nats per unit "
              f"against {row['model_alone']:.4f} for the model alone, {row['positions']:,} positions)")
    print(f"test with the text cache: {tuned['test']['bpc']:.4f} bpc  per-word ppl {tuned['test']['word_ppl']:.2f}; "
          f"predictions now mix it in by default")
    return 0


def _word_counts(value: str) -> list[int]:
    """--prompt-words: a comma-separated list of positive word counts."""
    try:
        counts = [int(part) for part in value.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive word counts separated by commas, e.g. 5,12,30; not {value!r}")
    return counts


def _text_cache_setting(value: str):
    """--text-cache: 'tune' or WINDOW,THETA,WEIGHT."""
    from lm.eval.cache import TextCacheConfig

    if value == "tune":
        return value
    try:
        window, theta, weight = value.split(",")
        return TextCacheConfig(int(window), float(theta), float(weight))
    except ValueError as error:
        detail = str(error) if "cache" in str(error) else "expected 'tune' or WINDOW,THETA,WEIGHT such as 4000,4,0.5"
        raise argparse.ArgumentTypeError(detail) from None


def _given_text_cache_setting(value: str):
    """--predict-text-cache: WINDOW,THETA,WEIGHT ('tune' has no meaning there)."""
    if value == "tune":
        raise argparse.ArgumentTypeError("expected WINDOW,THETA,WEIGHT such as 4000,4,0.2 ('tune' is for --text-cache)")
    return _text_cache_setting(value)


def _dynamic_setting(value: str):
    """--dynamic: 'tune' or a positive learning rate."""
    if value == "tune":
        return value
    try:
        lr = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'tune' or a learning rate such as 1.0, not {value!r}") from None
    if not lr > 0 or lr == float("inf"):
        raise argparse.ArgumentTypeError(f"the learning rate must be positive, not {value}")
    return lr


def _lab(args: argparse.Namespace) -> int:
    from corpora import CorpusError
    from lm.reports.lab import CELLS, CLIPPING, LabSettings, run_lab
    from lm.train.run import set_threads

    set_threads(args.threads)
    overrides = {"seed": args.seed, "tokenizer": args.tokenizer}
    for name in ("cells", "k2s", "clipping"):
        value = getattr(args, name)
        if value:
            overrides[name] = tuple(value)
    for name in ("parameters", "samples", "embed_dim"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.k2 is not None:
        overrides["default_k2"] = args.k2
    overrides["device"] = args.device
    unknown = set(overrides.get("cells", ())) - set(CELLS) or set(overrides.get("clipping", ())) - set(CLIPPING)
    if unknown:
        print(f"lm lab: error: unknown choice(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    given = ["--" + name.replace("_", "-") for name in RECALL_FLAGS if getattr(args, name) is not None]
    if given and args.task != "recall":
        print(f"lm lab: error: {', '.join(given)} apply only to --task recall", file=sys.stderr)
        return 2
    if args.task == "recall" and "k2s" not in overrides:
        overrides["k2s"] = RECALL_K2S  # shorter and longer than the planted distances
    if args.quick:
        settings = LabSettings.quick_mode(**overrides, **({"minutes": args.minutes} if args.minutes else {}))
    else:
        settings = LabSettings(minutes=args.minutes or 3.0, **overrides)
    try:
        from lm.train.devices import resolve_device

        resolve_device(settings.device)  # a device this machine lacks stops the lab before any corpus is read
        if args.task == "recall":
            from lm.reports.recall_lab import RecallSettings, run_recall_lab

            recall = RecallSettings.quick_mode() if args.quick else RecallSettings()
            changes = {name: getattr(args, name) for name in ("train_examples", "plain_lines") if getattr(args, name) is not None}
            if args.distances:
                changes.update(min_distance=args.distances[0], max_distance=args.distances[1])
            if args.test_distances:
                changes.update(test_distances=tuple(args.test_distances))
            recall = replace(recall, **changes)
            report = run_recall_lab(args.corpus, args.out, settings, recall)
            print(f"wrote {report} (and recall.json, recall_accuracy.png, recall_reach.png in {args.out})")
            return 0
        report = run_lab(args.corpus, args.out, settings)
    except (CorpusError, ValueError) as error:
        print(f"lm lab: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {report} (and lab.json, validation.png, gradients.png, reach.png in {args.out})")
    return 0


# The flags (as argparse names) that set the recall task's planted corpus: refused for the Wikipedia task.
RECALL_FLAGS = ("distances", "test_distances", "train_examples", "plain_lines")

# The recall task's default truncation lengths: shorter and longer than its 40-400 character distances.
RECALL_K2S = (16, 512)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `python -m lm` parser with one sub-command per tool."""
    parser = argparse.ArgumentParser(prog="python -m lm", description="Reach: tools for trained recurrent language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser("predict", help="the k most probable next words (or completions) after a text")
    predict.add_argument("--model", required=True, help="run or checkpoint directory")
    predict.add_argument("text", help="the text so far; a trailing space asks for the next word, none for completions")
    predict.add_argument("-k", type=positive_int, default=5, help="number of words (default: 5)")
    predict.add_argument("--beam-width", type=positive_int, default=16, help="beam width of the search (default: 16)")
    predict.add_argument("--max-word-length", type=positive_int, default=24, help="longest word, in units (default: 24)")
    predict.add_argument("--temperature", type=_positive_float, default=1.0, help="divide logits by this (default: 1)")
    predict.add_argument("--max-units", type=positive_int, default=None,
                         help="read at most the last N units, as lm attribute --max-units and the server's "
                              "REACH_MAX_CONTEXT_UNITS do (reported; default: the whole text)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _text_cache_flags(predict, "the text cache (the continuous cache over the text)")
    predict.set_defaults(handler=_predict)

    generate = commands.add_parser("generate", help="continue a text word by word, sampled from the model (seeded)",
                                   description="Continue a text word by word. Each word is sampled among the top-k most "
                                               "probable next words (exact probabilities, docs/PREDICTION.md), weighted by "
                                               "p ** (1 / temperature), then cut to the top-p share.")
    generate.add_argument("--model", required=True, help="run or checkpoint directory")
    generate.add_argument("text", help="the text to continue (ending inside a word: that word is completed first)")
    generate.add_argument("--words", type=positive_int, default=20, help="number of words to generate (default: 20)")
    generate.add_argument("--temperature", type=_positive_float, default=1.0,
                          help="sample with weights p ** (1 / T): below 1 sharper, above 1 flatter (default: 1)")
    generate.add_argument("--top-k", type=positive_int, default=20, help="sample among the K most probable words (default: 20; 1: greedy)")
    generate.add_argument("--top-p", type=_top_p, default=1.0, help="then among the most probable reaching this share (default: 1: all K)")
    generate.add_argument("--seed", type=int, default=None, help="seed of the sampling (default: a random one, printed)")
    generate.add_argument("--stop-at-newline", action="store_true", help="stop before a line break")
    generate.add_argument("--json", action="store_true", help="print JSON: the continuation and each word with its probability")
    _text_cache_flags(generate, "the text cache (the continuous cache over the prompt and the words generated so far)",
                      default="off: with it, continuations repeat their own words several times as often")
    generate.set_defaults(handler=_generate)

    attribute = commands.add_parser("attribute", help="the next words with how far back their gradient influence (and the "
                                                       "text cache's pointer) reaches")
    attribute.add_argument("--model", required=True, help="run or checkpoint directory")
    attribute.add_argument("text", help="the text so far")
    attribute.add_argument("-k", type=positive_int, default=5, help="number of predictions (default: 5)")
    attribute.add_argument("--method", choices=ATTRIBUTION_METHODS, default="saliency",
                           help="how a unit's influence is measured: saliency (the gradient's L2 norm), grad_x_input "
                                "(|gradient . embedding|), occlusion (the exact change of log P when the text farther "
                                "back than d is replaced by filler, for a ladder of d) ... (default: saliency)")
    attribute.add_argument("--foil", default=None, help="explain each word against this one: log P(word) - log P(foil)")
    attribute.add_argument("--steps", type=positive_int, default=16,
                           help="integrated_gradients: points on the path from the baseline (default: 16)")
    attribute.add_argument("--baseline", choices=("zero", "pad"), default="zero",
                           help="integrated_gradients: zero embeddings or the pad unit's (default: zero)")
    attribute.add_argument("--rungs", type=positive_int, default=10,
                           help="occlusion: distances in the ladder (default: 10)")
    attribute.add_argument("--threshold", type=_positive_float, default=0.01, help="threshold reach: influence (or a pointer position's share) >= this x the "
                                "largest (default: 0.01)")
    attribute.add_argument("--verify", action="store_true", help="also replace text beyond the 99%% reach by filler and report the change")
    attribute.add_argument("--max-units", type=positive_int, default=None, help="read at most the last N units (reported)")
    attribute.add_argument("--index", type=positive_int, default=1, help="which prediction the heatmap shows (default: 1)")
    attribute.add_argument("--view", choices=("units", "words", "sentences"), default="units",
                           help="colour each unit, or each word or sentence by its units' influence summed (default: "
                                "units; the HTML page has all three)")
    attribute.add_argument("--json", action="store_true", help="print the full structure as JSON (the HTTP API's field names)")
    attribute.add_argument("--html", type=Path, default=None, metavar="FILE", help="also write a self-contained HTML page")
    attribute.add_argument("--color", action="store_true", help="colour even when not writing to a terminal")
    attribute.add_argument("--no-color", action="store_true", help="no colours (also when NO_COLOR is set)")
    _text_cache_flags(attribute, "the text cache (the continuous cache over the text; without it: no pointer, the gradient "
                                 "is the model's own)")
    attribute.set_defaults(handler=_attribute)

    profile = commands.add_parser("reach-profile", help="gradient reach over many held-out contexts (JSON and PNG), of the "
                                                              "model alone (the stored text cache is not mixed in)")
    profile.add_argument("--model", required=True, action="append", help="run or checkpoint directory (repeat to compare models)")
    profile.add_argument("--samples", type=positive_int, default=50, help="number of seeded contexts (default: 50)")
    profile.add_argument("--split", choices=("valid", "test"), default="test")
    profile.add_argument("--corpus", default=None, help="corpus (default: the name each model's checkpoint stores, loaded again)")
    profile.add_argument("--context-chars", type=positive_int, default=2000, help="characters of text before each prediction (default: 2000)")
    profile.add_argument("--threshold", type=_positive_float, default=0.01,
                         help="threshold reach: influence >= this x the largest (default: 0.01)")
    profile.add_argument("--method", choices=ATTRIBUTION_METHODS, default="saliency",
                         help="influence as the gradient's L2 norm, or as |gradient . embedding| (default: saliency)")
    profile.add_argument("--no-verify", action="store_true", help="skip the faithfulness check")
    profile.add_argument("--seed", type=int, default=0, help="seed of the sampled contexts (default: 0)")
    profile.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: every core)")
    profile.add_argument("--out", type=Path, default=Path("reach-profile"), help="output path without suffix (default: reach-profile)")
    profile.set_defaults(handler=_reach_profile)

    evaluate = commands.add_parser("evaluate", help="held-out bpc, per-word perplexity and next-word top-1/3/5 accuracy")
    evaluate.add_argument("--model", required=True, help="run or checkpoint directory")
    evaluate.add_argument("--split", choices=("train", "valid", "test"), default="test")
    evaluate.add_argument("--corpus", default=None, help="corpus (default: the name the checkpoint stores, loaded again)")
    evaluate.add_argument("--positions", type=positive_int, default=None, help="score a seeded sample of N word positions (default: all)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the sample (default: 0)")
    evaluate.add_argument("--beam-width", type=positive_int, default=16)
    evaluate.add_argument("--text-cache", type=_text_cache_setting, default=None, metavar="tune|WINDOW,THETA,WEIGHT",
                          help="also report the figures with the text cache, a continuous cache over the text read "
                               "(Grave et al. 2017): 'tune' picks its settings on the valid split (about 20 s), or give "
                               "them, e.g. 4000,4,0.5")
    add_deprecated_flag(evaluate, "--cache", "--text-cache", dest="text_cache", type=_text_cache_setting)
    evaluate.add_argument("--dynamic", type=_dynamic_setting, default=None, metavar="tune|LR",
                          help="also report the figures with dynamic evaluation (Krause et al. 2018: one SGD step on each "
                               "64 units after scoring them): 'tune' picks the learning rate on the valid split, or give it")
    evaluate.add_argument("--no-text-cache", action="store_true",
                          help="skip the next-word accuracy with the checkpoint's stored text cache (it is measured "
                               "beside the model's own by default when the checkpoint has settings)")
    add_deprecated_flag(evaluate, "--no-cache", "--no-text-cache", dest="no_text_cache", const=True)
    evaluate.add_argument("--predict-text-cache", type=_given_text_cache_setting, default=None, metavar="WINDOW,THETA,WEIGHT",
                          help="predict the next-word accuracy positions with these text cache settings instead of the "
                               "stored ones (e.g. a lighter weight, to see what it does to top-k); compared with the model "
                               "alone position by position")
    add_deprecated_flag(evaluate, "--predict-cache", "--predict-text-cache", dest="predict_text_cache",
                        type=_given_text_cache_setting)
    evaluate.add_argument("--prompt-words", type=_word_counts, default=None, metavar="N,N,...",
                          help="also measure served next-word quality by prompt length: at --positions seeded word "
                               "starts (default 200) whose word has a letter or digit, the N words before each read as "
                               "a request (e.g. 5,12,30,100,300,1000), plus the whole text before it as one stream; "
                               "top-1/3/5 and log loss with the text cache against the model alone, position by position")
    evaluate.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: every core)")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(handler=_evaluate)

    tune = commands.add_parser("tune-text-cache", aliases=["tune-cache"],
                               help="tune the text cache's weight by prompt length on the valid split and store it in "
                                    "the checkpoint (old name: tune-cache, deprecated)",
                               description="Tune how much the text cache (the continuous cache over a request's "
                                           "text) is trusted for each amount of text its memory holds (prompts of the valid split read from "
                                           "a zero state, as requests are), and store the settings in the checkpoint. "
                                           "Training does this itself; checkpoints trained before it serve the model "
                                           "alone by default until tuned here.")
    tune.add_argument("--model", required=True, help="run or checkpoint directory (a run's best/ is updated)")
    tune.add_argument("--corpus", default=None, help="corpus (default: the name the checkpoint stores, loaded again)")
    tune.add_argument("--all", action="store_true", help="also tune the window, theta and stream weight again on the "
                                                         "valid split (default: keep the stored ones)")
    tune.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: every core)")
    tune.add_argument("--json", action="store_true", help="print JSON")
    tune.set_defaults(handler=_tune_text_cache)

    lab = commands.add_parser("lab", help="the BPTT lab: cells, truncation and clipping under one budget, with a report")
    lab.add_argument("--corpus", default="wiki-subset", help="corpus (default: wiki-subset: $REACH_CORPUS, else ../shared/corpora/wiki-subset beside the project, else the hub)")
    lab.add_argument("--minutes", type=_positive_float, default=None, help="training minutes per run (default: 3; quick: 0.05)")
    lab.add_argument("--out", type=Path, required=True, help="report directory, e.g. reports/NAME")
    lab.add_argument("--task", choices=("wikipedia", "recall"), default="wikipedia",
                     help="wikipedia: reach on natural text (report.html); recall: a key planted 40-400 characters back in "
                          "filler from the corpus, recall and the truth of reach measured (recall.html; k2s default 16 512)")
    lab.add_argument("--quick", action="store_true", help="tiny models, a few seconds each: the whole lab in about a minute")
    lab.add_argument("--cells", nargs="+", default=None, metavar="CELL", help="cells to compare (default: all four)")
    lab.add_argument("--k2", type=positive_int, default=None,
                     help="truncation length of the cells comparison and the clipping runs (default: 32)")
    lab.add_argument("--k2s", nargs="+", type=positive_int, default=None, metavar="K2",
                     help="truncation lengths of the truncation sweep (default: 8 32 128; recall: 16 512)")
    lab.add_argument("--clipping", nargs="+", default=None, metavar="MODE", help="clipping modes: off norm value (default: all)")
    lab.add_argument("--tokenizer", choices=("char", "subword"), default="char")
    lab.add_argument("--parameters", type=positive_int, default=None, help="parameter count every cell is sized to (default: 400000; --quick: 12000)")
    lab.add_argument("--embed-dim", type=positive_int, default=None, help="embedding size of every run (default: 64; --quick: 16)")
    lab.add_argument("--samples", type=positive_int, default=None, help="reach-profile contexts per run")
    lab.add_argument("--seed", type=int, default=1234, help="seed of every run's initialisation and batches, the sampled "
                     "contexts and, with --task recall, the planted corpus (default: 1234)")
    lab.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: every core)")
    lab.add_argument("--device", default="cpu",
                     help="where the runs train: cpu (default), auto, cuda, cuda:N or mps, as train.py --device; "
                          "the measurements (reach, recall, ablation) run on the CPU engine")
    recall = lab.add_argument_group("the recall task (--task recall)")
    recall.add_argument("--distances", nargs=2, type=positive_int, default=None, metavar=("MIN", "MAX"),
                        help="characters from the answer back to the planted key, drawn log-uniformly (default: 40 400; "
                             "at least 34, the longest key and the question)")
    recall.add_argument("--test-distances", nargs=2, type=positive_int, default=None, metavar=("MIN", "MAX"),
                        help="distances of the test questions (default: as --distances; training and the valid split "
                             "keep --distances): test a model trained at short distances at longer ones")
    recall.add_argument("--train-examples", type=positive_int, default=None, metavar="N",
                        help="planted training lines (default: 4000; quick: 400); more lines keep a long run from "
                             "memorising the filler")
    recall.add_argument("--plain-lines", type=_non_negative_int, default=None, metavar="N",
                        help="lines of the corpus's own text after each planted training line (default: 1; 0 plants "
                             "a key in every line)")
    lab.set_defaults(handler=_lab)

    plot = commands.add_parser("plot", help="draw a run's training curves (loss, gradient norm, lr, speed) to a PNG")
    plot.add_argument("run", help="run directory (or its metrics.jsonl)")
    plot.add_argument("--out", type=Path, default=None, help="PNG path (default: metrics.png beside the metrics file)")
    plot.set_defaults(handler=_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "quiet", False))
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
