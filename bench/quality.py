"""Held-out quality after N minutes of training on this machine, Reach against the textbook recipe.

    python bench/quality.py --minutes 10 --corpus ../shared/corpora/wiki-subset [train.py options]
    python bench/quality.py --minutes 10 --recipe textbook
    python bench/quality.py --minutes 10 --recipe both [train.py options]

`--recipe reach` (the default) trains with `train.py`'s settings (the
default preset unless options say otherwise). `--recipe textbook` is
PyTorch's word_language_model example with its documented flags, written out
here: a word vocabulary from all three splits plus an end-of-line token,
a 2-layer LSTM 200/200, bptt 35, batch 20, SGD at lr 20 divided by 4 when an
epoch does not improve validation, clipping at 0.25, dropout 0.2; scored as
the example scores (evaluation batch 10).

Both train for N minutes of training wall clock (evaluation excluded) and
are scored on the test split: bits per character over the normalised test
text, and per-word perplexity over the 21,812 published words whatever the
tokenizer. `both` runs the textbook first, then Reach, and prints the ratio.
The last line is `test bpc B per-word-ppl P` (for `both`: Reach's).

`--cache` also scores Reach's model with a continuous cache (lm/eval/cache.py,
Grave et al. 2017), `--dynamic` with dynamic evaluation (lm/eval/dynamic.py,
Krause et al. 2018), both together when both are given, their settings
tuned on the validation split, as a separate row: evaluation-time additions,
not used by prediction.

Each recipe also reports where its test NLL goes: words that never occur in
train.txt against the rest. For the textbook these are test tokens outside
the training split's vocabulary (they are in its vocabulary all the same,
built from all three splits, with embeddings no step trained); for Reach,
normalised test words whose core (leading and trailing punctuation
stripped) never occurs in train.txt, every unit of the word counted. The
two sides count words differently (published tokens with end-of-line
tokens; normalised words with punctuation attached), so compare the shares
of the NLL more than the per-word figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import train  # noqa: E402
from textbook import TextbookLSTM  # noqa: E402
from corpora import load_corpus  # noqa: E402
from lm.cli_support import collect_overrides, configure_logging  # noqa: E402
from lm.config import ModelConfig, TokenizerConfig, TrainConfig, apply_preset  # noqa: E402
from lm.infer.accuracy import checkpoint_accuracy  # noqa: E402
from lm.train.run import seed_everything, set_threads, train_run  # noqa: E402


def peak_matmul_flops(seconds: float = 3.0) -> float:
    """fp32 matrix-multiply FLOP/s of this machine now (2048 x 2048, the fastest of repeats)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    times = []
    begun = time.perf_counter()
    while time.perf_counter() - begun < seconds:
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / min(times)


def training_flops_per_token(embed: int, hidden: int, layers: int, vocab: int, projection: int = 0, cell: str = "lstm",
                             cutoffs: tuple[int, ...] = (), div: float = 4.0) -> float:
    """Matrix-multiply FLOPs to train on one token: forward, and twice that backward (3x forward).

    With an adaptive softmax the output counts the head and every tail cluster (the cost of the full
    distribution; training computes a tail only for the targets in it, so this is an upper bound).
    """
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}[cell]
    macs = 0
    for index in range(layers):
        inputs = embed if index == 0 else hidden
        macs += gates * hidden * (inputs + hidden)
    if projection:
        macs += hidden * projection
    width = projection or hidden
    if cutoffs:
        bounds = [*cutoffs, vocab]
        macs += width * (cutoffs[0] + len(cutoffs))
        for index in range(len(cutoffs)):
            narrow = int(width // div ** (index + 1))
            macs += width * narrow + narrow * (bounds[index + 1] - bounds[index])
    else:
        macs += width * vocab
    return 3 * 2 * macs


# The textbook recipe ------------------------------------------------------------


def _words(path: Path) -> list[list[str]]:
    return [line.split() + ["<eos>"] for line in path.read_text(encoding="utf-8").splitlines()]


def _batchify(ids: torch.Tensor, batch: int) -> torch.Tensor:
    columns = ids.numel() // batch
    return ids[: columns * batch].view(batch, -1).t().contiguous()  # (N, B), time-major as in the example


def _evaluate_words(model: TextbookLSTM, data: torch.Tensor, bptt: int, vocab: int, unseen: torch.Tensor | None = None
                    ) -> tuple[float, int] | tuple[float, int, float, int]:
    """Total NLL and tokens scored, the example's way (hidden state carried across windows). With `unseen`
    (a (vocab,) bool mask), also the NLL and count of the tokens it marks."""
    model.eval()
    total, count, unseen_total, unseen_count = 0.0, 0, 0.0, 0
    hidden = model.init_hidden(data.size(1))
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, bptt):
            length = min(bptt, data.size(0) - 1 - i)
            x, y = data[i : i + length], data[i + 1 : i + 1 + length]
            output, hidden = model(x, hidden)
            losses = nn.functional.cross_entropy(output.view(-1, vocab), y.reshape(-1), reduction="none")
            total += losses.sum().item()
            count += y.numel()
            if unseen is not None:
                marked = unseen[y.reshape(-1)]
                unseen_total += losses[marked].sum().item()
                unseen_count += int(marked.sum())
    return (total, count) if unseen is None else (total, count, unseen_total, unseen_count)


