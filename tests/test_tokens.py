"""The token cache: reuse, invalidation, damage, the id type, the batch view, the tokenizer sample, training through it."""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from pathlib import Path

import numpy
import pytest
import torch

import lm.train.tokens
from lm.__main__ import main as lm_main
from conftest import make_model, train_tiny
from corpora import Split, StreamedSplit, hash_file, load_corpus
from lm.config import TokenizerConfig, apply_preset
from lm.eval.figures import evaluate_text
from lm.model import RNNLanguageModel
from lm.tokenizers import CharTokenizer
from lm.train.loop import Hooks, MetricsLog, TrainingState, batchify, build_optimizer, fit, iterate_windows
from lm.train.run import seed_everything
from lm.train.tokens import token_cache_directory, cached_tokenizer, file_digest, token_ids, unit_dtype


@pytest.fixture
def small_corpus(tmp_path, corpus_dir):
    """A copy of the test corpus whose train.txt is its first 200 KB of lines (a corpus the test may edit)."""
    directory = tmp_path / "corpus"
    directory.mkdir()
    lines = (corpus_dir / "train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    kept, size = [], 0
    for line in lines:
        kept.append(line)
        size += len(line)
        if size > 200_000:
            break
    (directory / "train.txt").write_text("".join(kept), encoding="utf-8")
    for name in ("valid", "test"):
        shutil.copy(corpus_dir / f"{name}.txt", directory / f"{name}.txt")
    return directory


@pytest.fixture
def encodings(monkeypatch):
    """Counts the chunks encoded (in this process: the cache is built with one worker here)."""
    calls = []
    original = lm.train.tokens._encode_chunk

    def counting(lines, normalised):
        calls.append(len(lines))
        return original(lines, normalised)

    monkeypatch.setattr(lm.train.tokens, "_encode_chunk", counting)
    return calls


def _ids(split, tokenizer, cache):
    return token_ids(split, tokenizer, cache, workers=1, progress=False)


def test_streamed_ids_equal_the_in_memory_encoding_and_are_reused(tmp_path, small_corpus, char_tokenizer, encodings):
    eager = load_corpus(str(small_corpus))
    streamed = load_corpus(str(small_corpus), stream_train=True)
    assert isinstance(streamed.train, StreamedSplit) and streamed.valid == eager.valid and streamed.test == eager.test
    first = _ids(streamed.train, char_tokenizer, tmp_path / "cache")
    assert not first.reused and encodings
    assert first.ids.dtype == numpy.uint16 and first.chars == len(eager.train.text)
    assert first.ids.tolist() == char_tokenizer.encode(eager.train.text)
    encodings.clear()
    stamp = first.path.stat().st_mtime_ns
    again = _ids(streamed.train, char_tokenizer, tmp_path / "cache")
    assert again.reused and not encodings and again.path.stat().st_mtime_ns == stamp
    assert numpy.array_equal(again.ids, first.ids)
    # The same text held in memory has its own key (a hash of the normalised text), with the same ids.
    held = _ids(eager.train, char_tokenizer, tmp_path / "cache")
    assert held.path != first.path and numpy.array_equal(held.ids, first.ids)


def test_the_cache_is_invalidated_when_the_corpus_or_the_tokenizer_changes(tmp_path, small_corpus, char_tokenizer, encodings):
    split = StreamedSplit([small_corpus / "train.txt"])
    first = _ids(split, char_tokenizer, tmp_path)
    with open(small_corpus / "train.txt", "a", encoding="utf-8") as train:
        train.write(" = New article = \n")
    encodings.clear()
    changed = _ids(split, char_tokenizer, tmp_path)
    assert not changed.reused and encodings and changed.path != first.path
    assert changed.ids[-len("= New article =\n"):].tolist() == char_tokenizer.encode("= New article =\n")
    other = CharTokenizer(char_tokenizer.chars[::-1], min_count=3)  # the same characters, other ids
    encodings.clear()
    recoded = _ids(split, other, tmp_path)
    assert not recoded.reused and encodings and recoded.path != changed.path


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-sidecar", "bad-sidecar"])
def test_a_damaged_cache_is_rebuilt_not_used(tmp_path, small_corpus, char_tokenizer, encodings, damage):
    split = StreamedSplit([small_corpus / "train.txt"])
    first = _ids(split, char_tokenizer, tmp_path)
    expected = numpy.array(first.ids)
    sidecar = first.path.with_suffix(".json")
    del first
    if damage == "truncate":
        with open(sidecar.with_suffix(".ids"), "r+b") as ids:
            ids.truncate(1000)
    elif damage == "flip":
        data = bytearray(sidecar.with_suffix(".ids").read_bytes())
        data[500] ^= 1
        sidecar.with_suffix(".ids").write_bytes(bytes(data))
    elif damage == "no-sidecar":
        sidecar.unlink()
    else:
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "length": 12}))
    encodings.clear()
    rebuilt = _ids(split, char_tokenizer, tmp_path)
    assert not rebuilt.reused and encodings
    assert numpy.array_equal(rebuilt.ids, expected)
    assert _ids(split, char_tokenizer, tmp_path).reused


