"""Corpus loading through Hugging Face datasets: local directories, extra text, hub paths offline."""

import json
import os
import shutil
import subprocess
import sys
import itertools
import time
import tracemalloc

import pytest

import corpora.loading
from corpora import CorpusError, StreamedSplit, load_corpus, normalize_line
from corpora.loading import article_rows, split_articles, split_name_for_article, write_splits
from conftest import EXCERPT_DIR, EXTRA_DIR, EXTRA_EXCERPT_DIR, ROOT, SHARED_CORPORA


def _published_words(path):
    """Whitespace-separated words of a file as published (before normalisation)."""
    return len(path.read_text(encoding="utf-8").split())


def test_local_directory_gives_three_normalised_splits(corpus, corpus_dir):
    for name in ("train", "valid", "test"):
        split = corpus.split(name)
        assert split.raw_words == _published_words(corpus_dir / f"{name}.txt")  # the published count, before normalisation
        assert len(split.text.split()) < split.raw_words  # " , " and " @-@ " are joined to their words
        assert split.text.endswith("\n")
        assert "@-@" not in split.text and " , " not in split.text
    assert corpus.test.text.startswith("= Little Gidding (poem) =\n")


def test_extra_training_text_is_appended_to_train_only(corpus, corpus_dir):
    both = load_corpus(str(corpus_dir), [str(EXTRA_DIR)])
    assert both.train.text.startswith(corpus.train.text)
    appended = both.train.text[len(corpus.train.text):]
    assert appended.startswith("= Homarus gammarus =\n") and "<unk>" in appended  # WikiText-2 validation, tokenized
    assert both.train.raw_words == corpus.train.raw_words + _published_words(EXTRA_DIR / "train.txt")
    assert both.valid == corpus.valid and both.test == corpus.test
    assert both.extra_train == (str(EXTRA_DIR),)


def test_the_shipped_excerpt_is_whole_articles_of_the_shared_subset():
    """tests/data/README.md: each excerpt file is the first whole articles of the shared file, byte for byte."""
    pairs = [(EXCERPT_DIR / f"{name}.txt", SHARED_CORPORA / "wiki-subset" / f"{name}.txt") for name in ("train", "valid", "test")]
    pairs.append((EXTRA_EXCERPT_DIR / "train.txt", SHARED_CORPORA / "wiki-extra" / "train.txt"))
    if not all(shared.is_file() for _, shared in pairs):
        pytest.skip("no shared copy beside the project on this machine")
    for excerpt, shared in pairs:
        cut = excerpt.read_bytes()
        whole = shared.read_bytes()
        assert whole.startswith(cut) and whole[len(cut):].startswith(b" = ") and not whole[len(cut):].startswith(b" = = "), excerpt
    assert sum(path.stat().st_size for path, _ in pairs) < 300_000


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


def _hub_articles(directory):
    """A corpus directory's articles (lists of raw lines) in the order of the hub's split they were cut from:
    `split_name_for_article` put the index-th article in its split, so the splits interleave back."""
    remaining = {name: _articles_of((directory / f"{name}.txt").read_text(encoding="utf-8").splitlines()) for name in ("train", "valid", "test")}
    ordered = []
    for index in itertools.count():
        name = split_name_for_article(index)
        if not remaining[name]:
            break
        ordered.append(remaining[name].pop(0))
    assert not any(remaining.values()), "the directory was not split by article index"
    return ordered


def _articles_of(lines):
    """Raw lines grouped into articles, each starting at its ' = Title = ' line."""
    found = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("= ") and stripped.endswith(" =") and not stripped.startswith("= ="):
            found.append([])
        found[-1].append(line)
    return found


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    """An empty `datasets` cache of this test's (a user's own cache must not answer for the hub)."""
    import datasets

    cache = tmp_path / "hf-datasets"
    cache.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def _cache_as_downloaded(cache, rows, tmp_path):
    """File `rows` in the `datasets` cache as `Salesforce/wikitext` wikitext-2-raw-v1 split test, as a download
    from the hub leaves it: the hub is out of reach here, so only the download is replaced. The real `text`
    builder writes the Arrow file and its metadata; they are moved under the hub name's directory."""
    import datasets

    raw = tmp_path / "wikitext-2-raw-test.txt"
    raw.write_text("".join(rows), encoding="utf-8")
    built = tmp_path / "built"
    datasets.load_dataset("text", data_files={"test": str(raw)}, split="test", cache_dir=str(built), keep_linebreaks=True)
    (info,) = built.rglob("dataset_info.json")
    place = cache / "Salesforce___wikitext" / "wikitext-2-raw-v1" / "0.0.0" / "local"
    shutil.copytree(info.parent, place)
    (place / "text-test.arrow").rename(place / "wikitext-test.arrow")
    metadata = json.loads(info.read_text(encoding="utf-8"))
    metadata.update(dataset_name="wikitext", config_name="wikitext-2-raw-v1")
    metadata["splits"]["test"]["dataset_name"] = "wikitext"
    (place / "dataset_info.json").write_text(json.dumps(metadata), encoding="utf-8")


