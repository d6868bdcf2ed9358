"""Train a Reach language model with truncated BPTT and gradient clipping.

    python train.py --corpus ../shared/corpora/wiki-subset --tokenizer char --cell lstm --out runs/char-lstm
    python train.py --preset small --out runs/small          # about two minutes
    python train.py --resume runs/small --max-minutes 5      # continue a stopped run
    python train.py --preset small --out runs/small --overwrite   # start runs/small over, deleting its previous run
    python train.py --preset small --device cuda --precision bf16   # on a GPU, autocast to bfloat16
    torchrun --nproc_per_node=2 train.py --preset small      # several processes (DDP), see docs/DEPLOY.md

Every flag below is a field of `lm.config` (TokenizerConfig, ModelConfig,
TrainConfig) with the same name; a preset fills in several at once and
explicit flags win. Writes runs/NAME/{best,last}/ checkpoints and
runs/NAME/metrics.jsonl (plot it with `python -m lm plot runs/NAME`); a
directory that already holds a run is refused unless --resume continues it
or --overwrite deletes it first.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from corpora import CorpusError
from lm.checkpoint import CheckpointError
from lm.cli_support import GracefulStop, ProgressBar, add_dataclass_flags, collect_overrides, configure_logging
from lm.config import PRESETS, RENAMED_SETTINGS, ModelConfig, TokenizerConfig, TrainConfig, apply_preset
from lm.eval.figures import HOW_STATE_FLOWS
from lm.train.run_directory import previous_run
from lm.tokenizers import TokenizerError

log = logging.getLogger("train")


def _preset_in(argv: list[str] | None) -> str:
    """The --preset on the command line, read before the full parser is built so that --help shows its defaults."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", choices=sorted(PRESETS), default=None)
    known, _ = early.parse_known_args(argv)
    return known.preset or "base"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; defaults come from the dataclasses and the preset."""
    try:
        preset = _preset_in(argv)
    except SystemExit:  # a bad --preset: the full parser below says so with the usage line
        preset = "base"
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a character- or subword-level RNN/LSTM/GRU language model with truncated BPTT and gradient clipping. "
                    f"The defaults shown are those of --preset {preset}.",
        epilog="The corpus defaults to wiki-subset: $REACH_CORPUS if set, else ../shared/corpora/wiki-subset beside "
               "the project when present, else rebuilt from the Hugging Face hub.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a set of defaults (default: base, the 10-minute preset)")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directory for checkpoints and metrics (default: runs/<preset>-<tokenizer>-<cell>); one that "
                             "already holds a run (best/, last/ or metrics.jsonl) is refused unless --overwrite or --resume is given")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", type=Path, default=None, metavar="DIR",
                          help="continue the run in DIR from its last checkpoint with its settings; only budget flags "
                               "(--max-minutes, --max-steps, --epochs, --eval-interval, --checkpoint-minutes, --threads, "
                               "--accuracy-positions), --device and --token-cache may change, and budgets count the whole "
                               "run; other flags are ignored (with a warning)")
    existing.add_argument("--overwrite", action="store_true",
                          help="start a new run in --out even if it holds one: its best/, last/ and metrics.jsonl are "
                               "deleted first (other files there are kept)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log lines; only the final figures")
    add_dataclass_flags(parser, TokenizerConfig, "tokenizer", defaults=PRESETS[preset])
    add_dataclass_flags(parser, ModelConfig, "model", skip=("vocab_size",), defaults=PRESETS[preset])
    add_dataclass_flags(parser, TrainConfig, "training", defaults=PRESETS[preset], renamed=RENAMED_SETTINGS)
    args = parser.parse_args(argv)
    args.preset_given = args.preset is not None
    args.preset = args.preset or "base"
    return args


def _ignored_on_resume(args: argparse.Namespace, overrides: dict) -> list[str]:
    """The flags given with --resume that it does not use (the run's own settings win)."""
    from lm.train.run import BUDGET_FIELDS

    ignored = ["--" + name.replace("_", "-") for name in overrides if name not in BUDGET_FIELDS]
    if args.preset_given:
        ignored.insert(0, "--preset")
    if args.out is not None:
        ignored.insert(0, "--out")
    return ignored


def main(argv: list[str] | None = None) -> int:
    """Run training; returns the process exit code."""
    args = parse_args(argv)
    configure_logging(args.quiet)
    overrides = collect_overrides(args, (TokenizerConfig, ModelConfig, TrainConfig))
    try:
        tokenizer_config, model_config, train_config = apply_preset(args.preset, overrides)
    except (ValueError, TypeError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    out = args.resume or args.out or Path("runs") / f"{args.preset}-{tokenizer_config.tokenizer}-{model_config.cell}"
    is_main = int(os.environ.get("RANK", "0")) == 0  # torchrun's global rank, known before the group is joined
    if args.resume is None and not args.overwrite and (found := previous_run(out)):
        # Starting over silently would serve the old best/ until the new run's first evaluation replaced it.
        # Every process refuses (none has joined the group yet); rank 0 says why.
        if is_main:
            print(f"train.py: error: {out} already holds a run ({', '.join(found)}); continue it with --resume {out}, "
                  f"or add --overwrite to delete it and start over", file=sys.stderr)
        return 2

    # Entry point duties: devices, processes, threads and seeds (imported late: torch is slow to import).
    from lm.infer.accuracy import checkpoint_accuracy
    from lm.train.devices import describe_device, training_device
    from lm.train.distributed import init_distributed, shutdown
    from lm.train.run import BUDGET_FIELDS, resume_configs, seed_everything, set_threads, train_run

    if is_main and args.resume is not None and (ignored := _ignored_on_resume(args, overrides)):
        print(f"train.py: warning: --resume keeps the run's own settings; ignoring {', '.join(ignored)}", file=sys.stderr)
    try:
        if args.resume is not None:  # the device is the run's own unless --device is given
            train_config = resume_configs(args.resume, {k: v for k, v in overrides.items() if k in BUDGET_FIELDS})[2]
    except CheckpointError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    try:
        device = training_device(train_config.device)  # train_run trains there; the process group's backend needs it now
    except ValueError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    ranks = init_distributed(device)
    if not ranks.is_main:
        configure_logging(quiet=True)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = set_threads(train_config.threads or max(1, (os.cpu_count() or 1) // local))
    seed_everything(train_config.seed)
    log.info("training in %s on %s in %s with %d threads%s", out, describe_device(device), train_config.precision, threads,
             f" in each of {ranks.world_size} processes ({ranks.backend})" if ranks.enabled else "")
    progress = ProgressBar(enabled=not args.quiet and ranks.is_main and sys.stderr.isatty())
    try:
        with GracefulStop() as stop:
            result = train_run(tokenizer_config, model_config, train_config, out, resume=args.resume is not None,
                               should_stop=stop, progress=progress, distributed=ranks,
                               budget={k: v for k, v in overrides.items() if k in BUDGET_FIELDS}, accuracy=checkpoint_accuracy)
        # The other ranks wait here while rank 0 scores valid and test, so that every process leaves the group
        # together: one that tore its group down and exited while rank 0 still held it was seen to abort in CI
        # (SIGABRT from gloo's teardown), failing a run whose checkpoints were complete.
        ranks.barrier()
    except (CorpusError, CheckpointError, TokenizerError, ValueError) as error:
        progress.close()
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        print("train.py: aborted; the last checkpoint written is intact", file=sys.stderr)
        return 130
    finally:
        shutdown(ranks)
    progress.close()
    if result is None:  # a rank other than 0: rank 0 reports
        return 0
    state, test, valid = result.state, result.test, result.valid
    print(f"run: {out}  parameters {result.parameters:,}  steps {state.step:,}  epochs {state.epoch}  "
          f"training tokens {state.tokens:,}  training time {state.elapsed / 60:.1f} min")
    print(f"clipping: threshold {state.clip_threshold}  clipped steps {state.clipped_steps:,}  "
          f"skipped non-finite steps {state.skipped_steps}  rollbacks {state.rollbacks}")
    for name, figures in (("valid", valid), ("test", test)):
        print(f"{name}: {figures.bpc:.4f} bpc  per-word ppl {figures.word_ppl:.2f}  per-unit ppl {figures.unit_ppl:.2f}  "
              f"({figures.words:,.0f} words, {figures.chars:,} chars, {figures.units:,} units)")
    if result.accuracy:
        a = result.accuracy
        print(f"next-word accuracy on {a['positions']} seeded test positions: top-1 {a['top1']:.2%}  top-3 {a['top3']:.2%}  top-5 {a['top5']:.2%}")
    print(f"evaluation: {HOW_STATE_FLOWS}")
    print(f"checkpoints: {out / 'best'} (served), {out / 'last'} (resume); metrics: {out / 'metrics.jsonl'}")
    if result.stopped_early:
        print(f"stopped early; continue with: python train.py --resume {out}")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
