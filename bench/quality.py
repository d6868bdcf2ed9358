"""Held-out quality after N minutes of training on this machine.

    python bench/quality.py --minutes 10 --corpus ../shared/corpora/wiki-subset [train.py options]

Trains with Reach's `train.py` settings (the default preset unless options
say otherwise) for N minutes of training wall clock (evaluation excluded),
then scores the best checkpoint on the test split. The last line is
`test bpc B per-word-ppl P`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from lm.cli_support import collect_overrides, configure_logging  # noqa: E402
from lm.config import ModelConfig, TokenizerConfig, TrainConfig, apply_preset  # noqa: E402
from lm.runner import seed_everything, set_threads, train_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    ours, rest = parser.parse_known_args(argv)
    args = train.parse_args(["--corpus", ours.corpus, "--max-minutes", str(ours.minutes), *rest])
    configure_logging(args.quiet)
    overrides = collect_overrides(args, (TokenizerConfig, ModelConfig, TrainConfig))
    tokenizer_config, model_config, train_config = apply_preset(args.preset, overrides)
    set_threads(train_config.threads)
    seed_everything(train_config.seed)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "run"
        result = train_run(tokenizer_config, model_config, train_config, out)
    state = result.state
    print(f"preset {args.preset} {tokenizer_config.tokenizer} {model_config.cell} {model_config.num_layers}x{model_config.hidden_dim} "
          f"params {result.parameters:,} steps {state.step:,} tokens {state.tokens:,} "
          f"tokens/s {state.tokens / max(state.elapsed, 1e-9):,.0f} train-minutes {state.elapsed / 60:.2f}")
    print(f"valid bpc {result.valid.bpc:.4f} per-word-ppl {result.valid.word_ppl:.2f}")
    print(f"test bpc {result.test.bpc:.4f} per-word-ppl {result.test.word_ppl:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
