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


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_the_reference_single_step_equals_the_fused_forward(cell):
    model = make_model(cell, tie_weights=True, embed_dim=8, hidden_dim=12, num_layers=2).eval()
    ids = torch.randint(0, 50, (4, 3))
    _, state = model(ids[:, :2])
    step_logits, step_state = model.step(ids[:, 2], state)
    full_logits, full_state = model(ids)
    torch.testing.assert_close(step_logits, full_logits[:, 2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step_state, full_state, rtol=1e-5, atol=1e-6)
    parents = torch.tensor([3, 0, 3])  # rows continuing chosen states
    logits, shared = model.step(ids[:3, 2], state, parents=parents)
    torch.testing.assert_close(shared, model.step(ids[:3, 2], state[:, parents])[1])


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


def test_weight_dropout_under_cudnn_raises_no_flat_weights_warning(monkeypatch):
    """On CUDA, cuDNN warns at every call that a DropConnect layer's weights are not in its flat buffer (W_hh is a
    fresh tensor each time); the test settings make warnings errors. Here the layer warns as cuDNN does."""
    import warnings

    model = make_model("lstm", weight_dropout=0.5)
    layer = model.layers[0]
    original = type(layer).forward

    def forward_like_cudnn(self, *args, **kwargs):
        warnings.warn("RNN module weights are not part of single contiguous chunk of memory. This means they need to be "
                      "compacted at every call, possibly greatly increasing memory usage. To compact weights again call "
                      "flatten_parameters().", UserWarning)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(layer), "forward", forward_like_cudnn)
    model.train()
    logits, _ = model(torch.randint(0, 50, (2, 5)))
    assert logits.shape == (2, 5, 50)
    with pytest.raises(UserWarning, match="single contiguous chunk"):
        model.eval()(torch.randint(0, 50, (2, 5)))  # only DropConnect's call expects it; any other still surfaces
