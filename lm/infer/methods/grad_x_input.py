"""Gradient x input (Shrikumar et al. 2016): a unit's influence is |gradient . embedding|."""

from __future__ import annotations

from lm.infer.methods.base import Method, MethodContext, MethodOutput
from lm.infer.methods.gradients import objective_gradients


def compute(ctx: MethodContext) -> MethodOutput:
    """| (d objective / d x_t) . x_t | for every prediction and unit."""
    gradients, embeddings = objective_gradients(ctx)  # (k, n, E), (n, E)
    return MethodOutput((gradients * embeddings).sum(-1).abs().double().numpy())


METHOD = Method("grad_x_input", "|gradient . embedding| on each unit (Shrikumar et al. 2016)", compute, order=20)
