"""Integrated gradients (Sundararajan et al. 2017) over the input embeddings, with its completeness check.

A unit's attribution is (x_t - x'_t) . mean over the path of d objective / d x_t, the path running straight from
the baseline x' to the text's embeddings x; its influence is the attribution's size. The baseline is every context
unit's embedding replaced by zeros ("zero") or by the pad unit's embedding ("pad": Reach's vocabularies have no
padding unit, so the unknown unit stands in, the one unit that never spells text); the line break every read
starts from is kept. The mean is the midpoint rule over `steps` points (alpha = (s + 1/2) / steps): its error
falls as 1 / steps^2 for a smooth path.

Completeness: the attributions sum to objective(x) - objective(x') up to that integration error. Each prediction
reports both sides and the gap (`Completeness`): objective(x) is the exact served log-probability (less the
foil's when contrastive) and objective(x') is read at the baseline in the same batch as the path.

Cost: the `steps` scaled texts and the baseline are read as one batch (lm/infer/context_grad.py:
`trace_embeddings`), the words' paths are differentiated from every read's final state at once
(lm/infer/word_gradients.py: `word_seeds`), and one hand-written backward pass carries the steps x k gradients
side by side (`backward_reads`): one (steps k, G) x (G, H) product per unit of the text, not `steps` passes;
only the path's mean gradient is needed, so the gate gradients are summed over the steps before the last
product turns them into input gradients. The scaled texts lie on one line, so the backward's first-layer input
products are two, not `steps` (`InputLine`; lm/infer/engine.py: `input_part_on_line`).
With the continuous cache, each scaled read's mixture uses that read's own keys (its top-layer outputs).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from lm.infer.context_grad import InputLine, ReadsTrace
from lm.infer.methods.base import Completeness, Method, MethodContext, MethodFigures, MethodOutput
from lm.infer.scoring import NEG
from lm.infer.word_gradients import word_seeds

__all__ = ["baseline_embeddings", "integrated_gradients"]


def baseline_embeddings(ctx: MethodContext) -> torch.Tensor:
    """The baseline read (n + 1, E): the leading line break's embedding, then zeros or the pad unit's embedding."""
    x = ctx.trace.inputs[0]  # (n + 1, E)
    baseline = torch.zeros_like(x)
    if ctx.options.baseline == "pad":
        baseline[1:] = ctx.predictor.model.embedding.weight[ctx.predictor.tokenizer.unk_id].detach()
    baseline[0] = x[0]
    return baseline


def integrated_gradients(ctx: MethodContext, rows_result=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed attributions (k', n) of every context unit for each row of `rows_result` (default: ctx.result), and
    each row's objective at the baseline (k',) float32: the path's `steps` reads and the baseline's in one batch,
    one backward pass for all of them."""
    predictor, trace = ctx.predictor, ctx.trace
    result = rows_result if rows_result is not None else ctx.result
    steps = ctx.options.steps
    x = trace.inputs[0]  # (n + 1, E)
    baseline = baseline_embeddings(ctx)
    alphas = (torch.arange(steps, dtype=x.dtype) + 0.5) / steps  # the midpoint rule
    # The path's points (steps, n + 1, E), then the baseline, not differentiated: one tensor, which the trace keeps
    # (its first layer's inputs are a view of it), the points alone not kept beside it.
    reads = predictor.trace_embeddings(torch.cat([baseline + alphas[:, None, None] * (x - baseline), baseline[None]]))
    found = word_seeds(predictor, reads.final, result, ctx.temperature, reads.outputs[-1], trace.ids)
    on_path = ReadsTrace([layer[:, :steps] for layer in reads.inputs], [layer[:, :steps] for layer in reads.outputs],
                         reads.final[:, :steps], reads.logits[:steps], InputLine(baseline, x - baseline, alphas))
    on_top = None if found.on_top is None else found.on_top.rows(range(steps))
    summed = predictor.backward_reads(on_path, found.seeds[:, :steps], on_top, sum_reads=True)  # (1, k', n + 1, E)
    mean = summed[0] / steps  # (k', n + 1, E)
    attributions = (mean * (x - baseline)).sum(-1)[:, 1:]  # (k', n)
    return attributions, found.values[steps]


def compute(ctx: MethodContext) -> MethodOutput:
    """|attribution_t| for every prediction and unit, with each prediction's completeness check."""
    predictions = ctx.result.predictions
    k, n = len(predictions), len(ctx.trace.ids) - 1
    if ctx.foil is not None and ctx.foil.logprob == NEG:  # the foil has probability 0: no contrast to explain
        return MethodOutput(np.zeros((k, n)), [MethodFigures() for _ in predictions])
    if ctx.foil is None:
        signed, at_baseline = integrated_gradients(ctx)
        inputs = [prediction.logprob for prediction in predictions]
    else:  # linear in the objective: the foil is one more row, subtracted from every word's
        rows, values = integrated_gradients(ctx, replace(ctx.result, predictions=[*predictions, ctx.foil]))
        signed, at_baseline = rows[:k] - rows[k:], values[:k] - values[k:]
        inputs = [prediction.logprob - ctx.foil.logprob for prediction in predictions]
    signed = signed.double()
    figures = [MethodFigures(completeness=Completeness(float(signed[row].sum()), float(inputs[row]),
                                                      float(at_baseline[row])))
               for row in range(k)]
    return MethodOutput(signed.abs().numpy(), figures)


METHOD = Method("integrated_gradients", "the gradient averaged along a straight path from a baseline (zeros or the "
                "pad unit's embedding) to the text, times the input's difference from it (Sundararajan et al. 2017)",
                compute, order=30)
