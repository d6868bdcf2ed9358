"""The hand-written backward pass through a context equals autograd's, for every cell and stacked layers."""

import pytest
import torch

from conftest import make_model
from lm.infer import engine as engine_module
from lm.infer.context_grad import backward_context, trace_context
from lm.infer.engine import StepEngine


def _autograd_reference(model, ids, seeds):
    """The same gradients the slow way: the context read k times side by side, one backward of the seeded sum."""
    k = seeds.size(1)
    embeds = model.embedding(ids[None]).detach().repeat(k, 1, 1).requires_grad_(True)  # (k, T, E)
    _, final = model(embeds=embeds)  # (L, k, S)
    (grad,) = torch.autograd.grad((final * seeds).sum(), embeds)
    return grad


@pytest.mark.parametrize("table", [True, False], ids=["input-table", "no-input-table"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_backward_context_equals_autograd(cell, table, monkeypatch):
    if not table:  # the first layer's input part recomputed by a product, not gathered from the per-unit table
        monkeypatch.setattr(engine_module, "INPUT_TABLE_BYTES", 0)
    model = make_model(cell, vocab_size=40, seed=3, num_layers=2).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (150,), generator=generator)  # more than one 64-step block, the last one partial
    seeds = torch.randn(2, 3, model.config.state_dim, generator=generator)  # (L, k, S)
    trace = trace_context(model, ids)
    engine = StepEngine(model)
    got = backward_context(engine, trace, seeds)
    expected = _autograd_reference(model, ids, seeds)
    assert got.shape == expected.shape == (3, 150, model.config.embed_dim)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # Every seed row has its own gradient, not a mixture: a seed of zeros gives zeros.
    seeds[:, 1] = 0
    assert backward_context(engine, trace, seeds)[1].abs().max() == 0


def test_trace_gives_the_models_own_final_state_and_logits():
    model = make_model("lstm", vocab_size=40, num_layers=2).eval()
    ids = torch.arange(25) % 40
    trace = trace_context(model, ids)
    with torch.no_grad():
        logits, final = model(ids[None])
    torch.testing.assert_close(trace.final, final)
    torch.testing.assert_close(trace.logits, logits[0, -1])
    with pytest.raises(ValueError, match="evaluation mode"):
        trace_context(model.train(), ids)
