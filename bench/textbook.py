"""pytorch/examples word_language_model's model, written out once for the benches that compare against it, and the
character model that spells the words outside its vocabulary when it is scored as an open-vocabulary model."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

__all__ = ["CharNgram", "TextbookLSTM"]


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


class CharNgram:
    """Spelling model for words outside a vocabulary: an interpolated Witten-Bell character n-gram.

    Trained on a word list (each word once), it gives P(spelling) = product over the word's characters and a
    final end-of-word mark of P(char | the previous order - 1 characters), each level interpolated with the
    one below it (Witten and Bell 1991), the lowest with a uniform distribution over the training alphabet,
    the end mark and one shared escape for every character never seen in training.
    """

    END = "\x00"  # end of word (never a character of a whitespace-split word)
    START = "\x01"  # padding before the first character

    def __init__(self, words: Iterable[str], order: int = 5):
        self.order = order
        self.counts: dict[str, dict[str, int]] = {}  # history (0..order-1 characters) -> next character -> count
        alphabet: set[str] = set()
        for word in set(words):
            alphabet.update(word)
            padded = self.START * (order - 1) + word + self.END
            for index in range(order - 1, len(padded)):
                for length in range(order):
                    history = padded[index - length : index]
                    row = self.counts.setdefault(history, {})
                    row[padded[index]] = row.get(padded[index], 0) + 1
        self.uniform = 1.0 / (len(alphabet) + 2)  # the alphabet, the end mark and the escape
        self.totals = {history: sum(row.values()) for history, row in self.counts.items()}

    def char_logprob(self, history: str, char: str) -> float:
        """log P(char | history), history the previous order - 1 characters (START-padded)."""
        probability = self.uniform
        for length in range(self.order):  # from the empty history up, each level interpolated with the one below
            key = history[len(history) - length :] if length else ""
            row = self.counts.get(key)
            if row is None:
                break
            types, total = len(row), self.totals[key]
            probability = (row.get(char, 0) + types * probability) / (total + types)
        return math.log(probability)

    def logprob(self, word: str) -> float:
        """log P(word spelled, then its end) under the model."""
        padded = self.START * (self.order - 1) + word + self.END
        return sum(self.char_logprob(padded[index - self.order + 1 : index], padded[index])
                   for index in range(self.order - 1, len(padded)))
