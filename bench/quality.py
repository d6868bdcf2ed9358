"""Held-out quality after N minutes of training on this machine, Reach against the textbook recipe.

    python bench/quality.py --minutes 10 --corpus ../shared/corpora/wiki-subset [train.py options]
    python bench/quality.py --minutes 10 --recipe textbook
    python bench/quality.py --minutes 10 --recipe both [train.py options]
    python bench/quality.py --minutes 10 --recipe textbook --served runs/NAME [--positions 1000 --seed 0]
    python bench/quality.py --minutes 0 --served runs/NAME --prompt-words 5,12,30,100,300,1000 --prompt-positions 300

`--recipe reach` (the default) trains with `train.py`'s settings (the
default preset unless options say otherwise). `--recipe textbook` is
PyTorch's word_language_model example with its documented flags, written out
here: a word vocabulary from all three splits plus an end-of-line token,
a 2-layer LSTM 200/200, bptt 35, batch 20, SGD at lr 20 divided by 4 when an
epoch does not improve validation, clipping at 0.25, dropout 0.2; scored as
the example scores (evaluation batch 10).

`--recipe textbook` trains the textbook twice. The first is the example as
published, its vocabulary from all three splits (it never meets an unknown
word). The second is open-vocabulary, as Reach is: its vocabulary is the words
seen at least twice in train.txt, <eos> and <unk> (words seen once become <unk>
in training, so that it learns how often an unknown word comes); a test token
outside that vocabulary pays -log P(<unk>) plus -log of its spelling under a
character 5-gram (interpolated Witten-Bell) trained on train.txt's distinct
words (`textbook.CharNgram`). The open-vocabulary row is the fair comparison
for Reach, which has to spell every word it never saw in training and never
sees the valid or test words; the published row is kept beside it because
it is the recipe's own figure.

`--served RUN` measures a trained Reach run or checkpoint as it is served,
instead of training Reach: the test split read through the predictor (its
`Reads`, one engine step per unit, each row mixed with the stored continuous
cache over the text read so far) for bpc and per-word perplexity, and
`next_word_accuracy` (what `lm evaluate` runs) for next-word top-1/3/5 at
`--positions` seeded word starts, each with and without the stored cache;
then the served quality by prompt length (`--prompt-words`: at
`--prompt-positions` seeded positions, the N words before each sent as a
request, with the stored cache against the model alone, position by
position; `lm evaluate --prompt-words` prints the same table).
The textbook models are scored at the same positions against the same truth
(the word `lm evaluate` scores there): is it among the model's k most
probable next tokens? A truth outside a model's vocabulary is a miss.

All recipes train for N minutes of training wall clock (evaluation excluded) and
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
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import train  # noqa: E402
from textbook import CharNgram, TextbookLSTM  # noqa: E402
from corpora import load_corpus, normalize_line  # noqa: E402
from lm.cli_support import collect_overrides, configure_logging  # noqa: E402
from lm.config import ModelConfig, TokenizerConfig, TrainConfig, apply_preset  # noqa: E402
from lm.eval.figures import EvalResult  # noqa: E402
from lm.infer.accuracy import (PROMPT_WORDS, PairedAccuracy, checkpoint_accuracy, describe_prompt_lengths,  # noqa: E402
                               next_word_accuracy, paired_accuracy, prompt_length_accuracy, sampled_positions)
from lm.infer.predictor import Predictor  # noqa: E402
from lm.infer.query import word_at  # noqa: E402
from lm.infer.reads import ContextState  # noqa: E402
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


def published_words(path: Path) -> list[list[str]]:
    """A published split's lines as tokens, each line ending in <eos>, as the example reads them."""
    return [line.split() + ["<eos>"] for line in path.read_text(encoding="utf-8").splitlines()]


def _batchify(ids: torch.Tensor, batch: int) -> torch.Tensor:
    columns = ids.numel() // batch
    return ids[: columns * batch].view(batch, -1).t().contiguous()  # (N, B), time-major as in the example


