"""Corpus loading through Hugging Face datasets: local directories, extra text, hub paths offline."""

import json
import os
import subprocess
import sys
import time
import tracemalloc

import pytest

import corpora.loading
from corpora import CorpusError, StreamedSplit, load_corpus
from corpora.loading import article_rows, split_articles, split_name_for_article, write_splits
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


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("spec", ["wikitext-2-raw", "wikitext-103-raw", "wikipedia:en:20MB"])
def test_hub_corpora_fail_fast_offline_with_one_clear_sentence(monkeypatch, tmp_path, spec, streamed):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    begun = time.perf_counter()
    with pytest.raises(CorpusError) as caught:
        load_corpus(spec, stream_train=streamed, stream_to=tmp_path / "corpora" if streamed else None)
    assert time.perf_counter() - begun < 20
    message = str(caught.value)
    assert "hub" in message and "pass a local directory" in message and "\n" not in message
    if streamed:  # nothing half-written is left to be taken for the corpus
        assert not any(path.is_file() for path in (tmp_path / "corpora").rglob("*"))


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


def _articles(lines):
    """WikiText lines as {"title", "text"} articles, as wikimedia/wikipedia gives them."""
    articles = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("= ") and stripped.endswith(" =") and not stripped.startswith("= ="):
            articles.append({"title": stripped[2:-2], "text": ""})
        elif articles and stripped:
            articles[-1]["text"] += stripped + "\n"
    return articles


@pytest.fixture
def local_hub(monkeypatch, tmp_path, corpus_dir):
    """`datasets.load_dataset` answering the hub's two names from local files, streamed: the hub is out of reach
    here, so only where the rows come from is faked. Returns the calls made."""
    import datasets

    real = datasets.load_dataset
    articles = tmp_path / "articles.jsonl"
    lines = (corpus_dir / "train.txt").read_text(encoding="utf-8").splitlines()
    articles.write_text("".join(json.dumps(article) + "\n" for article in _articles(lines)), encoding="utf-8")
    calls = []

    def load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        calls.append((path, name, split, streaming))
        if path == "Salesforce/wikitext":
            file = corpus_dir / f"{ {'validation': 'valid'}.get(split, split) }.txt"
            return real("text", data_files={split: str(file)}, split=split, streaming=streaming)
        assert path == "wikimedia/wikipedia"
        return real("json", data_files={"train": str(articles)}, split="train", streaming=streaming)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_a_hub_corpus_is_streamed_to_disk_normalised_once(local_hub, tmp_path, corpus):
    streamed = load_corpus("wikitext-103-raw", stream_train=True, stream_to=tmp_path / "corpora")
    assert isinstance(streamed.train, StreamedSplit) and streamed.train.normalised
    assert all(streaming for *_, streaming in local_hub)  # row by row, never a whole split loaded
    assert streamed.valid == corpus.valid and streamed.test == corpus.test  # text and published word counts
    assert "".join(line + "\n" for chunk in streamed.train.line_chunks() for line in chunk) == corpus.train.text
    assert streamed.train.raw_words == corpus.train.raw_words
    assert streamed.train.sample(10_000_000, seed=0) == corpus.train.text
    local_hub.clear()
    again = load_corpus("wikitext-103-raw", stream_train=True, stream_to=tmp_path / "corpora")
    assert not local_hub and again.train.files == streamed.train.files  # found on disk: the hub is not asked again
    assert again.train.fingerprint() == streamed.train.fingerprint()


def test_a_wikipedia_corpus_is_streamed_article_by_article_until_its_size(local_hub, tmp_path, corpus_dir):
    loaded = load_corpus("wikipedia:en:800KB", stream_train=True, stream_to=tmp_path / "corpora")
    held = load_corpus("wikipedia:en:800KB")  # the same rows gathered in memory, as without streaming
    assert loaded.valid == held.valid and loaded.test == held.test
    train = "".join(line + "\n" for chunk in loaded.train.line_chunks() for line in chunk)
    assert train == held.train.text and 400_000 < len(train) < 850_000
    lines = (corpus_dir / "train.txt").read_text(encoding="utf-8").splitlines()
    titles = [article["title"] for article in _articles(lines)]
    assert loaded.valid.text.startswith(f"= {titles[4]} =\n") and loaded.test.text.startswith(f"= {titles[9]} =\n")


def test_the_streaming_writer_holds_one_article_at_a_time(tmp_path):
    article = ("A sentence of an article , with its words @-@ spaced . " * 40 + "\n") * 50  # about 110 KB
    produced = []

    def articles():
        for index in range(100):  # about 11 MB in all
            produced.append(index)
            yield {"title": f"Article {index}", "text": article}

    tracemalloc.start()
    try:
        counts = write_splits(article_rows(articles(), 10**9), tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(produced) == 100 and counts["train"]["lines"] == 80 * 51
    assert (tmp_path / "train.txt").stat().st_size > 7_000_000  # 80 articles, normalised
    assert peak < 3 * len(article)  # one article and its lines, not the 11 MB written
    assert "@-@" not in (tmp_path / "valid.txt").read_text(encoding="utf-8")  # normalised on the way