def test_ids_are_uint16_when_the_vocabulary_fits_else_uint32(tmp_path):
    assert unit_dtype(65_536) == numpy.uint16 and unit_dtype(65_537) == numpy.uint32
    chars = [chr(0x20000 + index) for index in range(66_000)]  # CJK extension B onwards: no surrogates, no line break
    tokenizer = CharTokenizer(chars, min_count=1)
    text = chars[0] + chars[-1] + "\n" + chars[65_600] + "\n"
    found = _ids(Split(text=text, raw_words=2, lines=2), tokenizer, tmp_path)
    assert found.ids.dtype == numpy.uint32 and found.ids.tolist() == tokenizer.encode(text)
    assert max(found.ids.tolist()) > 65_535


def test_batchify_on_the_memory_map_is_a_view_with_todays_windows(tmp_path, corpus, char_tokenizer):
    found = _ids(corpus.train, char_tokenizer, tmp_path)
    mapped = torch.from_numpy(found.ids)
    data = batchify(mapped, 16)
    assert data.data_ptr() == found.ids.ctypes.data  # no copy: the rows are the file's pages
    today = batchify(torch.tensor(char_tokenizer.encode(corpus.train.text), dtype=torch.long), 16)
    for windows in zip(iterate_windows(data, 0, 24, 32), iterate_windows(today, 0, 24, 32)):
        assert windows[0].inputs.dtype == torch.long and windows[0].targets.dtype == torch.long
        assert torch.equal(windows[0].inputs, windows[1].inputs) and torch.equal(windows[0].targets, windows[1].targets)


def test_the_cache_directory_is_the_setting_else_the_environment_else_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("REACH_TOKEN_CACHE", str(tmp_path / "env"))
    assert token_cache_directory(str(tmp_path / "flag")) == tmp_path / "flag"
    assert token_cache_directory(None) == tmp_path / "env"
    monkeypatch.delenv("REACH_TOKEN_CACHE")
    assert str(token_cache_directory(None)).endswith(".cache/reach/tokens") and "~" not in str(token_cache_directory(None))