def _split(total: float, unseen_total: float, seen_count: int, unseen_count: int) -> dict:
    return {"seen_words": seen_count, "seen_nats_per_word": (total - unseen_total) / max(seen_count, 1),
            "unseen_words": unseen_count, "unseen_nats_per_word": unseen_total / max(unseen_count, 1),
            "unseen_share_of_nll": unseen_total / total}


def unseen_split(logprobs: list[float], spans: list[tuple[int, int]], text: str, train_text: str) -> dict:
    """Where a read's test NLL goes: the units of normalised words of `text` whose core (leading and trailing
    punctuation stripped) never occurs in `train_text`, against the rest. Each unit belongs to the word of
    its first non-space character (a bare space piece to the word after it), as in attribution."""
    import re

    from lm.infer.attribution import _unit_words, _words_of

    core = lambda word: re.sub(r"^\W+|\W+$", "", word)  # noqa: E731
    known = {core(word) for word in train_text.split()}
    words = _words_of(text)
    unseen = [core(word) not in known and core(word) != "" for word, _, _ in words]
    owners = _unit_words([(text[start:end], start, end) for start, end in spans], words)
    total = -sum(logprobs)
    unseen_total = -sum(logprob for logprob, owner in zip(logprobs, owners) if owner >= 0 and unseen[owner])
    return _split(total, unseen_total, len(words) - sum(unseen), sum(unseen))


def reach_unseen_split(run: Path, corpus_dir: str) -> dict:
    """`unseen_split` of the run's best model on the test split, read as one stream."""
    from lm.eval.cache import score_stream
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(run)
    corpus = load_corpus(corpus_dir)
    ids, spans = checkpoint.tokenizer.encode_with_offsets(corpus.test.text)
    scores = score_stream(checkpoint.model, ids, checkpoint.tokenizer.newline_id, keep_features=False)
    return unseen_split(scores.model_logprobs.tolist(), spans, corpus.test.text, corpus.train.text)


