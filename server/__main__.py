"""`python -m server --model runs/NAME`: Reach's development server (use gunicorn in production, see README)."""

from __future__ import annotations

import argparse
import logging
import sys

from lm.checkpoint import CheckpointError
from lm.cli_support import add_deprecated_flag, positive_int
from server.settings import DEFAULTS, DEPRECATED

# The development server's limit flags: flag, configuration key, environment variable, what it bounds. A flag not
# given leaves the key to the environment, then to the default.
LIMIT_FLAGS = (
    ("--max-text-chars", "REACH_MAX_TEXT_CHARS", "REACH_MAX_TEXT_CHARS", "longest 'text' in characters"),
    ("--max-k", "REACH_MAX_K", "REACH_MAX_K", "largest 'k'"),
    ("--max-generate-words", "REACH_MAX_GENERATE_WORDS", "REACH_MAX_GENERATE_WORDS", "largest 'max_words' of /v1/generate"),
    ("--max-context-units", "REACH_MAX_CONTEXT_UNITS", "REACH_MAX_CONTEXT_UNITS", "units of context read, with or without attribution"),
    ("--prefix-cache-size", "REACH_PREFIX_CACHE_SIZE", "REACH_PREFIX_CACHE_SIZE", "prefix cache entries (contexts read) per model"),
    ("--prefix-cache-mb", "REACH_PREFIX_CACHE_MB", "REACH_PREFIX_CACHE_MB",
     "prefix cache megabytes per model (the latest context is always kept)"),
    ("--max-content-length", "MAX_CONTENT_LENGTH", "REACH_MAX_CONTENT_LENGTH", "largest request body"),
    ("--max-in-flight", "REACH_MAX_IN_FLIGHT", "REACH_MAX_IN_FLIGHT",
     "model requests computing at once; past it 429 with Retry-After at once"),
    ("--rate-limit", "REACH_RATE_LIMIT", "REACH_RATE_LIMIT", "requests per minute per API key (0: none; needs keys)"),
)
# Flags renamed by the naming pass of issue 27, kept working (hidden, with a warning line): old flag -> new flag.
DEPRECATED_FLAGS = {"--cache-size": "--prefix-cache-size", "--cache-mb": "--prefix-cache-mb"}


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server", description="Serve Reach models over HTTP (development server).")
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]DIR",
                        help="a run or checkpoint directory to serve; repeat to serve several (a bare DIR is named after it)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: $REACH_THREADS, else all cores)")
    limits = parser.add_argument_group("limits", "each defaults to its environment variable (docs/API.md), else the value shown")
    zero_allowed = {*DEPRECATED.values(), "REACH_RATE_LIMIT"}
    for flag, key, variable, what in LIMIT_FLAGS:
        limits.add_argument(flag, type=_non_negative_int if key in zero_allowed else positive_int, default=None,
                            metavar="BYTES" if key == "MAX_CONTENT_LENGTH" else "N",
                            help=f"{what} (default: ${variable} or {DEFAULTS[key]})")
    access = parser.add_argument_group("access and metrics", "docs/DEPLOY.md")
    access.add_argument("--api-key", action="append", default=None, metavar="KEY",
                        help="a key that /v1/* accepts as 'Authorization: Bearer KEY'; repeat for several (default: "
                             "$REACH_API_KEYS; a key here shows in the process list: prefer --api-keys-file)")
    access.add_argument("--api-keys-file", default=None, metavar="PATH",
                        help="a file of keys, one a line: KEY or NAME KEY (default: $REACH_API_KEYS_FILE)")
    access.add_argument("--no-metrics", action="store_true", help="switch GET /metrics off (default: $REACH_METRICS or on)")
    for old, new in DEPRECATED_FLAGS.items():
        add_deprecated_flag(limits, old, new, dest=new[2:].replace("-", "_"), type=_non_negative_int, default=None, metavar="N")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from server import create_app
    from server.registry import parse_model_specs

    try:
        models = parse_model_specs(args.model)
        config = {"REACH_MODELS": models}
        # Only the flags given: the others must not hide the environment (REACH_THREADS=1 python -m server ...).
        given = {key: getattr(args, flag[2:].replace("-", "_")) for flag, key, _, _ in LIMIT_FLAGS}
        given["REACH_THREADS"] = args.threads
        given["REACH_API_KEYS"] = tuple(args.api_key) if args.api_key else None
        given["REACH_API_KEYS_FILE"] = args.api_keys_file
        given["REACH_METRICS"] = False if args.no_metrics else None
        config.update({key: value for key, value in given.items() if value is not None})
        app = create_app(config)
    except (ValueError, CheckpointError) as error:
        print(f"server: error: {error}", file=sys.stderr)
        return 1
    import torch

    print(f"serving {', '.join(models)} on http://{args.host}:{args.port}/ with {torch.get_num_threads()} torch thread(s) "
          "on the CPU (the CPU engine serves, GPU or not; development server; see README for gunicorn)")
    app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