def _token_losses(model: TextbookLSTM, data: torch.Tensor, bptt: int) -> torch.Tensor:
    """(N - 1, B) NLL of data[1:] in data's layout, the example's way (hidden state carried across windows)."""
    model.eval()
    losses = []
    hidden = model.init_hidden(data.size(1))
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, bptt):
            length = min(bptt, data.size(0) - 1 - i)
            x, y = data[i : i + length], data[i + 1 : i + 1 + length]
            output, hidden = model(x, hidden)  # (T, B, V)
            losses.append(nn.functional.cross_entropy(output.flatten(0, 1), y.reshape(-1), reduction="none").view_as(y))
    return torch.cat(losses).double()


def _split(total: float, unseen_total: float, seen_count: int, unseen_count: int) -> dict:
    return {"seen_words": seen_count, "seen_nats_per_word": (total - unseen_total) / max(seen_count, 1),
            "unseen_words": unseen_count, "unseen_nats_per_word": unseen_total / max(unseen_count, 1),
            "unseen_share_of_nll": unseen_total / total}


def unseen_split(logprobs: list[float], spans: list[tuple[int, int]], text: str, train_text: str) -> dict:
    """Where a read's test NLL goes: the units of normalised words of `text` whose core (leading and trailing
    punctuation stripped) never occurs in `train_text`, against the rest. Each unit belongs to the word of
    its first non-space character (a bare space piece to the word after it), as in attribution."""
    import re

    from lm.infer.reach import unit_words, words_of

    core = lambda word: re.sub(r"^\W+|\W+$", "", word)  # noqa: E731
    known = {core(word) for word in train_text.split()}
    words = words_of(text)
    unseen = [core(word) not in known and core(word) != "" for word, _, _ in words]
    owners = unit_words([(text[start:end], start, end) for start, end in spans], words)
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


ESCAPES = {"@-@": "-", "@,@": ",", "@.@": "."}  # WikiText's escapes inside numbers, and what normalising makes of them
UNK = "<unk>"


def textbook_vocabulary(splits: dict[str, list[list[str]]], open_vocabulary: bool) -> dict[str, int]:
    """The example's vocabulary, from all three splits; or, open, the words seen at least twice in train.txt, <eos>
    and <unk> (the words seen once become <unk> in training, so that the model learns how often an unknown word
    comes)."""
    vocabulary: dict[str, int] = {}
    if not open_vocabulary:
        for name in ("train", "valid", "test"):  # as the example does: all three splits
            for line in splits[name]:
                for word in line:
                    vocabulary.setdefault(word, len(vocabulary))
        return vocabulary
    counts = Counter(word for line in splits["train"] for word in line)
    for word in [UNK, "<eos>", *(word for word, count in counts.items() if count >= 2)]:
        vocabulary.setdefault(word, len(vocabulary))
    return vocabulary


def align_tokens(raw_lines: list[str], text: str) -> dict[int, int]:
    """Where published tokens begin in the normalised `text` of `raw_lines` (corpora.normalize_lines's output):
    offset -> the token's index in the textbook's stream (each line's tokens, then <eos>). A token glued to the one
    before it by normalising ("Eliot 's" -> "Eliot's") begins no whitespace-separated word of `text`."""
    starts: dict[int, int] = {}
    index, offset = 0, 0
    for line in raw_lines:
        tokens = line.split()
        normal = normalize_line(line)
        if normal:
            places = [offset + i for i, char in enumerate(normal) if not char.isspace()]
            squeezed = "".join(char for char in normal if not char.isspace())
            at = 0
            for number, token in enumerate(tokens):
                if squeezed.startswith(token, at):
                    width = len(token)
                elif token in ESCAPES and squeezed.startswith(ESCAPES[token], at):
                    width = 1
                else:  # not the same characters: leave the rest of the line unaligned (its positions count as misses)
                    break
                starts.setdefault(places[at], index + number)
                at += width
            offset += len(normal) + 1
        index += len(tokens) + 1
    assert offset == len(text), "the raw lines do not normalise to the text"
    return starts


