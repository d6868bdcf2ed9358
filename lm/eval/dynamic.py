"""Dynamic evaluation (Mikolov 2010; Krause, Kahembwe, Murray and Renals 2018).

A model evaluated on a long text can keep learning from it: score a segment,
then take one gradient step on that segment's loss before scoring the next.
Each segment is scored before the model learns from it, so every figure is
still a held-out prediction; what changes is that the model adapts to the
names, topics and style of the text it is reading, as a reader does.

Plain SGD on the segment's mean loss per unit, from the trained weights, on
a copy of the model (the one passed in never changes). The learning rate is
chosen on the validation split (`tune_dynamic`). Evaluation only: prediction
and attribution use the trained weights. It runs on the model's device.
"""

from __future__ import annotations

import copy
import math

import torch

from lm.eval.cache import StreamScores
from lm.model import RNNLanguageModel

__all__ = ["LEARNING_RATES", "score_stream_dynamic", "tune_dynamic"]

LEARNING_RATES = (0.3, 0.5, 1.0, 2.0)


def score_stream_dynamic(model: RNNLanguageModel, ids: list[int], first_input: int, lr: float, segment: int = 64) -> StreamScores:
    """Read `ids` as one stream after `first_input`, scoring each `segment` units, then learning from them."""
    if not lr > 0 or segment < 1:
        raise ValueError(f"dynamic evaluation needs a positive learning rate and segment, not {lr} and {segment}")
    learner = copy.deepcopy(model).eval()  # no dropout: adapt the model that is scored
    for layer in learner.layers:
        # A copy's RNN weights are separate tensors; on CUDA cuDNN wants them in one buffer (it warns and
        # compacts them at every call otherwise). Elsewhere this does nothing.
        if hasattr(layer, "flatten_parameters"):
            layer.flatten_parameters()
    parameters = [p for p in learner.parameters() if p.requires_grad]
    stream = torch.tensor([first_input, *ids], dtype=torch.long).to(learner.embedding.weight.device)
    state = learner.init_state(1)
    features, logprobs = [], []
    with torch.enable_grad():
        for start in range(0, len(stream) - 1, segment):
            inputs = stream[start : min(start + segment, len(stream) - 1)][None]  # (1, T)
            targets = stream[start + 1 : start + 1 + inputs.size(1)][None]
            x, final = learner.features(inputs, state)  # (1, T, H)
            scores = learner.target_logprobs(x, targets)[0]  # (T,): scored before the step below
            features.append(x[0].detach())
            logprobs.append(scores.detach().float().cpu().double())
            grads = torch.autograd.grad(-scores.mean(), parameters)
            with torch.no_grad():
                for parameter, grad in zip(parameters, grads):
                    parameter.sub_(lr * grad)
            state = final.detach()  # truncated backpropagation: one segment at a time
    result = StreamScores(torch.cat(features), stream[1:], torch.cat(logprobs))
    if not math.isfinite(result.model_nll):
        raise FloatingPointError(f"dynamic evaluation diverged at learning rate {lr:g}")
    return result


def tune_dynamic(model: RNNLanguageModel, ids: list[int], first_input: int, learning_rates=LEARNING_RATES
                 ) -> tuple[float, StreamScores, list[dict]]:
    """The learning rate with the lowest NLL on `ids` (the validation split), its scores, and every rate's NLL."""
    trials, best = [], None
    for lr in learning_rates:
        try:
            scores = score_stream_dynamic(model, ids, first_input, lr)
        except FloatingPointError:
            trials.append({"lr": lr, "nll": math.inf})
            continue
        trials.append({"lr": lr, "nll": scores.model_nll})
        if best is None or scores.model_nll < best[1].model_nll:
            best = (lr, scores)
    if best is None:
        raise FloatingPointError("dynamic evaluation diverged at every learning rate tried")
    return best[0], best[1], trials
