"""The lab's Jacobian norms by distance: they decay for a recurrence that contracts."""

import torch

from lm.config import ModelConfig
from lm.infer.predictor import Predictor
from lm.model import RNNLanguageModel
from lm.reports.jacobian import hidden_jacobian_norms
from lm.tokenizers import CharTokenizer


def test_hidden_jacobian_norms_decay_for_a_contracting_rnn():
    tokenizer = CharTokenizer(list("abc \n"))
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(cell="rnn_tanh", vocab_size=tokenizer.vocab_size, embed_dim=4, hidden_dim=16,
                                         num_layers=1, tie_weights=False)).eval()
    with torch.no_grad():
        model.layers[0].weight_hh_l0.mul_(0.3)  # a contraction: the recurrence forgets geometrically
    diagnosis = hidden_jacobian_norms(Predictor(model, tokenizer), "abc cab bca abc ", probes=16)
    norms = diagnosis["jacobian_norm"]
    assert diagnosis["distance"][:3] == [1, 2, 3]
    assert norms[0] > norms[4] > norms[9] > 0
    assert all(p.grad is None for p in model.parameters())
