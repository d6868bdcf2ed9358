"""The CPU step engine: its single steps equal the portable model's, with and without the input table."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model
from lm.infer import engine as engine_module
from lm.infer.engine import StepEngine


@pytest.mark.parametrize("table", [True, False], ids=["input-table", "no-input-table"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_single_step_equals_the_fused_forward(cell, table, monkeypatch):
    if not table:  # a vocabulary too large for the first layer's input table: the product runs on embeddings
        monkeypatch.setattr(engine_module, "INPUT_TABLE_BYTES", 0)
    model = make_model(cell, tie_weights=True, embed_dim=8, hidden_dim=12).eval()
    engine = StepEngine(model)
    ids = torch.randint(0, 50, (4, 3))
    _, state = model(ids[:, :2])
    full_logits, full_state = model(ids)
    fast_logits, fast_state = engine.step(ids[:, 2], state)
    torch.testing.assert_close(engine.read_steps(ids, model.init_state(4)), full_state, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_logits, full_logits[:, 2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_state, full_state, rtol=1e-5, atol=1e-6)
    assert (engine.input_table() is not None) == table
    # A weight changed in place (as by an optimiser step) is seen: the packed copies are rebuilt.
    with torch.no_grad():
        model.layers[-1].weight_hh_l0.mul_(0.5)
        model.embedding.weight.add_(0.1)
        changed_logits, changed_state = model(ids)
        _, changed_start = model(ids[:, :2])
    fast_logits, fast_state = engine.step(ids[:, 2], changed_start)
    torch.testing.assert_close(fast_logits, changed_logits[:, 2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_state, changed_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("table", [True, False], ids=["input-table", "no-input-table"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_a_step_from_shared_parents_equals_one_from_each_childs_own_copy(cell, table, monkeypatch):
    if not table:
        monkeypatch.setattr(engine_module, "INPUT_TABLE_BYTES", 0)
    model = make_model(cell, tie_weights=True, embed_dim=8, hidden_dim=12, num_layers=2).eval()
    engine = StepEngine(model)
    parents_state = model(torch.randint(0, 50, (3, 4)))[1].detach()  # (L, 3, S): three distinct states
    parents = torch.tensor([2, 0, 2, 2, 1])  # five inputs continue them, three of them the same one
    ids = torch.tensor([7, 7, 9, 11, 3])
    expected_logits, expected_state = model.step(ids, parents_state[:, parents])
    logits, state = engine.step(ids, parents_state, parents=parents)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, expected_state, rtol=1e-5, atol=1e-6)
    # With autograd: the gradients reach the shared parents' rows.
    start = parents_state.clone().requires_grad_(True)
    logits, state = engine.differentiable_step(ids, start, parents=parents)
    (grad,) = torch.autograd.grad(logits.sum() + state.sum(), start)
    start = parents_state.clone().requires_grad_(True)
    reference_logits, reference_state = model.step(ids, start[:, parents])
    (reference,) = torch.autograd.grad(reference_logits.sum() + reference_state.sum(), start)
    torch.testing.assert_close(logits, reference_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-5)
    # The cells alone (no output layer): the same state, and the state's own gradient.
    start = parents_state.clone().requires_grad_(True)
    cells = engine.differentiable_cells(ids, start, parents=parents)
    torch.testing.assert_close(cells, reference_state, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(cells.sum(), start)
    start = parents_state.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(model.step(ids, start[:, parents])[1].sum(), start)
    torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn_relu", "lstm", "gru"])
def test_the_input_part_on_a_line_equals_the_product_of_each_point(cell):
    model = make_model(cell, tie_weights=True, embed_dim=8, hidden_dim=12).eval()
    engine = StepEngine(model)
    start, direction = torch.randn(6, 8), torch.randn(6, 8)
    alphas = torch.tensor([0.25, 0.75, 1.0])
    points = start[:, None] + alphas[None, :, None] * direction[:, None]  # (T, B, E)
    part = engine.input_part_on_line(start, direction, alphas)
    assert part.shape == (6, 3, 3 * 12 if cell == "gru" else 4 * 12 if cell == "lstm" else 12)
    torch.testing.assert_close(part, engine.input_part(0, None, points), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_a_differentiable_step_gives_autograds_state_gradients_and_none_to_the_weights(cell):
    model = make_model(cell, tie_weights=True, embed_dim=8, hidden_dim=12, num_layers=2).eval()
    engine = StepEngine(model)
    ids = torch.randint(0, 50, (3, 2))
    start = model(ids[:, :1])[1].detach()
    seed = torch.randn(3, 50)
    weights = [p for name, p in model.named_parameters() if not name.startswith("embedding")]  # the products'
    grads = []
    for step in (model.step, engine.differentiable_step):
        state = start.clone().requires_grad_(True)
        logits, after = step(ids[:, 1], state)
        logits2, _ = step(ids[:, 0], after)  # two steps: the state's path twice
        objective = (logits2 * seed).sum() + logits.pow(2).sum()
        grads.append(torch.autograd.grad(objective, [state, *weights], allow_unused=True))
    plain, constant = grads
    torch.testing.assert_close(constant[0], plain[0], rtol=1e-4, atol=1e-6)
    assert all(g is not None for g in plain[1:]) and all(g is None for g in constant[1:])  # no weight gradients


def test_an_adaptive_softmax_steps_through_the_models_own_output():
    model = make_model("lstm", vocab_size=60, adaptive_cutoffs=(10, 30), adaptive_div=2.0, tie_weights=False).eval()
    ids = torch.randint(0, 60, (2, 5))
    logprobs, _ = model(ids)
    step_logprobs, _ = StepEngine(model).step(ids[:, 0], model.init_state(2))
    torch.testing.assert_close(step_logprobs, logprobs[:, 0], rtol=1e-5, atol=1e-6)