def run_textbook(corpus_dir: Path, minutes: float, seed: int = 1111) -> dict:
    """Train the textbook recipe for `minutes` of training time; returns test figures."""
    torch.manual_seed(seed)
    splits = {name: _words(corpus_dir / f"{name}.txt") for name in ("train", "valid", "test")}
    vocabulary: dict[str, int] = {}
    for name in ("train", "valid", "test"):  # as the example does: all three splits
        for line in splits[name]:
            for word in line:
                vocabulary.setdefault(word, len(vocabulary))
    ids = {name: torch.tensor([vocabulary[w] for line in lines for w in line]) for name, lines in splits.items()}
    vocab = len(vocabulary)
    train_data, valid_data, test_data = _batchify(ids["train"], 20), _batchify(ids["valid"], 10), _batchify(ids["test"], 10)
    model = TextbookLSTM(vocab)
    criterion = nn.CrossEntropyLoss()
    lr, bptt, clip = 20.0, 35, 0.25
    best_valid, best_state = math.inf, None
    elapsed, tokens, epochs = 0.0, 0, 0
    budget = minutes * 60
    while elapsed < budget:
        model.train()
        hidden = model.init_hidden(20)
        for i in range(0, train_data.size(0) - 1, bptt):
            begun = time.perf_counter()
            length = min(bptt, train_data.size(0) - 1 - i)
            x, y = train_data[i : i + length], train_data[i + 1 : i + 1 + length]
            hidden = tuple(h.detach() for h in hidden)
            model.zero_grad()
            output, hidden = model(x, hidden)
            loss = criterion(output.view(-1, vocab), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            elapsed += time.perf_counter() - begun
            tokens += x.numel()
            if elapsed >= budget:
                break
        else:
            epochs += 1
        valid_nll, valid_count = _evaluate_words(model, valid_data, bptt, vocab)
        valid_loss = valid_nll / valid_count
        label = f"epoch {epochs}" if elapsed < budget else f"budget end, {epochs} full epochs"
        print(f"  textbook {label} ({elapsed / 60:.1f} min): valid loss {valid_loss:.3f}", flush=True)
        if valid_loss < best_valid:
            best_valid, best_state = valid_loss, {k: v.clone() for k, v in model.state_dict().items()}
        else:
            lr /= 4.0
    model.load_state_dict(best_state)
    in_train = torch.zeros(vocab, dtype=torch.bool)
    in_train[ids["train"].unique()] = True
    test_nll, test_count, unseen_nll, unseen_count = _evaluate_words(model, test_data, bptt, vocab, unseen=~in_train)
    test_tokens = ids["test"].numel()
    words = sum(len(line) - 1 for line in splits["test"])
    mean = test_nll / test_count
    chars = len(load_corpus(str(corpus_dir)).test.text)
    flops = training_flops_per_token(200, 200, 2, vocab)
    return {
        "recipe": "textbook", "epochs": epochs, "tokens": tokens, "tokens_per_s": tokens / elapsed,
        "train_minutes": elapsed / 60, "test_loss": mean, "test_token_ppl": math.exp(mean),
        # The mean loss spread over all test tokens, divided by the published words.
        "word_ppl": math.exp(mean * test_tokens / words), "bpc": mean * test_tokens / math.log(2) / chars,
        "flops_per_token": flops, "flops": flops * tokens / elapsed, "vocab": vocab,
        "unseen_split": _split(test_nll, unseen_nll, test_count - unseen_count, unseen_count),
    }


def run_reach(args: argparse.Namespace, rest: list[str], minutes: float) -> dict:
    """Train Reach with train.py's options for `minutes`; returns test figures."""
    options = train.parse_args(["--corpus", args.corpus, "--max-minutes", str(minutes), *rest])
    configure_logging(options.quiet)
    overrides = collect_overrides(options, (TokenizerConfig, ModelConfig, TrainConfig))
    tokenizer_config, model_config, train_config = apply_preset(options.preset, overrides)
    set_threads(train_config.threads)
    seed_everything(train_config.seed)
    with tempfile.TemporaryDirectory() as scratch:
        out = options.out or Path(scratch) / "run"
        result = train_run(tokenizer_config, model_config, train_config, out, accuracy=checkpoint_accuracy)
        extra = adapted(result.out, args.corpus, args.cache, args.dynamic) if args.cache or args.dynamic else None
        split = reach_unseen_split(result.out, args.corpus)
    state, size = result.state, result.model_config
    projection = size.embed_dim if size.tie_weights and size.embed_dim != size.hidden_dim else 0
    flops = training_flops_per_token(size.embed_dim, size.hidden_dim, size.num_layers, size.vocab_size, projection, size.cell,
                                     tuple(size.adaptive_cutoffs), size.adaptive_div)
    vocab = size.vocab_size
    return {
        "recipe": f"reach/{options.preset}", "tokenizer": tokenizer_config.tokenizer, "cell": size.cell,
        "layers": size.num_layers, "hidden": size.hidden_dim, "embed": size.embed_dim, "parameters": result.parameters,
        "steps": state.step, "tokens": state.tokens, "tokens_per_s": state.tokens / max(state.elapsed, 1e-9),
        "train_minutes": state.elapsed / 60, "bpc": result.test.bpc, "word_ppl": result.test.word_ppl,
        "valid_bpc": result.valid.bpc, "valid_word_ppl": result.valid.word_ppl, "flops_per_token": flops,
        "flops": flops * state.tokens / max(state.elapsed, 1e-9), "vocab": vocab, "adapted": extra,
        "unseen_split": split,
    }


def adapted(run: Path, corpus_dir: str, cache: bool, dynamic: bool) -> dict:
    """Test figures of the run's best model with a continuous cache and/or dynamic evaluation, tuned on valid."""
    from lm.checkpoint import load_checkpoint
    from lm.eval.figures import evaluate_adapted

    checkpoint = load_checkpoint(run)
    corpus = load_corpus(corpus_dir)
    result = evaluate_adapted(checkpoint.model, checkpoint.tokenizer, corpus.test.text, corpus.test.raw_words, corpus.valid.text,
                              cache="tune" if cache else None, dynamic_lr="tune" if dynamic else None)
    return {"with": result.describe(), "dynamic_lr": result.dynamic_lr,
            "cache": None if result.cache is None else result.cache.__dict__,
            "bpc": result.figures.bpc, "word_ppl": result.figures.word_ppl}


def _row(figures: dict, peak: float) -> str:
    return (f"{figures['recipe']}: test bpc {figures['bpc']:.4f} per-word-ppl {figures['word_ppl']:.2f} "
            f"tokens/s {figures['tokens_per_s']:,.0f} train-minutes {figures['train_minutes']:.2f} "
            f"FLOP/s {figures['flops'] / 1e9:.1f}G ({figures['flops'] / peak:.2f} of peak)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="training wall-clock budget of each recipe")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    parser.add_argument("--recipe", choices=("reach", "textbook", "both"), default="reach")
    parser.add_argument("--record", type=Path, default=None, help="append each recipe's figures and command as a JSON line")
    parser.add_argument("--label", default="", help="a name for this configuration in --record")
    parser.add_argument("--cache", action="store_true", help="also score Reach with a continuous cache tuned on the valid split")
    parser.add_argument("--dynamic", action="store_true", help="also score Reach with dynamic evaluation tuned on the valid split "
                                                               "(with --cache: both)")
    args, rest = parser.parse_known_args(argv)
    torch.set_num_threads(2)
    peak = peak_matmul_flops()
    print(f"fp32 matmul peak now: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads, torch {torch.__version__})", flush=True)
    results = []
    if args.recipe in ("textbook", "both"):
        results.append(run_textbook(Path(args.corpus), args.minutes))
    if args.recipe in ("reach", "both"):
        results.append(run_reach(args, rest, args.minutes))
    # The machine's speed drifts: take the best of a measurement before and one after training.
    peak = max(peak, peak_matmul_flops())
    print(f"fp32 matmul peak, best of before and after: {peak / 1e9:.1f} GFLOP/s", flush=True)
    for figures in results:
        print(_row(figures, peak), flush=True)
        split = figures["unseen_split"]
        print(f"  {figures['recipe']}: test words seen in train.txt {split['seen_words']:,} at "
              f"{split['seen_nats_per_word']:.2f} nats each; never in train.txt {split['unseen_words']:,} at "
              f"{split['unseen_nats_per_word']:.2f} nats each ({split['unseen_share_of_nll']:.0%} of the NLL)")
        extra = figures.get("adapted")
        if extra:
            print(f"{figures['recipe']} with {extra['with']}: test bpc {extra['bpc']:.4f} "
                  f"per-word-ppl {extra['word_ppl']:.2f}")
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with open(args.record, "a", encoding="utf-8") as handle:
            for figures in results:
                handle.write(json.dumps({"label": args.label, "minutes": args.minutes, "command": " ".join(sys.argv),
                                         "peak_flops": peak, **figures}) + "\n")
    if len(results) == 2:
        print(f"per-word perplexity ratio reach/textbook {results[1]['word_ppl'] / results[0]['word_ppl']:.3f}")
        if results[1].get("adapted"):
            print(f"per-word perplexity ratio reach (with {results[1]['adapted']['with']}) / textbook "
                  f"{results[1]['adapted']['word_ppl'] / results[0]['word_ppl']:.3f}")
    last = results[-1]
    print(f"test bpc {last['bpc']:.4f} per-word-ppl {last['word_ppl']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
