"""`python -m server --model runs/NAME`: Reach's development server (use gunicorn in production, see README)."""

from __future__ import annotations

import argparse
import logging
import sys

from lm.checkpoint import CheckpointError
from lm.cli_support import positive_int
from server.settings import DEFAULTS

# Flag -> configuration key; a flag not given leaves the key to the environment, then to the default.
_LIMIT_FLAGS = {
    "max_text_chars": "REACH_MAX_TEXT_CHARS",
    "max_k": "REACH_MAX_K",
    "max_generate_words": "REACH_MAX_GENERATE_WORDS",
    "max_context_units": "REACH_MAX_CONTEXT_UNITS",
    "cache_size": "REACH_CACHE_SIZE",
    "max_content_length": "MAX_CONTENT_LENGTH",
    "threads": "REACH_THREADS",
}


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
    limits.add_argument("--max-text-chars", type=positive_int, default=None, metavar="N",
                        help=f"longest 'text' in characters (default: $REACH_MAX_TEXT_CHARS or {DEFAULTS['REACH_MAX_TEXT_CHARS']})")
    limits.add_argument("--max-k", type=positive_int, default=None, metavar="N",
                        help=f"largest 'k' (default: $REACH_MAX_K or {DEFAULTS['REACH_MAX_K']})")
    limits.add_argument("--max-generate-words", type=positive_int, default=None, metavar="N",
                        help=f"largest 'max_words' of /v1/generate (default: $REACH_MAX_GENERATE_WORDS or {DEFAULTS['REACH_MAX_GENERATE_WORDS']})")
    limits.add_argument("--max-context-units", type=positive_int, default=None, metavar="N",
                        help=f"units read for attribution (default: $REACH_MAX_CONTEXT_UNITS or {DEFAULTS['REACH_MAX_CONTEXT_UNITS']})")
    limits.add_argument("--cache-size", type=_non_negative_int, default=None, metavar="N",
                        help=f"prefix-cache entries per model (default: $REACH_CACHE_SIZE or {DEFAULTS['REACH_CACHE_SIZE']})")
    limits.add_argument("--max-content-length", type=positive_int, default=None, metavar="BYTES",
                        help=f"largest request body (default: $REACH_MAX_CONTENT_LENGTH or {DEFAULTS['MAX_CONTENT_LENGTH']})")
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
        config.update({key: getattr(args, flag) for flag, key in _LIMIT_FLAGS.items() if getattr(args, flag) is not None})
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