def textbook_accuracy(model: TextbookLSTM, vocabulary: dict[str, int], stream: list[str], text: str,
                      starts: dict[int, int], positions: list[int], ks: tuple[int, ...] = (1, 3, 5)) -> dict:
    """Keyboard-style recall@k of a textbook model at normalised word starts `positions` of `text`: is the word
    there (`word_at`, the truth `lm evaluate` scores) among the model's k most probable next tokens, read as one
    stream (batch 1) after an <eos>? A truth outside the vocabulary, or a position no token begins at, is a miss;
    so is a predicted <unk> or <eos>, or a token normalising glues to the word before (",", "'s"), which the model
    ranks without knowing that a space was typed: a lower bound on what it could score."""
    model.eval()
    words = list(vocabulary)
    unk = vocabulary.get(UNK, -1)
    inputs = torch.tensor([vocabulary["<eos>"]] + [vocabulary.get(word, unk) for word in stream[:-1]])[:, None]  # (N, 1)
    tops = []
    hidden = model.init_hidden(1)
    with torch.no_grad():
        for i in range(0, inputs.size(0), 512):
            output, hidden = model(inputs[i : i + 512], hidden)  # (T, 1, V): row t predicts stream[i + t]
            tops.append(output[:, 0].topk(max(ks), dim=-1).indices)
    top = torch.cat(tops).tolist()  # (N, max k)
    hits = {k: 0 for k in ks}
    aligned = 0
    for position in positions:
        token = starts.get(position)
        if token is None:
            continue
        aligned += 1
        truth = word_at(text, position)
        predicted = [words[i] for i in top[token]]
        for k in ks:
            hits[k] += truth in predicted[:k]
    total = max(len(positions), 1)
    return {"positions": len(positions), "aligned": aligned, **{f"top{k}": hits[k] / total for k in ks}}


def run_textbook(corpus_dir: Path, minutes: float, seed: int = 1111, open_vocabulary: bool = False,
                 positions: list[int] | None = None) -> dict:
    """Train the textbook recipe for `minutes` of training time; returns test figures (and next-word accuracy at
    normalised word starts `positions` of the test text, if given).

    With `open_vocabulary` its vocabulary comes from train.txt only (`textbook_vocabulary`) and a test token
    outside it pays -log P(<unk>) plus its spelling under a character 5-gram trained on train.txt's words
    (`CharNgram`)."""
    torch.manual_seed(seed)
    splits = {name: published_words(corpus_dir / f"{name}.txt") for name in ("train", "valid", "test")}
    vocabulary = textbook_vocabulary(splits, open_vocabulary)
    unk = vocabulary.get(UNK)
    ids = {name: torch.tensor([vocabulary.get(w, unk) for line in lines for w in line]) for name, lines in splits.items()}
    vocab = len(vocabulary)
    train_data, valid_data, test_data = _batchify(ids["train"], 20), _batchify(ids["valid"], 10), _batchify(ids["test"], 10)
    model = TextbookLSTM(vocab)
    criterion = nn.CrossEntropyLoss()
    lr, bptt, clip = 20.0, 35, 0.25
    best_valid, best_state = math.inf, None
    elapsed, tokens, epochs = 0.0, 0, 0
    budget = minutes * 60
    name = "textbook, open vocabulary" if open_vocabulary else "textbook"
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
        valid_loss = float(_token_losses(model, valid_data, bptt).mean())
        label = f"epoch {epochs}" if elapsed < budget else f"budget end, {epochs} full epochs"
        print(f"  {name} {label} ({elapsed / 60:.1f} min): valid loss {valid_loss:.3f}", flush=True)
        if valid_loss < best_valid:
            best_valid, best_state = valid_loss, {k: v.clone() for k, v in model.state_dict().items()}
        else:
            lr /= 4.0
    model.load_state_dict(best_state)
    test_words = [w for line in splits["test"] for w in line]
    targets = test_data[1:]  # (N - 1, 10): what the example scores
    losses = _token_losses(model, test_data, bptt)
    speller = None
    if open_vocabulary:  # the spelling of every test token outside the vocabulary, laid out as the data
        speller = CharNgram(w for line in splits["train"] for w in line if w != "<eos>")
        spelled = torch.tensor([0.0 if w in vocabulary else -speller.logprob(w) for w in test_words], dtype=torch.float64)
        losses = losses + _batchify(spelled, 10)[1:]
    train_words = {w for line in splits["train"] for w in line}
    never_in_train = _batchify(torch.tensor([w not in train_words for w in test_words]), 10)[1:]
    test_nll, test_count = float(losses.sum()), targets.numel()
    unseen_nll, unseen_count = float(losses[never_in_train].sum()), int(never_in_train.sum())
    test_tokens = ids["test"].numel()
    words = sum(len(line) - 1 for line in splits["test"])
    mean = test_nll / test_count
    corpus = load_corpus(str(corpus_dir))
    chars = len(corpus.test.text)
    flops = training_flops_per_token(200, 200, 2, vocab)
    figures = {
        "recipe": name, "epochs": epochs, "tokens": tokens, "tokens_per_s": tokens / elapsed,
        "train_minutes": elapsed / 60, "test_loss": mean, "test_token_ppl": math.exp(mean),
        # The mean loss spread over all test tokens, divided by the published words.
        "word_ppl": math.exp(mean * test_tokens / words), "bpc": mean * test_tokens / math.log(2) / chars,
        "flops_per_token": flops, "flops": flops * tokens / elapsed, "vocab": vocab,
        "unseen_split": _split(test_nll, unseen_nll, test_count - unseen_count, unseen_count),
    }
    if open_vocabulary:
        outside = [w for w in test_words if w not in vocabulary]
        figures["outside_vocabulary"] = {"tokens": len(outside), "spelling": f"CharNgram order {speller.order}",
                                         "spelling_nats_per_token": -sum(map(speller.logprob, outside)) / max(len(outside), 1)}
    if positions is not None:
        raw_lines = (corpus_dir / "test.txt").read_text(encoding="utf-8").splitlines()
        figures["accuracy"] = textbook_accuracy(model, vocabulary, test_words, corpus.test.text,
                                                align_tokens(raw_lines, corpus.test.text), positions)
    return figures


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


