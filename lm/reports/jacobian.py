"""How fast a recurrence forgets: the norm of the Jacobian of the state after a text by distance (the BPTT lab's
vanishing-gradient figure, beside gradient reach).

The gradient of a prediction with respect to an input d units back passes
through the product of d step Jacobians d h_t / d h_(t-1); when their norms
stay below one it vanishes geometrically with d (Bengio et al. 1994; Pascanu
et al. 2013). `hidden_jacobian_norms` measures ||d h_T / d h_(T-d)||_F on a
real text, for every d at once.
"""

from __future__ import annotations

import math

import torch

from lm.infer.predictor import Predictor
from lm.infer.query import make_query

__all__ = ["hidden_jacobian_norms"]


def hidden_jacobian_norms(predictor: Predictor, text: str, probes: int = 8, seed: int = 0, max_units: int | None = None) -> dict:
    """How fast the recurrence forgets: ||d h_T / d h_(T-d)||_F for d = 1..T, estimated with random probes.

    h is the whole carried state (every layer; h and c for an LSTM). For a
    random vector v, one backward pass of v . h_T gives v^T J_d for every d
    at once, and E ||v^T J_d||^2 = ||J_d||_F^2; `probes` vectors run side by
    side as a batch. The recurrence is stepped one unit at a time
    (`Predictor.differentiable_cells`: no output layer) so that each intermediate state can be
    differentiated.
    """
    tokenizer = predictor.tokenizer
    ids = [tokenizer.newline_id, *tokenizer.encode(make_query(text, tokenizer).context)]
    if max_units is not None:
        ids = ids[-max_units:]
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        state = predictor.zero_state(probes)  # (L, probes, S)
        taps = []
        for unit in ids:
            tap = torch.zeros_like(state, requires_grad=True)  # d(v . h_T)/d tap_t = v^T d h_T / d h_t
            state = state + tap
            taps.append(tap)
            state = predictor.differentiable_cells(torch.full((probes,), unit, dtype=torch.long), state)
        v = torch.randn(state.shape, generator=generator, dtype=state.dtype)
        grads = torch.autograd.grad((state * v).sum(), taps, allow_unused=True)
    norms = []
    for grad in reversed(grads):  # the last tap is d = 1 (the state before the last unit)
        if grad is None:
            norms.append(0.0)
            continue
        per_probe = grad.pow(2).sum(dim=(0, 2))  # (probes,)
        norms.append(math.sqrt(float(per_probe.mean())))
    return {"distance": list(range(1, len(norms) + 1)), "jacobian_norm": norms, "probes": probes,
            "state_dim": int(state.shape[0] * state.shape[2])}
