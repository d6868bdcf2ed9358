#!/usr/bin/env bash
# The quality sweep behind the default preset (docs/BENCHMARKS.md). Each line trains one
# configuration for $MINUTES minutes with bench/quality.py and appends its command and
# figures to bench/results/quality-sweep.jsonl. Run one at a time: the machine has 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-4}
RECORD=${RECORD:-bench/results/quality-sweep.jsonl}
run() { label=$1; shift; .venv/bin/python bench/quality.py --minutes "$MINUTES" --record "$RECORD" --label "$label" --quiet --accuracy-positions 0 "$@"; }
case "${1:-screen}" in
  screen)
    run base
    run vocab8000 --vocab-size 8000
    run vocab2000 --vocab-size 2000
    run 1x1024 --num-layers 1 --hidden-dim 1024
    run embed512 --embed-dim 512
    run gru --cell gru
    run batch64 --batch-size 64
    run char-2x768 --tokenizer char --hidden-dim 768 --embed-dim 128 --bptt 150
    ;;
  *) echo "unknown sweep $1" >&2; exit 2 ;;
esac
