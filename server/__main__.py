"""`python -m server --model runs/NAME`: Reach's development server (use gunicorn in production, see README)."""

from __future__ import annotations

import argparse
import logging
import sys

from lm.checkpoint import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server", description="Serve Reach models over HTTP (development server).")
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]DIR",
                        help="a run or checkpoint directory to serve; repeat to serve several (a bare DIR is named after it)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from server import create_app
    from server.registry import parse_model_specs

    try:
        models = parse_model_specs(args.model)
        app = create_app({"REACH_MODELS": models, "REACH_THREADS": args.threads})
    except (ValueError, CheckpointError) as error:
        print(f"server: error: {error}", file=sys.stderr)
        return 1
    print(f"serving {', '.join(models)} on http://{args.host}:{args.port}/ (development server; see README for gunicorn)")
    app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
