"""A continuous cache for evaluation (Grave, Joulin and Usunier 2017).

Text repeats itself: an article names its subject, its places and its people
again and again, and a rare word seen once in a document is likely to come
back. A recurrent model's weights cannot learn those repeats from training
text it has never seen; a cache can pick them up from the text just read. At
each position t the top-layer output h_t is compared with the outputs h_i of
the previous `window` positions, and each earlier position votes for the unit
that followed it:

    p_cache(w | t) = sum over i < t with x_(i+1) = w of softmax_i(theta * h_t . h_i)
    p(w | t)       = (1 - weight) * p_model(w | t) + weight * p_cache(w | t)

Nothing is trained: `window`, `theta` and `weight` are chosen on the
validation split (`tune_cache`) and then applied to another split. Only
earlier positions are used, so the figures are as held-out as the model's
own. Its settings (`CacheConfig`, in lm/config.py) are tuned here, stored
with a checkpoint at the end of training, and applied to a request's own
text by the predictor (lm/infer/textcache.py).

Device: a split is read on the model's device, the features the cache
compares stay there, and the per-position log-probabilities come back to
the CPU in float64 (sums over a whole split; MPS has no float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lm.config import CacheConfig
from lm.model import RNNLanguageModel

__all__ = ["CacheConfig", "StreamScores", "cache_logprobs", "mixed_nll", "score_stream", "tune_cache"]

WINDOWS = (1000, 2000, 4000)
THETAS = (1.0, 2.0, 4.0, 8.0)
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@dataclass
class StreamScores:
    """One read of a split: each position's top-layer output, target and log P_model(target)."""

    features: Tensor  # (N, H) on the model's device; (0, H) when not kept
    targets: Tensor  # (N,) on the features' device
    model_logprobs: Tensor  # (N,) float64, on the CPU

    @property
    def model_nll(self) -> float:
        return -float(self.model_logprobs.sum())


@torch.inference_mode()
def score_stream(model: RNNLanguageModel, ids: list[int], first_input: int, chunk: int = 2048,
                 keep_features: bool = True) -> StreamScores:
    """Read `ids` as one stream after `first_input` (see lm/eval/figures.py), keeping each position's log P(target)
    and, with `keep_features`, the top-layer outputs the cache needs."""
    was_training = model.training
    model.eval()
    try:
        device = model.embedding.weight.device
        stream = torch.tensor([first_input, *ids], dtype=torch.long).to(device)
        state = model.init_state(1)
        features, logprobs = [], []
        for start in range(0, len(stream) - 1, chunk):
            inputs = stream[start : min(start + chunk, len(stream) - 1)][None]  # (1, T)
            targets = stream[start + 1 : start + 1 + inputs.size(1)][None]
            x, state = model.features(inputs, state)  # (1, T, H)
            if keep_features:
                features.append(x[0])
            logprobs.append(model.target_logprobs(x, targets)[0].float().cpu().double())
        kept = torch.cat(features) if features else torch.empty(0, model.config.hidden_dim, device=device)
        return StreamScores(kept, stream[1:], torch.cat(logprobs))
    finally:
        model.train(was_training)


@torch.inference_mode()
def cache_logprobs(scores: StreamScores, window: int, theta: float, block: int = 1024) -> Tensor:
    """log p_cache(target) at every position (N,), float64 on the CPU; -inf where no earlier position has the target.

    Computed on the features' device (the CPU for MPS, which has no float64).
    """
    features, targets = scores.features, scores.targets
    if features.device.type == "mps":
        features, targets = features.cpu(), targets.cpu()
    device = features.device
    count = len(targets)
    result = torch.empty(count, dtype=torch.float64)
    for start in range(0, count, block):
        end = min(count, start + block)
        low = max(0, start - window)
        similarity = theta * (features[start:end] @ features[low:end].T)  # (b, w): query t against key i
        here = torch.arange(start, end, device=device)[:, None]
        there = torch.arange(low, end, device=device)[None, :]
        visible = (there < here) & (there >= here - window)  # only earlier positions, at most `window` back
        similarity = similarity.double().masked_fill(~visible, -math.inf)
        same = targets[low:end][None, :] == targets[start:end][:, None]  # key i voted for this target
        numerator = torch.logsumexp(similarity.masked_fill(~same, -math.inf), dim=-1)
        denominator = torch.logsumexp(similarity, dim=-1)
        # The first position sees nothing: -inf - -inf is nan there, and the cache has no vote.
        result[start:end] = torch.nan_to_num(numerator - denominator, nan=-math.inf, neginf=-math.inf).cpu()
    return result


def mixed_nll(scores: StreamScores, cached: Tensor, weight: float) -> float:
    """Total NLL (nats) of the mixture (1 - weight) p_model + weight p_cache."""
    if weight == 0:
        return scores.model_nll
    mixed = torch.logaddexp(scores.model_logprobs + math.log(1 - weight), cached + math.log(weight))
    return -float(mixed.sum())


def tune_cache(scores: StreamScores, windows=WINDOWS, thetas=THETAS, weights=WEIGHTS) -> tuple[CacheConfig, float, list[dict]]:
    """The grid point with the lowest NLL on `scores` (read from the validation split), that NLL, and every point's."""
    trials = []
    for window in windows:
        for theta in thetas:
            cached = cache_logprobs(scores, window, theta)
            for weight in weights:
                trials.append({"window": window, "theta": theta, "weight": weight, "nll": mixed_nll(scores, cached, weight)})
    best = min(trials, key=lambda trial: trial["nll"])
    return CacheConfig(best["window"], best["theta"], best["weight"]), best["nll"], trials
