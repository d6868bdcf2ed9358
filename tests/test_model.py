"""The network: shapes, embeddings path, state layout, tying, dropout switches."""

import pytest
import torch

from conftest import make_model
from lm.config import ModelConfig
from lm.model import RNNLanguageModel, count_parameters


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_forward_shapes_and_state(cell):
    model = make_model(cell)
    ids = torch.randint(0, 50, (3, 7))
    logits, state = model(ids)
    width = 24 if cell == "lstm" else 12
    assert logits.shape == (3, 7, 50) and state.shape == (2, 3, width)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_state_carries_the_sequence(cell):
    """Running a sequence in two halves with the carried state equals one run."""
    model = make_model(cell).eval()
    ids = torch.randint(0, 50, (2, 10))
    whole, final = model(ids)
    first, middle = model(ids[:, :4])
    second, end = model(ids[:, 4:], middle)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    torch.testing.assert_close(end, final)


def test_embeddings_path_equals_ids_path(tiny_model):
    tiny_model.eval()
    ids = torch.randint(0, 50, (2, 5))
    by_ids, _ = tiny_model(ids)
    by_embeds, _ = tiny_model(embeds=tiny_model.embed(ids))
    torch.testing.assert_close(by_ids, by_embeds)


def test_tied_weights_share_one_matrix_and_project_when_sizes_differ():
    model = RNNLanguageModel(ModelConfig(cell="gru", vocab_size=30, embed_dim=8, hidden_dim=16, num_layers=1, tie_weights=True))
    assert model.decoder.weight is model.embedding.weight
    assert model.projection is not None
    untied = RNNLanguageModel(ModelConfig(cell="gru", vocab_size=30, embed_dim=8, hidden_dim=16, num_layers=1, tie_weights=False))
    assert count_parameters(untied) > count_parameters(model)


def test_dropout_only_in_training_mode():
    model = make_model("lstm", dropout=0.5, input_dropout=0.3, embed_dropout=0.2, weight_dropout=0.4)
    ids = torch.randint(0, 50, (2, 6))
    model.eval()
    a, _ = model(ids)
    b, _ = model(ids)
    torch.testing.assert_close(a, b)
    model.train()
    c, _ = model(ids)
    assert not torch.allclose(a, c)


def test_weight_dropout_reaches_the_recurrent_weights():
    model = make_model("lstm", weight_dropout=0.5).train()
    logits, _ = model(torch.randint(0, 50, (2, 6)))
    logits.sum().backward()
    assert model.layers[0].weight_hh_l0.grad is not None
    assert (model.layers[0].weight_hh_l0.grad == 0).any()  # dropped connections get no gradient


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="cell"):
        ModelConfig(cell="transformer")
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        RNNLanguageModel(ModelConfig())


