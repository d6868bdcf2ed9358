"""Training: truncated BPTT with clipping (`loop`), one run from settings to checkpoints (`run`), several processes (`distributed`).

Uses `lm/eval` for validation figures; never imports `lm/infer` (see docs/ARCHITECTURE.md).
"""
