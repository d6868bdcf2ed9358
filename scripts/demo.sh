#!/usr/bin/env bash
# Set up (if needed), train the small preset on the Wikipedia subset, report held-out figures.
# Uses $REACH_CORPUS, else ../shared/corpora/wiki-subset when present, else the Hugging Face hub.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -z "${REACH_CORPUS:-}" ] && [ -d ../shared/corpora/wiki-subset ]; then
    export REACH_CORPUS="$PWD/../shared/corpora/wiki-subset"
fi
RUN=${RUN:-runs/quickstart}
.venv/bin/python train.py --preset small --out "$RUN" "$@"
