"""Integrated gradients: completeness against the exact log-probabilities, the batched backward against autograd,
a foil and the continuous cache."""

import pytest
import torch

from conftest import make_model
from lm.cells.base import BlockRows
from lm.checkpoint import load_checkpoint
from lm.config import TextCacheConfig
from lm.infer.attribution import attribute
from lm.infer.context_grad import backward_reads, trace_embeddings
from lm.infer.engine import StepEngine
from lm.infer.methods import MethodOptions
from lm.infer.predictor import Predictor

TEXT = "The album was released in the United States in 1998, and it was "


@pytest.fixture(scope="module")
def char_predictor(tiny_run):
    checkpoint = load_checkpoint(tiny_run.out)
    return Predictor(checkpoint.model, checkpoint.tokenizer)


def _gaps(predictor, text, steps, baseline, **more):
    result = attribute(predictor, text, k=3, method="integrated_gradients",
                       options=MethodOptions(steps=steps, baseline=baseline), **more)
    return result, [item.figures.completeness for item in result.predictions]


def test_attributions_sum_to_the_log_probability_change_closer_with_more_steps(char_predictor):
    _, coarse = _gaps(char_predictor, TEXT, 2, "zero")
    result, fine = _gaps(char_predictor, TEXT, 48, "zero")
    for item, rough, check in zip(result.predictions, coarse, fine):
        # The input side is the exact served figure; the baseline side is read at the baseline, not assumed.
        assert check.input_value == pytest.approx(item.prediction.logprob)
        assert check.baseline_value == rough.baseline_value
        change = check.input_value - check.baseline_value
        assert abs(change) > 0.1  # a baseline that changes the prediction, or the check says nothing
        # The midpoint rule's error falls as 1 / steps^2: within 1% of the change at 48 steps.
        assert abs(check.gap) <= 0.01 * abs(change) + 1e-4
        assert check.gap == pytest.approx(check.attribution_sum - change)
        # Influence is the size of each unit's signed attribution.
        assert item.influence.min() >= 0 and item.influence.sum() >= abs(check.attribution_sum) - 1e-9
    assert sum(abs(c.gap) for c in fine) < sum(abs(c.gap) for c in coarse)


def _direct_logprob(predictor, embeds, word):
    """log P(word + boundary | context) for a char model, written directly: embeds (1, n + 1, E) of the context."""
    model, tokenizer = predictor.model, predictor.tokenizer
    units = tokenizer.encode(word)
    tail = torch.nn.functional.embedding(torch.tensor([units]), model.embedding.weight)  # (1, m, E)
    logits, _ = model(embeds=torch.cat([embeds, tail], dim=1))
    logprobs = torch.log_softmax(logits[0].double(), -1)  # (n + m + 1, V)
    n = embeds.size(1)
    ends = torch.tensor([i for i, e in enumerate(predictor.units.ends) if e])
    return sum(logprobs[n - 1 + i, u] for i, u in enumerate(units)) + torch.logsumexp(logprobs[n - 1 + len(units), ends], 0)


def test_the_pad_baseline_equals_integrated_gradients_by_autograd(char_predictor):
    """Against the plain recipe: the pad (unknown) unit's embedding at every context position, the same midpoints,
    autograd at each. (On this tiny model the pad path crosses a steep change of state, so the sum approaches the
    change slowly with steps; what must hold at any step count is equality with the recipe.)"""
    steps, text = 6, TEXT[:30]
    result, (check, *_) = _gaps(char_predictor, text, steps, "pad")
    model, tokenizer = char_predictor.model, char_predictor.tokenizer
    word = result.predictions[0].prediction.word
    x = model.embedding(torch.tensor([[tokenizer.newline_id, *tokenizer.encode(text)]])).detach()  # (1, n + 1, E)
    baseline = x.clone()
    baseline[0, 1:] = model.embedding.weight[tokenizer.unk_id].detach()
    mean = torch.zeros_like(x)
    for step in range(steps):
        point = (baseline + (step + 0.5) / steps * (x - baseline)).requires_grad_(True)
        mean += torch.autograd.grad(_direct_logprob(char_predictor, point, word), point)[0] / steps
    expected = (mean * (x - baseline)).sum(-1)[0, 1:].double()
    torch.testing.assert_close(torch.from_numpy(result.predictions[0].influence), expected.abs(), rtol=1e-3,
                               atol=1e-4 * expected.abs().max().item())  # float32 sums of steep gradients
    assert check.attribution_sum == pytest.approx(expected.sum().item(), rel=1e-3, abs=1e-5)
    assert check.baseline_value == pytest.approx(_direct_logprob(char_predictor, baseline, word).item(), abs=1e-4)


