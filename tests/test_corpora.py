"""Corpus loading through Hugging Face datasets: local directories, extra text, hub paths offline."""

import json
import os
import subprocess
import sys
import time

import pytest

import corpora.loading
from corpora import CorpusError, load_corpus
from corpora.loading import split_articles, split_name_for_article
from conftest import EXTRA_DIR, ROOT


def test_local_directory_gives_three_normalised_splits(corpus):
    assert corpus.test.raw_words == 21_812  # the published count, before normalisation
    assert corpus.valid.raw_words == 16_583
    assert corpus.train.raw_words == 202_816
    for name in ("train", "valid", "test"):
        split = corpus.split(name)
        assert split.text.endswith("\n")
        assert "@-@" not in split.text and " , " not in split.text
    assert corpus.test.text.startswith("= Little Gidding (poem) =\n")


def test_extra_training_text_is_appended_to_train_only(corpus, corpus_dir):
    both = load_corpus(str(corpus_dir), [str(EXTRA_DIR)])
    assert both.train.text.startswith(corpus.train.text)
    assert len(both.train.text) > 1.9 * len(corpus.train.text)
    assert both.valid == corpus.valid and both.test == corpus.test
    assert both.extra_train == (str(EXTRA_DIR),)


def test_reach_corpus_variable_names_the_default(monkeypatch, corpus_dir, corpus):
    monkeypatch.setenv("REACH_CORPUS", str(corpus_dir))
    assert load_corpus("wiki-subset").test == corpus.test


@pytest.mark.parametrize("spec", ["wikitext-2-raw", "wikitext-103-raw", "wikipedia:en:20MB"])
def test_hub_corpora_fail_fast_offline_with_one_clear_sentence(monkeypatch, spec):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    begun = time.perf_counter()
    with pytest.raises(CorpusError) as caught:
        load_corpus(spec)
    assert time.perf_counter() - begun < 20
    message = str(caught.value)
    assert "hub" in message and "pass a local directory" in message and "\n" not in message


def test_default_corpus_without_local_copy_goes_to_the_hub(monkeypatch, tmp_path):
    monkeypatch.delenv("REACH_CORPUS", raising=False)
    monkeypatch.setattr(corpora.loading, "SHARED_DEFAULT", tmp_path / "absent")
    with pytest.raises(CorpusError, match="Salesforce|hub"):
        load_corpus("wiki-subset")


def test_default_corpus_is_read_from_the_shared_copy_beside_the_project(monkeypatch, corpus):
    assert corpora.loading.SHARED_DEFAULT == ROOT.parent / "shared" / "corpora" / "wiki-subset"
    monkeypatch.delenv("REACH_CORPUS", raising=False)
    if not (corpora.loading.SHARED_DEFAULT / "train.txt").is_file():
        pytest.skip("no shared copy beside the project on this machine")
    found = load_corpus("wiki-subset")
    assert found.source.startswith("local:") and "beside the project" in found.source
    assert found.test.raw_words == 21_812


@pytest.mark.slow
def test_train_py_finds_the_shared_copy_without_reach_corpus(tmp_path):
    if not (corpora.loading.SHARED_DEFAULT / "train.txt").is_file():
        pytest.skip("no shared copy beside the project on this machine")
    env = {key: value for key, value in os.environ.items() if key != "REACH_CORPUS"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "tiny", "--max-steps", "2", "--max-minutes", "none",
                           "--eval-interval", "1000", "--accuracy-positions", "0", "--threads", "1", "--quiet", "--out", str(tmp_path / "run")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert meta["corpus"]["name"] == "wiki-subset" and "beside the project" in meta["corpus"]["source"]


@pytest.mark.parametrize("spec, fragment", [
    ("/no/such/dir", "does not exist"),
    ("wikipedia:en:lots", "wikipedia:<lang>:<size>"),
    ("not-a-corpus", "unknown corpus"),
])
def test_bad_corpus_names_are_explained(spec, fragment):
    with pytest.raises(CorpusError, match=fragment):
        load_corpus(spec)


def test_directory_without_splits_is_explained(tmp_path):
    (tmp_path / "train.txt").write_text("a b c\n")
    with pytest.raises(CorpusError, match="valid.txt, test.txt"):
        load_corpus(str(tmp_path))


def test_articles_are_split_deterministically_by_index():
    lines = []
    for index in range(20):
        lines += [f" = Article {index} = ", f" Text of article {index} . "]
    splits = split_articles(lines)
    assert [line for line in splits["valid"] if "=" in line] == [" = Article 4 = ", " = Article 14 = "]
    assert [line for line in splits["test"] if "=" in line] == [" = Article 9 = ", " = Article 19 = "]
    assert len(splits["train"]) == 32
    assert [split_name_for_article(i) for i in (3, 4, 9, 10)] == ["train", "valid", "test", "train"]
