"""The text cache in evaluation: a continuous cache over the text read (Grave, Joulin and Usunier 2017).

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
validation split (`tune_text_cache_on_stream`) and then applied to another split. Only
earlier positions are used, so the figures are as held-out as the model's
own. Its settings (`TextCacheConfig`, in lm/config.py) are tuned here, stored
with a checkpoint at the end of training, and applied to a request's own
text by the predictor (lm/infer/textcache.py).

A split read as one stream keeps the memory full; a request is a prompt of
a few words to a few thousand, read from a zero state, and the memory holds
only that prompt. Over a few keys the cache's softmax still sums to one, so
a weight tuned on the full memory copies a short prompt back. The weight is
therefore tuned again by memory size (`tune_size_weights`): the valid split
cut into prompts of 4 to 4,096 units, each read from a zero state as a
request is, the log-likelihood of every position collected by how many keys
its memory held, and a weight chosen for each range of sizes
(`TextCacheConfig.size_weights`): the smaller of the best over all units (whole
words' log loss) and the best over the units that begin a word (which decide
the next word's rank). On subword models the second is about half the first
(a piece inside a word the text has shown is where the cache is surest); on
character models the first is the smaller (a small weight costs every
letter of a word). docs/BENCHMARKS.md, "Served quality by prompt length",
has what the served predictions gain and lose.

Device: a split is read on the model's device, the features the cache
compares stay there, and the per-position log-probabilities come back to
the CPU in float64 (sums over a whole split; MPS has no float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from lm.config import TextCacheConfig
from lm.model import RNNLanguageModel
from lm.tokenizers import Tokenizer, is_word_char

__all__ = ["TextCacheConfig", "PromptScores", "StreamScores", "mixed_nll", "score_prompts", "score_stream", "stream_weights",
           "text_cache_logprobs", "tune_size_weights", "tune_text_cache_on_stream"]

WINDOWS = (1000, 2000, 4000)
THETAS = (1.0, 2.0, 4.0, 8.0)
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
# Memory sizes (keys, i.e. units read) whose weight is tuned apart: [1, 4), [4, 16), ... [1024, 4096). The prompts
# that fill a range are cut to its upper end; its anchor is the range's geometric middle.
SIZE_EDGES = (1, 4, 16, 64, 256, 1024, 4096)
SIZE_WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)


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
def text_cache_logprobs(scores: StreamScores, window: int, theta: float, block: int = 1024) -> Tensor:
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


def stream_weights(settings: TextCacheConfig, count: int) -> Tensor:
    """The mixture weight (float64, (count,)) at each position of a stream: position t's memory holds min(t, window) keys."""
    sizes = torch.arange(count).clamp(max=settings.window).numpy()
    return torch.from_numpy(settings.weights(sizes))


def mixed_nll(scores: StreamScores, cached: Tensor, weight: float | Tensor) -> float:
    """Total NLL (nats) of the mixture (1 - weight) p_model + weight p_cache; `weight` one number or one per position."""
    return -float(_mixed(scores.model_logprobs, cached, weight).sum())


def _mixed(model: Tensor, cached: Tensor, weight: float | Tensor) -> Tensor:
    """log((1 - weight) p_model + weight p_cache) per position, from the two log-probabilities (float64)."""
    weight = torch.as_tensor(weight, dtype=torch.float64)
    # The model's share where the weight is 0 (log 0 + -inf would be nan): the model alone.
    from_cache = torch.where(weight > 0, cached + torch.log(weight), torch.full_like(cached, -math.inf))
    return torch.logaddexp(model + torch.log1p(-weight), from_cache)


def tune_text_cache_on_stream(scores: StreamScores, windows=WINDOWS, thetas=THETAS, weights=WEIGHTS) -> tuple[TextCacheConfig, float, list[dict]]:
    """The grid point with the lowest NLL on `scores` (read from the validation split), that NLL, and every point's."""
    trials = []
    for window in windows:
        for theta in thetas:
            cached = text_cache_logprobs(scores, window, theta)
            for weight in weights:
                trials.append({"window": window, "theta": theta, "weight": weight, "nll": mixed_nll(scores, cached, weight)})
    best = min(trials, key=lambda trial: trial["nll"])
    return TextCacheConfig(best["window"], best["theta"], best["weight"]), best["nll"], trials


@dataclass
class PromptScores:
    """Positions of prompts read from a zero state: how many keys the cache's memory held there, log P_model(target)
    and log p_cache(target) (-inf where no key voted for it), the target and the unit before it."""

    sizes: Tensor  # (N,) long
    model_logprobs: Tensor  # (N,) float64
    text_cache_logprobs: Tensor  # (N,) float64
    targets: Tensor  # (N,) long
    previous: Tensor  # (N,) long: the unit read before the target (the first input at a prompt's start)


def word_starts(tokenizer: Tokenizer, previous: Tensor, targets: Tensor) -> Tensor:
    """(N,) bool: whether each target unit begins a word (its first word character follows whitespace, inside the
    unit as SentencePiece's leading space or at the end of the unit before it)."""
    texts = [tokenizer.unit_text(unit) or "" for unit in range(tokenizer.vocab_size)]
    spaced_word = torch.tensor([bool(t) and t[0].isspace() and is_word_char(t.lstrip()[:1] or " ") for t in texts])
    word_first = torch.tensor([bool(t) and is_word_char(t[0]) for t in texts])
    ends_in_space = torch.tensor([bool(t) and t[-1].isspace() for t in texts])
    return spaced_word[targets] | (word_first[targets] & ends_in_space[previous])