def test_the_tokenizer_sample_is_bounded_seeded_and_whole_lines(corpus):
    text = corpus.train.text
    assert corpus.train.sample(len(text), seed=0) is text  # a split within the bound: all of it, as before
    sample = corpus.train.sample(100_000, seed=0)
    assert 80_000 < len(sample) < 100_000 + 5_000 and sample.endswith("\n")  # about the bound, never far past it
    assert sample == corpus.train.sample(100_000, seed=0) != corpus.train.sample(100_000, seed=1)
    lines = set(text.split("\n"))
    assert all(line in lines for line in sample.split("\n"))
    # Spread over the whole split, not its beginning.
    assert any(text.find(line) > 3 * len(text) // 4 for line in sample.split("\n") if len(line) > 200)


def test_a_streamed_corpus_samples_raw_lines_normalised(tmp_path, small_corpus):
    streamed = StreamedSplit([small_corpus / "train.txt"])
    whole = load_corpus(str(small_corpus)).train.text
    assert streamed.sample(10_000_000, seed=0) == whole
    sample = streamed.sample(20_000, seed=3)
    assert 15_000 < len(sample) < 25_000 and set(sample.split("\n")) <= set(whole.split("\n"))


def test_the_cached_tokenizer_is_trained_on_the_sample_once(tmp_path, small_corpus, monkeypatch):
    split = StreamedSplit([small_corpus / "train.txt"])
    config = TokenizerConfig(tokenizer="subword", vocab_size=500, tokenizer_sample_chars=50_000)
    seen = []
    original = lm.train.tokens.build_tokenizer
    monkeypatch.setattr(lm.train.tokens, "build_tokenizer", lambda kind, text, *rest: seen.append(len(text)) or original(kind, text, *rest))
    first = cached_tokenizer(split, config, tmp_path)
    again = cached_tokenizer(split, config, tmp_path)
    assert len(seen) == 1 and 40_000 < seen[0] < 55_000  # the bounded sample, trained on once
    assert again.model_proto == first.model_proto


def test_training_through_the_cache_gives_todays_losses(tmp_path, corpus):
    """A tiny run (through the cache, uint16 windows) has the losses of the int64 in-memory path it replaced."""
    result = train_tiny(tmp_path / "run", corpus, max_steps=40, eval_interval=1000, accuracy_positions=0)
    records = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if record["kind"] == "step"]
    # Today's path, written out: the whole text encoded in memory as int64, batchified, then fit.
    tokenizer_config, model_config, train_config = apply_preset("tiny", {"max_steps": 40, "max_minutes": None,
                                                                         "eval_interval": 1000, "accuracy_positions": 0})
    seed_everything(train_config.seed)
    tokenizer = CharTokenizer.train(corpus.train.text, min_count=tokenizer_config.char_min_count)
    model = RNNLanguageModel(model_config.__class__(**{**model_config.__dict__, "vocab_size": tokenizer.vocab_size}))
    data = batchify(torch.tensor(tokenizer.encode(corpus.train.text), dtype=torch.long), train_config.batch_size)
    with MetricsLog(tmp_path / "today.jsonl") as metrics:
        fit(model, build_optimizer(model, train_config), data, train_config, TrainingState(), metrics, Hooks())
    today = [record["loss"] for record in map(json.loads, (tmp_path / "today.jsonl").read_text().splitlines()) if record["kind"] == "step"]
    assert len(losses) == 40 and losses == today


def test_a_file_digest_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "train.txt"
    path.write_text("first line\nsecond line\n", encoding="utf-8")
    time.sleep(lm.train.tokens.STAMP_MARGIN_NS / 1e9 + 0.1)  # older than the margin: its digest may be remembered
    hashed = []
    original = lm.train.tokens.hash_file
    monkeypatch.setattr(lm.train.tokens, "hash_file", lambda name: hashed.append(name) or original(name))
    first = file_digest(path, tmp_path / "cache")
    assert first == hash_file(path) and len(hashed) == 1
    assert file_digest(path, tmp_path / "cache") == first and len(hashed) == 1  # remembered: not read again
    # An edit that keeps the size and puts the mtime back is still seen (its ctime moved).
    status = path.stat()
    path.write_text("first line\nsecond LINE\n", encoding="utf-8")
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert path.stat().st_size == status.st_size and path.stat().st_mtime_ns == status.st_mtime_ns
    changed = file_digest(path, tmp_path / "cache")
    assert changed == hash_file(path) != first and len(hashed) == 2


