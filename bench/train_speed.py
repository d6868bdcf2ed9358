"""Training speed of Reach's loop against the textbook PyTorch loop, measured in one run.

The textbook loop is the one of PyTorch's word_language_model example,
written out here: a time-major `batchify`, one multi-layer `nn.LSTM`, the
hidden state repackaged (detached) at each window, `clip_grad_norm_`, and a
hand-written SGD update. Reach's loop is `lm.train.loop.fit` with everything
it does in a real run: per-step metrics to JSONL, the norm before clipping,
the non-finite check, the learning-rate schedule, the progress callback.

Both train the same model size on the same units of the same corpus with the
same threads; rounds alternate between them and medians are compared. The
last line is `ratio R` (Reach tokens/s over textbook tokens/s).

    python bench/train_speed.py [--corpus DIR] [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpora import load_corpus  # noqa: E402
from lm.config import ModelConfig, TrainConfig  # noqa: E402
from lm.model import RNNLanguageModel  # noqa: E402
from lm.train.run import seed_everything, set_threads  # noqa: E402
from lm.tokenizers import SubwordTokenizer  # noqa: E402
from textbook import TextbookLSTM  # noqa: E402
from lm.train.loop import Hooks, MetricsLog, TrainingState, batchify, build_optimizer, fit  # noqa: E402


def textbook_tokens_per_second(ids: torch.Tensor, args: argparse.Namespace, vocab: int) -> float:
    """Train the textbook loop for `args.seconds`; returns tokens per second."""
    model = TextbookLSTM(vocab, args.embed_dim, args.hidden_dim, args.num_layers, args.dropout)
    model.train()
    columns = ids.numel() // args.batch_size
    data = ids[: columns * args.batch_size].view(args.batch_size, -1).t().contiguous()  # (N, B), time-major
    criterion = nn.CrossEntropyLoss()
    weight = next(model.parameters())
    hidden = (weight.new_zeros(args.num_layers, args.batch_size, args.hidden_dim),) * 2
    tokens, begun, position = 0, time.perf_counter(), 0
    while time.perf_counter() - begun < args.seconds:
        if position + args.bptt + 1 > data.size(0):
            position = 0
        x, y = data[position : position + args.bptt], data[position + 1 : position + 1 + args.bptt]
        hidden = tuple(h.detach() for h in hidden)  # repackage_hidden
        model.zero_grad()
        output, hidden = model(x, hidden)
        loss = criterion(output.view(-1, vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-args.lr)
        tokens += x.numel()
        position += args.bptt
    return tokens / (time.perf_counter() - begun)


def reach_tokens_per_second(ids: torch.Tensor, args: argparse.Namespace, vocab: int) -> float:
    """Train with `lm.train.loop.fit` for `args.seconds`; returns tokens per second of wall clock."""
    config = ModelConfig(cell="lstm", vocab_size=vocab, embed_dim=args.embed_dim, hidden_dim=args.hidden_dim,
                         num_layers=args.num_layers, dropout=args.dropout, input_dropout=args.dropout, weight_dropout=0.0, tie_weights=False)
    model = RNNLanguageModel(config)
    train = TrainConfig(batch_size=args.batch_size, bptt=args.bptt, optimizer="sgd", lr=args.lr, weight_decay=0.0,
                        schedule="constant", warmup_steps=0, clip_norm=args.clip_norm, max_minutes=args.seconds / 60,
                        eval_interval=10**9)
    data = batchify(ids, args.batch_size)
    optimizer = build_optimizer(model, train)
    with tempfile.TemporaryDirectory() as scratch:
        metrics = MetricsLog(Path(scratch) / "metrics.jsonl")
        begun = time.perf_counter()
        state = fit(model, optimizer, data, train, TrainingState(), metrics, Hooks(progress=lambda fraction, figures: None))
        seconds = time.perf_counter() - begun
        metrics.close()
    return state.tokens / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared/corpora/wiki-subset"))
    parser.add_argument("--seconds", type=float, default=7.0, help="training seconds per round and loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--hidden-dim", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--clip-norm", type=float, default=0.25)
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    seed_everything(0)
    corpus = load_corpus(args.corpus)
    tokenizer = SubwordTokenizer.train(corpus.train.text, vocab_size=args.vocab_size)
    ids = torch.tensor(tokenizer.encode(corpus.train.text), dtype=torch.long)
    print(f"model: lstm {args.num_layers}x{args.hidden_dim}, embed {args.embed_dim}, vocab {tokenizer.vocab_size}, "
          f"batch {args.batch_size}, bptt {args.bptt}, threads {threads}, torch {torch.__version__}")
    textbook, reach = [], []
    for round_index in range(args.rounds):
        textbook.append(textbook_tokens_per_second(ids, args, tokenizer.vocab_size))
        reach.append(reach_tokens_per_second(ids, args, tokenizer.vocab_size))
        print(f"round {round_index + 1}: textbook {textbook[-1]:,.0f} tok/s, reach {reach[-1]:,.0f} tok/s")
    t, r = statistics.median(textbook), statistics.median(reach)
    print(f"median: textbook {t:,.0f} tok/s, reach {r:,.0f} tok/s")
    print(f"ratio {r / t:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