@torch.inference_mode()
def score_prompts(model: RNNLanguageModel, ids: list[int], first_input: int, length: int, window: int, theta: float,
                  prompts: int | None = None, budget: int = 2**24) -> PromptScores:
    """Prompts of `length` units cut from `ids` (all of them side by side, or `prompts` of them spread evenly over
    `ids`), each read from a zero state after `first_input` (as a request is), and every position's model and cache
    log-probabilities, the cache's memory holding that prompt's earlier keys.

    Prompts are read side by side; their cache scores `budget` similarities at a time ((B, T, T) float64)."""
    was_training = model.training
    model.eval()
    try:
        device = model.embedding.weight.device
        fits = len(ids) // length
        count = fits if prompts is None else min(prompts, fits)
        if count == 0:
            empty, none = torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.long)
            return PromptScores(none, empty, empty, none, none)
        starts = torch.linspace(0, len(ids) - length, count).long() if count < fits else torch.arange(count) * length
        whole = torch.tensor(ids, dtype=torch.long)
        targets = whole[starts[:, None] + torch.arange(length)[None, :]]  # (B, T)
        inputs = torch.cat([torch.full((count, 1), first_input, dtype=torch.long), targets[:, :-1]], dim=1)
        batch = max(1, min(count, budget // (length * length)))
        place = torch.arange(length, device=device)
        visible = (place[None, :] < place[:, None]) & (place[None, :] >= place[:, None] - window)  # (T, T): query t, key i
        model_parts, text_cache_parts = [], []
        for start in range(0, count, batch):
            x = inputs[start : start + batch].to(device)
            y = targets[start : start + batch].to(device)
            features, _ = model.features(x, model.init_state(x.size(0)))  # (b, T, H)
            model_parts.append(model.target_logprobs(features, y).float().cpu().double().reshape(-1))
            if features.device.type == "mps":
                features, y = features.cpu(), y.cpu()
                visible = visible.cpu()
            similarity = (theta * (features @ features.transpose(1, 2))).double().masked_fill(~visible, -math.inf)  # (b, T, T)
            same = y[:, None, :] == y[:, :, None]  # key i was followed by query t's target
            numerator = torch.logsumexp(similarity.masked_fill(~same, -math.inf), dim=-1)
            denominator = torch.logsumexp(similarity, dim=-1)
            text_cache_parts.append(torch.nan_to_num(numerator - denominator, nan=-math.inf, neginf=-math.inf).cpu().reshape(-1))
        sizes = torch.arange(length).clamp(max=window).repeat(count)
        return PromptScores(sizes, torch.cat(model_parts), torch.cat(text_cache_parts), targets.reshape(-1), inputs.reshape(-1))
    finally:
        model.train(was_training)


def tune_size_weights(model: RNNLanguageModel, ids: list[int], tokenizer: Tokenizer, settings: TextCacheConfig,
                      edges: tuple[int, ...] = SIZE_EDGES, weights: tuple[float, ...] = SIZE_WEIGHTS,
                      positions: int = 65536) -> tuple[TextCacheConfig, list[dict]]:
    """`settings` with the weight tuned by memory size on `ids` (the valid split): for each range [edges[i],
    edges[i + 1]) of key counts, prompts of `edges[i + 1]` units (`score_prompts`, enough of them, spread over
    `ids`, for about `positions` positions in the range) give the positions whose memory held that many keys. The
    range's weight is the smaller of two optima on the grid `weights`: the lowest NLL over all those positions
    (the log loss of whole words, every unit counted) and over those where a word begins (`word_starts`: the unit
    that decides which word comes next). It is anchored at the range's geometric middle. Ranges past the window,
    or with no prompt that long in `ids`, are left out. Returns the settings and each range's trials."""
    anchors, report = [], []
    for low, high in zip(edges, edges[1:]):
        if low > settings.window:
            break
        prompts = math.ceil(positions / (min(high, settings.window + 1) - low))
        scores = score_prompts(model, ids, tokenizer.newline_id, high, settings.window, settings.theta, prompts)
        chosen = (scores.sizes >= low) & (scores.sizes < high)
        if not chosen.any():
            break
        starts = chosen & word_starts(tokenizer, scores.previous, scores.targets)
        trials = []
        for weight in weights:
            units = -float(_mixed(scores.model_logprobs[chosen], scores.text_cache_logprobs[chosen], weight).sum())
            firsts = -float(_mixed(scores.model_logprobs[starts], scores.text_cache_logprobs[starts], weight).sum())
            trials.append({"weight": weight, "nll": units / int(chosen.sum()), "word_start_nll": firsts / max(int(starts.sum()), 1)})
        over_units = min(trials, key=lambda trial: trial["nll"])
        at_starts = min(trials, key=lambda trial: trial["word_start_nll"])
        best = min(over_units, at_starts, key=lambda trial: trial["weight"])
        anchor = max(1, round(math.sqrt(low * min(high, settings.window + 1))))
        anchors.append((anchor, best["weight"]))
        report.append({"keys": [low, high], "anchor": anchor, "positions": int(chosen.sum()), "word_starts": int(starts.sum()),
                       "weight": best["weight"], "weight_over_units": over_units["weight"],
                       "weight_at_word_starts": at_starts["weight"], "nats_per_unit": best["nll"],
                       "model_alone": trials[0]["nll"] if weights[0] == 0 else None, "trials": trials})
    return replace(settings, size_weights=tuple(anchors)), report