def test_default_corpus_without_local_copy_goes_to_the_hub(monkeypatch, tmp_path, hub_cache):
    monkeypatch.delenv("REACH_CORPUS", raising=False)
    monkeypatch.setattr(corpora.loading, "SHARED_DEFAULT", tmp_path / "absent")
    with pytest.raises(CorpusError, match="Salesforce|hub"):
        load_corpus("wiki-subset")


def test_default_corpus_without_local_copy_is_rebuilt_from_the_hub_as_the_shared_copy_was(monkeypatch, tmp_path, hub_cache,
                                                                                           corpus_dir, corpus):
    """The hub's WikiText-2 raw test split (here from the `datasets` cache, offline), re-split by article, is the
    local copy: the real `load_dataset("Salesforce/wikitext", ...)` call is made and answered from the cache."""
    rows = ["\n"]
    for line in itertools.chain.from_iterable(_hub_articles(corpus_dir)):
        rows += [line + "\n", "\n"]  # as on the hub: a blank row after each line
    _cache_as_downloaded(hub_cache, rows, tmp_path)
    monkeypatch.delenv("REACH_CORPUS", raising=False)
    monkeypatch.setattr(corpora.loading, "SHARED_DEFAULT", tmp_path / "absent")
    rebuilt = load_corpus("wiki-subset")
    assert rebuilt.source.startswith("hub:Salesforce/wikitext/wikitext-2-raw-v1/test")
    assert (rebuilt.train, rebuilt.valid, rebuilt.test) == (corpus.train, corpus.valid, corpus.test)


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


def _wikipedia_articles(corpus_dir):
    """The corpus's articles in the hub's order, then all of them again ("(again)" after each title): a stream that
    goes on after any size the tests ask for, even on the 10 articles of the shipped excerpt."""
    articles = _articles(itertools.chain.from_iterable(_hub_articles(corpus_dir)))
    return articles + [{**article, "title": f"{article['title']} (again)"} for article in articles]


@pytest.fixture
def local_hub(monkeypatch, tmp_path, corpus_dir):
    """`datasets.load_dataset` answering the hub's two names from local files, streamed: the hub is out of reach
    here, so only where the rows come from is faked. Returns the calls made."""
    import datasets

    real = datasets.load_dataset
    articles = tmp_path / "articles.jsonl"
    articles.write_text("".join(json.dumps(article) + "\n" for article in _wikipedia_articles(corpus_dir)), encoding="utf-8")
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
    articles = _wikipedia_articles(corpus_dir)
    # The bytes of nine articles' lines (a newline after each) and one more: the tenth is read whole, then it stops.
    size = 1 + sum(len(line.encode("utf-8")) + 1 for article in articles[:9]
                   for line in [f"= {article['title']} =", *article["text"].split("\n")] if line.strip())
    loaded = load_corpus(f"wikipedia:en:{size}B", stream_train=True, stream_to=tmp_path / "corpora")
    held = load_corpus(f"wikipedia:en:{size}B")  # the same rows gathered in memory, as without streaming
    assert loaded.valid == held.valid and loaded.test == held.test
    train = "".join(line + "\n" for chunk in loaded.train.line_chunks() for line in chunk)
    assert train == held.train.text
    titles = [normalize_line(f"= {article['title']} =") for article in articles]
    assert [line for line in train.splitlines() if line in titles] == [titles[index] for index in (0, 1, 2, 3, 5, 6, 7, 8)]
    assert loaded.valid.text.startswith(f"{titles[4]}\n") and loaded.test.text.startswith(f"{titles[9]}\n")
    assert titles[10] not in loaded.valid.text + loaded.test.text + train


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