def served_nll(predictor: Predictor, text: str, text_cache: bool = True, chunk: int = 64) -> tuple[float, int]:
    """Total NLL (nats) and units of normalised `text` read as one stream after a line break through the serving
    path: the predictor's context read, then `Reads` one unit at a time (engine steps, each row mixed with the
    continuous cache over the text read so far when `text_cache` and the predictor has settings), `chunk` units
    per `Reads` and each next chunk's context taken from the previous one's reads, as the lookahead does.

    The one difference from lm/eval/cache.py: the text's first unit has no earlier position, and serving predicts
    it with the model alone where evaluation mixes in an empty cache (-log(1 - weight) more nats there)."""
    ids = predictor.tokenizer.encode(text)
    remember = text_cache and predictor.text_cache_settings is not None
    context = predictor.context_state((), use_prefix_cache=False)  # the leading line break read
    nll = 0.0
    for begin in range(0, len(ids), chunk):
        piece = tuple(ids[begin : begin + chunk])
        reads = predictor.reads_after(context, text_cache=remember)
        for length, unit in enumerate(piece):
            nll -= float(reads.some_logprobs(piece[:length], np.array([unit]))[0])
            reads.read_all([piece[: length + 1]])
        state, logits = reads.after(piece)
        memory = reads.memory_after(piece) if remember else None
        context = ContextState(None, begin + len(piece), state, logits, predictor.ends_line(piece[-1]), memory)
    return nll, len(ids)


