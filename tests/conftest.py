"""Shared fixtures: the local corpus, seeded tiny models and tiny trained runs on disk.

The test corpus (`corpus_dir`, `CORPUS_DIR`) is, first found:

1. the directory in `$REACH_CORPUS`;
2. `../shared/corpora/wiki-subset` beside the project directory (this project's machines);
3. `tests/data/wiki-excerpt`, shipped in the repository: 10 whole articles of the same text (235 KB), so a
   fresh clone with no network passes the suite (`tests/data/README.md` says what was cut and how).

The extra training text (`EXTRA_DIR`) is `wiki-extra` beside that corpus when there is one, else the shipped
`tests/data/wiki-extra-excerpt`. Every test passes on each of them: figures that depend on the corpus are read
from it, not written down.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from corpora import load_corpus
from lm.config import ModelConfig, apply_preset
from lm.model import RNNLanguageModel
from lm.infer.accuracy import checkpoint_accuracy
from lm.train.run import seed_everything, train_run
from lm.tokenizers import CharTokenizer, SubwordTokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPORA = ROOT.parent / "shared" / "corpora"
EXCERPT_DIR = ROOT / "tests" / "data" / "wiki-excerpt"
EXTRA_EXCERPT_DIR = ROOT / "tests" / "data" / "wiki-extra-excerpt"


def _test_corpus() -> Path:
    """$REACH_CORPUS, else the shared subset beside the project, else the shipped excerpt."""
    if os.environ.get("REACH_CORPUS"):
        return Path(os.environ["REACH_CORPUS"])
    if (SHARED_CORPORA / "wiki-subset" / "train.txt").is_file():
        return SHARED_CORPORA / "wiki-subset"
    return EXCERPT_DIR


CORPUS_DIR = _test_corpus()
EXTRA_DIR = CORPUS_DIR.parent / "wiki-extra" if (CORPUS_DIR.parent / "wiki-extra" / "train.txt").is_file() else EXTRA_EXCERPT_DIR


# A URL with a scheme or a protocol-relative one, where a page would fetch it: src=, href=, url(), @import.
_EXTERNAL = re.compile(r"""(?:\b(?:src|href|action|poster)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)\s*(?!data:)(?:[a-z][a-z0-9+.-]*:|//)""", re.I)


def external_references(page: str) -> list[str]:
    """What a page would load from elsewhere. Empty for a self-contained page; inline data: URIs are fine
    (searching for "http" instead fails by chance: base64 images contain it about once in 17 million characters)."""
    return [match.group(0) for match in _EXTERNAL.finditer(page)]


CHROMIUM = Path("/usr/bin/chromium")  # Debian's, for the browser tests (`.ci/run` installs it)


def serve(app):
    """Serve `app` on a free port of 127.0.0.1 in a thread; yields its address, then shuts it down."""
    from werkzeug.serving import make_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


@contextmanager
def browser_page(**options):
    """A new page in headless Chromium and the list its page errors go to; the browser closes after. Skipped
    without Debian's chromium, except in CI (CI=true), where that fails."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install Debian's chromium for the browser test")
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page(**options)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page, errors
        finally:
            browser.close()


_SESSION_CACHE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(2)
    # Never reach for the network from tests: the hub paths fail fast.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # Runs keep their token caches in a directory of this session's, not in the user's ~/.cache.
    _SESSION_CACHE.append(tempfile.mkdtemp(prefix="reach-token-cache-"))
    os.environ["REACH_TOKEN_CACHE"] = _SESSION_CACHE[-1]


def pytest_unconfigure(config: pytest.Config) -> None:
    for directory in _SESSION_CACHE:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    assert (CORPUS_DIR / "train.txt").is_file(), f"the test corpus is missing at {CORPUS_DIR}"
    return CORPUS_DIR


@pytest.fixture(scope="session")
def corpus(corpus_dir):
    return load_corpus(str(corpus_dir))


@pytest.fixture(scope="session")
def char_tokenizer(corpus) -> CharTokenizer:
    return CharTokenizer.train(corpus.train.text, min_count=3)


@pytest.fixture(scope="session")
def subword_tokenizer(corpus) -> SubwordTokenizer:
    return SubwordTokenizer.train(corpus.train.text, vocab_size=800)


def make_model(cell: str = "lstm", vocab_size: int = 50, seed: int = 0, **overrides) -> RNNLanguageModel:
    """A seeded tiny model without dropout."""
    torch.manual_seed(seed)
    settings = dict(cell=cell, vocab_size=vocab_size, embed_dim=8, hidden_dim=12, num_layers=2, dropout=0.0,
                    input_dropout=0.0, weight_dropout=0.0, tie_weights=False)
    settings.update(overrides)
    return RNNLanguageModel(ModelConfig(**settings))


@pytest.fixture
def tiny_model() -> RNNLanguageModel:
    return make_model()


def train_tiny(out: Path, corpus, **overrides):
    """Train a tiny model for a few seconds on the real corpus; returns the RunResult."""
    # Tuning the text cache reads the valid split 12 more times: only the runs that need settings do it.
    settings = {"max_steps": 600, "max_minutes": None, "eval_interval": 300, "eval_max_chars": 20_000, "tune_text_cache": False}
    settings.update(overrides)
    tokenizer_config, model_config, train_config = apply_preset("tiny", settings)
    seed_everything(train_config.seed)
    return train_run(tokenizer_config, model_config, train_config, out, corpus=corpus, accuracy=checkpoint_accuracy)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, corpus):
    """A char LSTM trained for 600 steps, its text cache tuned; its run directory holds best/, last/ and metrics.jsonl."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "tiny-char", corpus, tune_text_cache=True)


@pytest.fixture(scope="session")
def tiny_subword_run(tmp_path_factory, corpus):
    """A subword LSTM trained for 600 steps."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "tiny-subword", corpus, tokenizer="subword", vocab_size=600,
                      embed_dim=48, hidden_dim=96)





@pytest.fixture(scope="session")
def app(tiny_run, tiny_subword_run):
    """The Flask app serving the two tiny models ("char" is the default)."""
    from server import create_app

    return create_app({"TESTING": True, "REACH_MODELS": {"char": str(tiny_run.out), "subword": str(tiny_subword_run.out / "best")}})


@pytest.fixture
def client(app):
    return app.test_client()
