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
    # Round 1 (5 minutes each). Probes before it (1-2 minutes, docs/BENCHMARKS.md) showed AdamW at
    # lr 1e-2 learning far faster than 3e-3 and one 512-wide layer beating two per minute.
    run u4000-1x512 --num-layers 1 --lr 1e-2
    run u4000-2x512 --num-layers 2 --lr 1e-2
    run u8000-adaptive --num-layers 1 --lr 1e-2 --vocab-size 8000 --no-tie-weights --adaptive-cutoffs 2000
    run u4000-1x512-lowdrop --num-layers 1 --lr 1e-2 --dropout 0.1 --input-dropout 0.05
    run u4000-gru --num-layers 1 --lr 1e-2 --cell gru
    run u2000-1x768 --num-layers 1 --lr 1e-2 --vocab-size 2000 --hidden-dim 768
    run char-1x768 --tokenizer char --num-layers 1 --hidden-dim 768 --embed-dim 128 --bptt 128 --lr 3e-3
    ;;
  round2)
    # Round 2 (5 minutes each) around the round-1 winner, u4000-1x512.
    run u4000-1x512-lr6e-3 --num-layers 1 --lr 6e-3
    run u4000-1x512-lr1.5e-2 --num-layers 1 --lr 1.5e-2
    run u4000-1x512-bptt128-b16 --num-layers 1 --lr 1e-2 --bptt 128 --batch-size 16
    ;;
  *) echo "unknown sweep $1" >&2; exit 2 ;;
esac