def run_served(run: Path, corpus_dir: str, positions: int, seed: int, prompt_words: tuple[int, ...] = (),
               prompt_positions: int = 300) -> list[dict]:
    """The served configuration of a Reach run or checkpoint: test bpc, per-word perplexity and next-word top-1/3/5
    at `positions` seeded word starts, through the predictor, with the model alone and with its stored cache; with
    `prompt_words`, the last row also carries the served quality by prompt length ("by_prompt_length", at
    `prompt_positions` positions: `prompt_length_accuracy`)."""
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(run)
    split = load_corpus(corpus_dir).test
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0, text_cache_settings=checkpoint.text_cache_settings)
    rows = []
    for text_cache in (False, True):
        if text_cache and checkpoint.text_cache_settings is None:
            break
        begun = time.perf_counter()
        nll, units = served_nll(predictor, split.text, text_cache)
        figures = EvalResult(nll=nll, units=units, chars=len(split.text), words=split.raw_words)
        accuracy = next_word_accuracy(predictor, split.text, positions=positions, seed=seed, text_cache=text_cache,
                                      keep_ranks=True)
        cache = checkpoint.text_cache_settings
        rows.append({"recipe": f"reach served, {'with the stored cache' if text_cache else 'model alone'}",
                     "model": str(checkpoint.directory), "cache": cache.__dict__ if text_cache else None,
                     "bpc": figures.bpc, "word_ppl": figures.word_ppl, "nll": nll, "units": units, "accuracy": accuracy,
                     "seconds": time.perf_counter() - begun})
    ranks = [row["accuracy"].pop("ranks") for row in rows]
    if len(rows) == 2:  # the same positions, compared one by one (lm evaluate prints the same)
        rows[1]["cache_against_alone"] = [comparison.as_dict() for comparison in paired_accuracy(*ranks)]
    if prompt_words:
        begun = time.perf_counter()
        rows[-1]["by_prompt_length"] = prompt_length_accuracy(predictor, split.text, prompt_words, prompt_positions, seed,
                                                              progress=sys.stderr.isatty())
        rows[-1]["by_prompt_length_seconds"] = time.perf_counter() - begun
    return rows


def adapted(run: Path, corpus_dir: str, cache: bool, dynamic: bool) -> dict:
    """Test figures of the run's best model with a continuous cache and/or dynamic evaluation, tuned on valid."""
    from lm.checkpoint import load_checkpoint
    from lm.eval.figures import evaluate_adapted

    checkpoint = load_checkpoint(run)
    corpus = load_corpus(corpus_dir)
    result = evaluate_adapted(checkpoint.model, checkpoint.tokenizer, corpus.test.text, corpus.test.raw_words, corpus.valid.text,
                              text_cache="tune" if cache else None, dynamic_lr="tune" if dynamic else None)
    return {"with": result.describe(), "dynamic_lr": result.dynamic_lr,
            "cache": None if result.text_cache is None else result.text_cache.__dict__,
            "bpc": result.figures.bpc, "word_ppl": result.figures.word_ppl}


def _row(figures: dict, peak: float) -> str:
    return (f"{figures['recipe']}: test bpc {figures['bpc']:.4f} per-word-ppl {figures['word_ppl']:.2f} "
            f"tokens/s {figures['tokens_per_s']:,.0f} train-minutes {figures['train_minutes']:.2f} "
            f"FLOP/s {figures['flops'] / 1e9:.1f}G ({figures['flops'] / peak:.2f} of peak)")