def test_a_file_changed_just_before_it_is_hashed_is_hashed_again_next_time(tmp_path, monkeypatch):
    path = tmp_path / "train.txt"
    path.write_text("a line\n", encoding="utf-8")
    hashed = []
    original = lm.train.tokens.hash_file
    monkeypatch.setattr(lm.train.tokens, "hash_file", lambda name: hashed.append(name) or original(name))
    file_digest(path, tmp_path / "cache")
    assert not (tmp_path / "cache" / "stamps").exists()  # changed too recently to be trusted
    path.write_text("b line\n", encoding="utf-8")  # within the same timestamp tick, perhaps: nothing may be trusted
    assert file_digest(path, tmp_path / "cache") == hash_file(path) and len(hashed) == 2


def test_a_run_hashes_its_training_text_once(tmp_path, small_corpus, monkeypatch):
    hashed = []
    original = lm.train.tokens.hash_file
    monkeypatch.setattr(lm.train.tokens, "hash_file", lambda name: hashed.append(Path(name).name) or original(name))
    corpus = load_corpus(str(small_corpus), stream_train=True)
    train_tiny(tmp_path / "run", corpus, max_steps=2, eval_interval=1000, accuracy_positions=0, token_cache=str(tmp_path / "cache"))
    assert hashed.count("train.txt") == 1
    assert len(list((tmp_path / "cache").glob("*.ids"))) == 3  # train, and the held-out splits the evaluations read


def test_two_encoding_processes_give_the_ids_of_one(tmp_path, small_corpus, subword_tokenizer, monkeypatch):
    """Chunks split at line boundaries, encoded by two worker processes and written in order: the ids of one process."""
    split = StreamedSplit([small_corpus / "train.txt"])
    monkeypatch.setattr(split, "line_chunks", functools.partial(split.line_chunks, 20_000))  # about ten chunks
    one = token_ids(split, subword_tokenizer, tmp_path / "one", workers=1, progress=False)
    two = token_ids(split, subword_tokenizer, tmp_path / "two", workers=2, progress=False)
    assert not two.reused and two.chars == one.chars
    assert numpy.array_equal(two.ids, one.ids)
    assert one.ids.tolist() == subword_tokenizer.encode(load_corpus(str(small_corpus)).train.text)


def test_evaluation_reads_cached_ids_with_the_figures_of_encoding(tmp_path, corpus, subword_tokenizer, monkeypatch):
    model = make_model(vocab_size=subword_tokenizer.vocab_size)
    ids = token_ids(corpus.valid, subword_tokenizer, tmp_path, workers=1, progress=False).ids.tolist()
    encoded = {chars: evaluate_text(model, subword_tokenizer, corpus.valid.text, corpus.valid.raw_words, chars)
               for chars in (None, 30_000)}
    monkeypatch.setattr(subword_tokenizer, "encode", lambda text: pytest.fail("encoded although the ids were given"))
    for chars, expected in encoded.items():  # the whole split, and a prefix of whole lines
        assert evaluate_text(model, subword_tokenizer, corpus.valid.text, corpus.valid.raw_words, chars, ids=ids) == expected


def test_evaluate_without_a_usable_token_cache_warns_in_one_line_and_scores(tmp_path, corpus_dir, capsys, monkeypatch):
    result = train_tiny(tmp_path / "run", load_corpus(str(corpus_dir), stream_train=True), max_steps=3, eval_interval=1000,
                        accuracy_positions=0, token_cache=str(tmp_path / "cache"))
    (tmp_path / "not-a-directory").write_text("", encoding="utf-8")
    monkeypatch.setenv("REACH_TOKEN_CACHE", str(tmp_path / "not-a-directory"))
    assert lm_main(["evaluate", "--model", str(result.out), "--corpus", str(corpus_dir), "--split", "valid",
                    "--positions", "1", "--json"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "token cache cannot be used" in line]
    assert len(warnings) == 1 and "Traceback" not in captured.err
    assert json.loads(captured.out)["bpc"] == pytest.approx(result.valid.bpc, abs=1e-6)
