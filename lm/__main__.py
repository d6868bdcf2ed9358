"""`python -m lm COMMAND`: Reach's tools for trained models.

    plot      draw a run's training curves to a PNG
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lm.cli_support import configure_logging


def _plot(args: argparse.Namespace) -> int:
    from lm.plots import plot_metrics

    out = args.out or Path(args.run) / "metrics.png"
    try:
        path = plot_metrics(Path(args.run), out)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as error:
        print(f"lm plot: error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `python -m lm` parser with one sub-command per tool."""
    parser = argparse.ArgumentParser(prog="python -m lm", description="Reach: tools for trained recurrent language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plot = commands.add_parser("plot", help="draw a run's training curves (loss, gradient norm, lr, speed) to a PNG")
    plot.add_argument("run", help="run directory (or its metrics.jsonl)")
    plot.add_argument("--out", type=Path, default=None, help="PNG path (default: RUN/metrics.png)")
    plot.set_defaults(handler=_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "quiet", False))
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