def _accuracy(figures: dict) -> str:
    accuracy = figures["accuracy"]
    return f"next-word top-1 {accuracy['top1']:.2%} top-3 {accuracy['top3']:.2%} top-5 {accuracy['top5']:.2%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="training wall-clock budget of each recipe")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/corpora/wiki-subset"))
    parser.add_argument("--recipe", choices=("reach", "textbook", "both"), default="reach")
    parser.add_argument("--served", type=Path, default=None, metavar="RUN",
                        help="measure this trained Reach run or checkpoint as served (with and without its stored cache) "
                             "instead of training Reach")
    parser.add_argument("--positions", type=int, default=1000, help="seeded test word starts for next-word accuracy")
    parser.add_argument("--seed", type=int, default=0, help="seed of those positions (lm evaluate's --seed)")
    parser.add_argument("--prompt-words", default=",".join(map(str, PROMPT_WORDS)), metavar="N,N,...",
                        help="with --served: also the served quality by prompt length, the N words before each position "
                             "read as a request (default: %(default)s; empty: skip)")
    parser.add_argument("--prompt-positions", type=int, default=300, help="seeded positions of the prompt-length table")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--record", type=Path, default=None, help="append each recipe's figures and command as a JSON line")
    parser.add_argument("--label", default="", help="a name for this configuration in --record")
    parser.add_argument("--cache", action="store_true", help="also score Reach with a continuous cache tuned on the valid split")
    parser.add_argument("--dynamic", action="store_true", help="also score Reach with dynamic evaluation tuned on the valid split "
                                                               "(with --cache: both)")
    args, rest = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    peak = peak_matmul_flops()
    print(f"fp32 matmul peak now: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads, torch {torch.__version__})", flush=True)
    positions = sampled_positions(load_corpus(args.corpus).test.text, args.positions, args.seed)
    results, served = [], []
    if args.served is not None:  # first: the figures of an existing model do not wait on training
        prompt_words = tuple(int(part) for part in args.prompt_words.split(",") if part)
        served = run_served(args.served, args.corpus, args.positions, args.seed, prompt_words, args.prompt_positions)
        for figures in served:
            print(f"{figures['recipe']}: test bpc {figures['bpc']:.4f} per-word-ppl {figures['word_ppl']:.2f} "
                  f"{_accuracy(figures)} ({figures['seconds']:.0f} s)", flush=True)
    if args.recipe in ("textbook", "both"):
        results.append(run_textbook(Path(args.corpus), args.minutes, positions=positions))
        results.append(run_textbook(Path(args.corpus), args.minutes, open_vocabulary=True, positions=positions))
    if args.served is None and args.recipe in ("reach", "both"):
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
        outside = figures.get("outside_vocabulary")
        if outside:
            print(f"  {figures['recipe']}: {outside['tokens']:,} test tokens outside the vocabulary, spelled by "
                  f"{outside['spelling']} at {outside['spelling_nats_per_token']:.2f} nats each (plus -log P(<unk>))")
        if "accuracy" in figures:
            print(f"  {figures['recipe']}: {_accuracy(figures)} ({figures['accuracy']['aligned']:,} of "
                  f"{figures['accuracy']['positions']:,} positions begin a published token)")
        extra = figures.get("adapted")
        if extra:
            print(f"{figures['recipe']} with {extra['with']}: test bpc {extra['bpc']:.4f} "
                  f"per-word-ppl {extra['word_ppl']:.2f}")
    for figures in served:
        print(f"{figures['recipe']}: test bpc {figures['bpc']:.4f} per-word-ppl {figures['word_ppl']:.2f} "
              f"{_accuracy(figures)} ({figures['accuracy']['positions']:,} positions, seed {args.seed}; "
              f"{figures['seconds']:.0f} s)", flush=True)
        for comparison in figures.get("cache_against_alone", []):
            print(f"  {PairedAccuracy(**comparison).describe()}", flush=True)
        if figures.get("by_prompt_length"):
            print(describe_prompt_lengths(figures["by_prompt_length"]), flush=True)
    results += served
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with open(args.record, "a", encoding="utf-8") as handle:
            for figures in results:
                handle.write(json.dumps({"label": args.label, "minutes": args.minutes, "command": " ".join(sys.argv),
                                         "peak_flops": peak, **figures}) + "\n")
    textbook = next((figures for figures in results if figures["recipe"] == "textbook"), None)
    reach = [figures for figures in results if figures["recipe"].startswith("reach")]
    if textbook is not None:
        for figures in reach:
            print(f"per-word perplexity ratio {figures['recipe']} / textbook {figures['word_ppl'] / textbook['word_ppl']:.3f}")
            if figures.get("adapted"):
                print(f"per-word perplexity ratio reach (with {figures['adapted']['with']}) / textbook "
                      f"{figures['adapted']['word_ppl'] / textbook['word_ppl']:.3f}")
    last = results[-1]
    print(f"test bpc {last['bpc']:.4f} per-word-ppl {last['word_ppl']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
