"""pytorch/examples word_language_model's model, written out once for the benches that compare against it."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TextbookLSTM"]


class TextbookLSTM(nn.Module):
    """word_language_model's RNNModel for the LSTM (untied): embedding, dropout, nn.LSTM, dropout, linear; time-major."""

    def __init__(self, vocab: int, embed: int = 200, hidden: int = 200, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        self.layers, self.hidden = layers, hidden

    def forward(self, x: torch.Tensor, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)  # (T, B, H)
        return self.decoder(self.drop(output)), hidden

    def init_hidden(self, batch: int):
        """The zero (h, c), each (layers, batch, hidden)."""
        weight = next(self.parameters())
        return (weight.new_zeros(self.layers, batch, self.hidden), weight.new_zeros(self.layers, batch, self.hidden))
