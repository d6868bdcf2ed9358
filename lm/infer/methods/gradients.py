"""The gradient every gradient method starts from: of log P(word | text), or of log P(word) - log P(foil) when the
attribution is contrastive (Yin and Neubig 2022), with respect to each input embedding of the text.

The foil is one more row through `lm/infer/word_gradients.py: prediction_gradients` (its spellings were scored
exactly as the predictions' were), and its gradient is subtracted from every word's: one backward pass for the k
words and the foil together.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from lm.infer.methods.base import MethodContext
from lm.infer.scoring import NEG
from lm.infer.word_gradients import prediction_gradients

__all__ = ["objective_gradients"]


def objective_gradients(ctx: MethodContext) -> tuple[torch.Tensor, torch.Tensor]:
    """d objective_j / d x_t for every prediction j and context unit t: (k, n, E), and the embeddings x: (n, E).

    The objective is log P(word_j | text), or log P(word_j | text) - log P(foil | text) with a foil. A foil of
    probability 0 has no gradient: its rows are then zero (the answer says the foil's log-probability is null)."""
    k = len(ctx.result.predictions)
    if ctx.foil is None:
        return prediction_gradients(ctx.predictor, ctx.trace, ctx.result, ctx.temperature)
    if ctx.foil.logprob == NEG:
        gradients, embeddings = prediction_gradients(ctx.predictor, ctx.trace, ctx.result, ctx.temperature)
        return torch.zeros_like(gradients), embeddings
    with_foil = replace(ctx.result, predictions=[*ctx.result.predictions, ctx.foil])
    gradients, embeddings = prediction_gradients(ctx.predictor, ctx.trace, with_foil, ctx.temperature)  # (k + 1, n, E)
    return gradients[:k] - gradients[k:], embeddings
