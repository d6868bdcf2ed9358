"""Saliency (Simonyan et al. 2014): a unit's influence is the L2 norm of the objective's gradient on its embedding."""

from __future__ import annotations

from lm.infer.methods.base import Method, MethodContext, MethodOutput
from lm.infer.methods.gradients import objective_gradients


def compute(ctx: MethodContext) -> MethodOutput:
    """|| d objective / d x_t ||_2 for every prediction and unit."""
    gradients, _ = objective_gradients(ctx)  # (k, n, E)
    return MethodOutput(gradients.norm(dim=-1).double().numpy())


METHOD = Method("saliency", "the gradient's L2 norm on each unit's embedding (Simonyan et al. 2014)", compute, order=10)
