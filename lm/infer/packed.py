"""Linear layers with the weight prepacked for oneDNN, for the many small products of step-by-step inference.

A (16, 768) x (768, 2048) product through `torch.addmm` repacks the weight on
every call; prepacked once, the same product is ~30% faster here, and a
(5, 2048) x (2048, 512) one ~2x. Prediction steps a beam one unit at a time
and attribution steps back through thousands of units, so the packing pays
for itself at once. The packed op has no autograd of its own;
`constant_weight_linear` gives it one for the inputs alone (the weight a
constant), which is all attribution needs: gradients with respect to states.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["constant_weight_linear", "packed_linear", "product_into"]


def packed_linear(weight: Tensor, bias: Tensor | None = None, rows: int = 16) -> Callable[[Tensor], Tensor]:
    """x (N, in) -> x @ weight.T + bias for weight (out, in), prepacked for about `rows` rows when oneDNN can.

    Falls back to `torch.nn.functional.linear` when oneDNN or its packed
    linear op is missing, the weight is not float32, or the packed op
    disagrees with the plain one on a probe.
    """
    weight = weight.detach().contiguous()
    bias = None if bias is None else bias.detach().contiguous()
    ops = getattr(torch.ops, "mkldnn", None)
    if weight.dtype == torch.float32 and torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight"):
        try:
            packed = ops._reorder_linear_weight(weight, rows)
            probe = torch.linspace(-1, 1, 2 * weight.size(1), dtype=weight.dtype).view(2, -1)
            got = ops._linear_pointwise(probe, packed, bias, "none", [], "")
            if torch.allclose(got, torch.nn.functional.linear(probe, weight, bias), rtol=1e-4, atol=1e-5):
                return lambda x: ops._linear_pointwise(x, packed, bias, "none", [], "")
        except (RuntimeError, TypeError):
            pass
    return lambda x: torch.nn.functional.linear(x, weight, bias)


class _ConstantWeightLinear(torch.autograd.Function):
    """y = forward(x); dx = backward(dy). The weight is not an input: autograd gives it no gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, forward: Callable[[Tensor], Tensor], backward: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.backward_map = backward
        return forward(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.backward_map(grad.contiguous()), None, None


def constant_weight_linear(x: Tensor, forward: Callable[[Tensor], Tensor], backward: Callable[[Tensor], Tensor]) -> Tensor:
    """x @ W.T + b through `forward` = packed_linear(W, b), differentiable in x through `backward` =
    packed_linear(W.T): gradients with respect to inputs, none for W or b."""
    return _ConstantWeightLinear.apply(x, forward, backward)


def product_into(weight: Tensor) -> Callable[..., Tensor]:
    """g (N, out) -> g @ weight (N, in) for weight (out, in), written into `out` (N, in) when given: the transpose
    product of a backward pass, which steps back through thousands of units one product at a time.

    Assumes `out` is contiguous and shares no memory with g. Writing into
    memory made once matters more than packing here: each fresh (5, 512)
    result costs a few microseconds of allocation, and oneDNN's packed op
    cannot write into given memory; a plain product with `out=` is as fast
    as the packed one for these shapes (measured: about 70 us for
    (5, 2,048) x (2,048, 512) on 2 cores, either way).
    """
    weight = weight.detach().contiguous()
    return lambda g, out=None: torch.mm(g, weight, out=out)