def test_a_foil_explains_the_difference(char_predictor):
    plain, alone = _gaps(char_predictor, TEXT, 24, "zero")
    foil = plain.predictions[-1].prediction
    contrasted, checks = _gaps(char_predictor, TEXT, 24, "zero", foil=foil.word)
    for item, check, word_alone in zip(contrasted.predictions, checks, alone):
        assert check.input_value == pytest.approx(item.prediction.logprob - foil.logprob)
        change = check.input_value - check.baseline_value
        assert abs(check.gap) <= 0.01 * abs(change) + 1e-3
    # The foil against itself: nothing to explain.
    assert contrasted.predictions[-1].influence.max() == pytest.approx(0, abs=1e-6)


def test_completeness_holds_for_the_mixture_with_the_continuous_cache(tiny_run):
    checkpoint = load_checkpoint(tiny_run.out)
    settings = TextCacheConfig(window=60, theta=2.0, weight=0.4, size_weights=((1, 0.4),))
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=settings)
    text = "The cat sat on the mat. The dog saw the cat. A bird sang to the cat and the dog. The "
    result, checks = _gaps(predictor, text, 32, "zero", text_cache=True)
    assert result.result.text_cache
    for item, check in zip(result.predictions, checks):
        assert check.input_value == pytest.approx(item.prediction.logprob)
        assert abs(check.gap) <= 0.01 * abs(check.input_value - check.baseline_value) + 1e-3


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_the_batched_backward_equals_autograd_for_every_read(cell):
    model = make_model(cell, vocab_size=30, seed=5, num_layers=2).eval()
    generator = torch.Generator().manual_seed(2)
    embeds = torch.randn(3, 70, model.config.embed_dim, generator=generator)  # (B, T, E): more than one 64-step block
    seeds = torch.randn(2, 3, 4, model.config.state_dim, generator=generator)  # (L, B, k, S)
    on_top = torch.randn(70, 3, 4, model.config.hidden_dim, generator=generator)  # (T, B, k, H)
    trace = trace_embeddings(model, embeds)
    got = backward_reads(StepEngine(model), trace, seeds, on_top)  # (B, k, T, E)
    for read in range(3):
        copies = embeds[read].repeat(4, 1, 1).requires_grad_(True)  # (k, T, E): read `read` once per seed
        with torch.enable_grad():
            x, finals = copies, []
            state = model.init_state(4)
            for index in range(2):
                x, final, _ = model.run_layer(index, x, state[index])
                finals.append(final)
            objective = (torch.stack(finals) * seeds[:, read]).sum() + (x * on_top[:, read].transpose(0, 1)).sum()
            (expected,) = torch.autograd.grad(objective, copies)
        torch.testing.assert_close(got[read], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(trace.final[:, 1], model(embeds=embeds[1:2])[1][:, 0])
    # Summed over the reads before the input product (what integrated gradients asks for): the same sum.
    summed = backward_reads(StepEngine(model), trace, seeds, on_top, sum_reads=True)  # (1, k, T, E)
    torch.testing.assert_close(summed[0], got.sum(0), rtol=1e-4, atol=1e-6)
    # The injected gradients made a block at a time (9 steps: the last block short), into one reused buffer.
    made, buffer = [], torch.empty(9, *on_top.shape[1:])
    lazy = BlockRows(70, 9, lambda start, stop: (made.append(start), buffer[: stop - start].copy_(on_top[start:stop]))[1])
    torch.testing.assert_close(backward_reads(StepEngine(model), trace, seeds, lazy), got)
    assert made == [63, 54, 45, 36, 27, 18, 9, 0]  # each block once, walking back (only the top layer's are injected)


def test_block_rows_remake_a_block_only_when_asked_for_a_step_outside_it():
    rows = torch.arange(10.0).view(10, 1)
    made = []
    lazy = BlockRows(10, 4, lambda start, stop: (made.append(start), rows[start:stop])[1])
    assert len(lazy) == 10
    assert [float(lazy[t]) for t in (9, 8, 7, 3, 0, 5, 9)] == [9, 8, 7, 3, 0, 5, 9]
    assert made == [8, 4, 0, 4, 8]
