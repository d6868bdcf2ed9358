#!/usr/bin/env bash
# Set up (if needed), train the small preset on the Wikipedia subset (~2 minutes), then serve it.
# Uses $REACH_CORPUS, else ../shared/corpora/wiki-subset when present, else the Hugging Face hub.
# Extra arguments go to train.py; RUN sets the run directory, PORT the port (default 8000).
# Each call trains $RUN afresh (--overwrite: the previous run there is deleted first); RESUME=1 continues it instead
# (train.py --resume: extra arguments are then budget flags such as --max-minutes 5).
# Training stopped by Ctrl-C still saves: what it saved is served, as long as it reached an evaluation (best/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -z "${REACH_CORPUS:-}" ] && [ -d ../shared/corpora/wiki-subset ]; then
    export REACH_CORPUS="$PWD/../shared/corpora/wiki-subset"
fi
RUN=${RUN:-runs/quickstart}
if [ "${RESUME:-0}" != 0 ]; then
    training=(--resume "$RUN")
else
    training=(--preset small --out "$RUN" --overwrite)
fi
# train.py exits 130 when Ctrl-C stopped it (after saving); that must not end the script before serving.
status=0
.venv/bin/python train.py "${training[@]}" "$@" || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 130 ]; then
    exit "$status"  # a bad flag, a missing corpus or checkpoint: train.py has said why
fi
if [ ! -f "$RUN/best/config.json" ]; then
    echo "demo.sh: nothing to serve: training stopped before its first evaluation saved $RUN/best/;" \
         "continue it with RESUME=1 scripts/demo.sh" >&2
    exit 1
fi
[ "$status" -eq 130 ] && echo "training was stopped; serving what it saved (RESUME=1 scripts/demo.sh continues it)"
echo "serving $RUN: open http://127.0.0.1:${PORT:-8000}/ (Ctrl-C to stop)"
exec .venv/bin/python -m server --model "$RUN" --port "${PORT:-8000}"