@pytest.mark.parametrize("table", [True, False], ids=["input-table", "no-input-table"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_single_step_equals_the_fused_forward(cell, table, monkeypatch):
    import lm.model

    if not table:  # a vocabulary too large for the first layer's input table: the product runs on embeddings
        monkeypatch.setattr(lm.model, "INPUT_TABLE_BYTES", 0)
    model = make_model(cell, tie_weights=True, embed_dim=8, hidden_dim=12).eval()
    ids = torch.randint(0, 50, (4, 3))
    logits, state = model(ids[:, :2])
    step_logits, step_state = model.step(ids[:, 2], state)
    full_logits, full_state = model(ids)
    torch.testing.assert_close(step_logits, full_logits[:, 2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step_state, full_state, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():  # the prepacked path
        fast_logits, fast_state = model.step(ids[:, 2], state)
        torch.testing.assert_close(model.read_steps(ids, model.init_state(4)), full_state, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_logits, full_logits[:, 2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_state, full_state, rtol=1e-5, atol=1e-6)
    assert ("input_table" in model._packed_linears) == table
    # A weight changed in place (as by an optimiser step) is seen: the packed copies are rebuilt.
    with torch.no_grad():
        model.layers[-1].weight_hh_l0.mul_(0.5)
        model.embedding.weight.add_(0.1)
        changed_logits, changed_state = model(ids)
    with torch.inference_mode():
        fast_logits, fast_state = model.step(ids[:, 2], model(ids[:, :2])[1])
    torch.testing.assert_close(fast_logits, changed_logits[:, 2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_state, changed_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("table", [True, False], ids=["input-table", "no-input-table"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_a_step_from_shared_parents_equals_one_from_each_childs_own_copy(cell, table, monkeypatch):
    import lm.model

    if not table:
        monkeypatch.setattr(lm.model, "INPUT_TABLE_BYTES", 0)
    model = make_model(cell, tie_weights=True, embed_dim=8, hidden_dim=12, num_layers=2).eval()
    parents_state = model(torch.randint(0, 50, (3, 4)))[1].detach()  # (L, 3, S): three distinct states
    parents = torch.tensor([2, 0, 2, 2, 1])  # five inputs continue them, three of them the same one
    ids = torch.tensor([7, 7, 9, 11, 3])
    expected_logits, expected_state = model.step(ids, parents_state[:, parents])
    with torch.inference_mode():
        logits, state = model.step(ids, parents_state, parents=parents)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, expected_state, rtol=1e-5, atol=1e-6)
    for constant in (False, True):  # with autograd: the gradients reach the shared parents' rows
        start = parents_state.clone().requires_grad_(True)
        logits, state = model.step(ids, start, constant_weights=constant, parents=parents)
        (grad,) = torch.autograd.grad(logits.sum() + state.sum(), start)
        start = parents_state.clone().requires_grad_(True)
        reference_logits, reference_state = model.step(ids, start[:, parents])
        (reference,) = torch.autograd.grad(reference_logits.sum() + reference_state.sum(), start)
        torch.testing.assert_close(logits, reference_logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_a_step_with_constant_weights_gives_autograds_input_gradients_and_none_to_the_weights(cell):
    model = make_model(cell, tie_weights=True, embed_dim=8, hidden_dim=12, num_layers=2).eval()
    ids = torch.randint(0, 50, (3, 2))
    start = model(ids[:, :1])[1].detach()
    seed = torch.randn(3, 50)
    grads = []
    for constant in (False, True):
        state = start.clone().requires_grad_(True)
        logits, after = model.step(ids[:, 1], state, constant_weights=constant)
        logits2, _ = model.step(ids[:, 0], after, constant_weights=constant)  # two steps: the state's path twice
        objective = (logits2 * seed).sum() + logits.pow(2).sum()
        weights = [p for name, p in model.named_parameters() if not name.startswith("embedding")]  # the products'
        grads.append(torch.autograd.grad(objective, [state, *weights], allow_unused=True))
    plain, constant = grads
    torch.testing.assert_close(constant[0], plain[0], rtol=1e-4, atol=1e-6)
    assert all(g is not None for g in plain[1:]) and all(g is None for g in constant[1:])  # no weight gradients


def test_adaptive_softmax_gives_normalised_log_probabilities_and_target_scores():
    model = make_model("lstm", vocab_size=60, adaptive_cutoffs=(10, 30), adaptive_div=2.0, tie_weights=False).eval()
    ids = torch.randint(0, 60, (2, 5))
    logprobs, _ = model(ids)
    torch.testing.assert_close(logprobs.exp().sum(-1), torch.ones(2, 5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.log_softmax(logprobs, -1), logprobs, rtol=1e-5, atol=1e-5)  # already normalised
    targets = torch.randint(0, 60, (2, 3))
    scores, _ = model(ids, targets=targets, score_from=2)
    torch.testing.assert_close(scores, logprobs[:, 2:].gather(-1, targets.unsqueeze(-1)).squeeze(-1), rtol=1e-5, atol=1e-6)
    step_logprobs, _ = model.step(ids[:, 0], model.init_state(2))
    torch.testing.assert_close(step_logprobs, logprobs[:, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no-tie-weights"):
        ModelConfig(adaptive_cutoffs=(10,), tie_weights=True)
