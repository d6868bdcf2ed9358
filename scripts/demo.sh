#!/usr/bin/env bash
# Set up (if needed), train the small preset on the Wikipedia subset (~2 minutes), then serve it.
# Uses $REACH_CORPUS, else ../shared/corpora/wiki-subset when present, else the Hugging Face hub.
# Extra arguments go to train.py; RUN sets the run directory, PORT the port (default 8000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -z "${REACH_CORPUS:-}" ] && [ -d ../shared/corpora/wiki-subset ]; then
    export REACH_CORPUS="$PWD/../shared/corpora/wiki-subset"
fi
RUN=${RUN:-runs/quickstart}
.venv/bin/python train.py --preset small --out "$RUN" "$@"
echo "serving $RUN: open http://127.0.0.1:${PORT:-8000}/ (Ctrl-C to stop)"
exec .venv/bin/python -m server --model "$RUN" --port "${PORT:-8000}"
