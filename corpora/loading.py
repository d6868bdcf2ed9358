"""Load a corpus's train / valid / test text through Hugging Face `datasets`.

A corpus is named by one string (the `--corpus` flag):

- a local directory holding `train.txt`, `valid.txt` and `test.txt`
  (read with the `text` builder, one row per line);
- `wiki-subset`: the default. The directory in `$REACH_CORPUS` when that is
  set; else `../shared/corpora/wiki-subset` beside the project directory when
  it is there; otherwise rebuilt from the hub exactly as `../shared/corpora/`
  built it (the WikiText-2 raw *test* split, articles split 8/1/1 by index).
  Every command resolves it the same way (`default_corpus_source`);
- `wikitext-2-raw`, `wikitext-103-raw`: `Salesforce/wikitext` from the hub;
- `wikipedia:<lang>:<size>` (`wikipedia:en:20MB`): the first articles of
  `wikimedia/wikipedia`, streamed until `size` bytes of text are read and
  split by article index into train/valid/test.

Every split comes back normalised (see `normalize`) together with the number
of whitespace-separated words of the text *as published*: per-word perplexity
divides by that count, whatever the tokenizer.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from corpora.normalize import normalize_line

__all__ = ["Corpus", "CorpusError", "Split", "StreamedSplit", "article_rows", "default_corpus_source", "hash_file", "load_corpus",
           "normalize_lines", "split_articles", "split_name_for_article", "write_splits", "DEFAULT_CORPUS"]

log = logging.getLogger(__name__)

DEFAULT_CORPUS = "wiki-subset"
# Where this project's machines keep the default corpus: beside the project directory (corpora/ is one level down).
SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "corpora" / DEFAULT_CORPUS
SPLITS = ("train", "valid", "test")
_WIKITEXT_CONFIGS = {"wikitext-2-raw": "wikitext-2-raw-v1", "wikitext-103-raw": "wikitext-103-raw-v1"}
_WIKIPEDIA = re.compile(r"^wikipedia:([a-z\-]{2,12}):(\d+(?:\.\d+)?)\s*([KMG]?B)$", re.IGNORECASE)
_WIKIPEDIA_SNAPSHOT = "20231101"
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}
_LOCAL_HINT = "pass a local directory holding train.txt, valid.txt and test.txt, e.g. --corpus ../shared/corpora/wiki-subset"


class CorpusError(Exception):
    """A corpus that cannot be found or read; the message is one sentence for the user."""


# Lines are handed out in chunks of about this many characters: large enough that a worker's start-up per chunk is
# negligible, small enough that a few chunks in flight hold little memory.
CHUNK_CHARS = 4_000_000
_READ_BLOCK = 8 << 20
# A hub corpus streamed to disk: the layout's version (part of its directory's key) and its metadata file, written
# last (its presence says the splits are whole).
_STREAM_FORMAT = 1
_STREAM_META = "corpus.json"


def _normalizer_identity() -> str:
    """A hash of the normalisation code: a fingerprint of raw files must change when their normalised text would."""
    return hashlib.blake2b(Path(__file__).with_name("normalize.py").read_bytes(), digest_size=16).hexdigest()


def hash_file(path: Path) -> str:
    """The blake2b hash of every byte of a file (a few hundred MB per second)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as data:
        while block := data.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _sample_lines(lines: Iterable[str], total_chars: int, max_chars: int, seed: int, normalise=lambda line: line) -> str:
    """About `max_chars` characters of whole lines, each kept with the same seeded probability, in their order.

    `normalise` is applied to the kept lines only (empty results are dropped), so a raw sample costs a read of
    the text and the normalisation of the sample, not of the whole text.
    """
    keep = max_chars / max(total_chars, 1)
    rng = random.Random(seed)
    kept: list[str] = []
    size = 0
    for line in lines:
        if rng.random() < keep and (line := normalise(line)):
            kept.append(line + "\n")
            size += len(line) + 1
            if size >= max_chars:
                break
    return "".join(kept)


@dataclass(frozen=True)
class Split:
    """One split held in memory: normalised text (a newline ends every line) and its published word count."""

    text: str
    raw_words: int
    lines: int
    normalised = True  # line_chunks gives lines already normalised

    def line_chunks(self, chunk_chars: int = CHUNK_CHARS) -> Iterator[list[str]]:
        """The split's lines (without their newline) in lists of about `chunk_chars` characters."""
        start = 0
        while start < len(self.text):
            end = self.text.find("\n", min(start + chunk_chars, len(self.text)) - 1)
            end = len(self.text) if end < 0 else end + 1
            yield self.text[start:end].split("\n")[:-1]
            start = end

    def fingerprint(self, digest: Callable[[Path], str] | None = None) -> str:
        """A hash of the normalised text (`digest`, for files, has nothing to do here)."""
        digest = hashlib.blake2b(digest_size=16)
        for start in range(0, len(self.text), _READ_BLOCK):
            digest.update(self.text[start : start + _READ_BLOCK].encode("utf-8"))
        return f"text:{len(self.text)}:{digest.hexdigest()}"

    def sample(self, max_chars: int, seed: int) -> str:
        """The whole text when it has at most `max_chars` characters, else a seeded sample of whole lines."""
        if len(self.text) <= max_chars:
            return self.text
        return _sample_lines(self.text.split("\n")[:-1], len(self.text), max_chars, seed)


class StreamedSplit:
    """A split read from its files whenever it is needed, line by line: never held as one string.

    `line_chunks` gives the raw lines (`normalised` is False: whoever reads
    them normalises them with `normalize_lines`, in as many processes as it
    likes), or the lines of files written normalised (`normalised` True).
    `text`, `raw_words` and `lines` are there for callers that want the
    whole split at once (tests, `lm evaluate --split train`); reading them
    does hold it.
    """

    def __init__(self, files: Iterable[Path | str], normalised: bool = False, raw_words: int | None = None):
        """`normalised`: the files hold normalised lines already (a hub corpus streamed to disk), whose published
        word count, counted while they were written, is `raw_words`."""
        self.files = tuple(Path(name) for name in files)
        self.normalised = normalised
        self._raw_words = raw_words

    def __repr__(self) -> str:
        return f"StreamedSplit({[str(name) for name in self.files]})"

    def line_chunks(self, chunk_chars: int = CHUNK_CHARS) -> Iterator[list[str]]:
        """The raw lines (without their newline) of every file in turn, in lists of about `chunk_chars` characters."""
        chunk: list[str] = []
        size = 0
        for name in self.files:
            # Text mode splits raw lines exactly as the `datasets` text builder does (universal newlines, then "\n");
            # normalised files were written with "\n" alone.
            with open(name, encoding="utf-8", newline="\n" if self.normalised else None) as lines:
                for line in lines:
                    chunk.append(line.rstrip("\n"))
                    size += len(line)
                    if size >= chunk_chars:
                        yield chunk
                        chunk, size = [], 0
        if chunk:
            yield chunk

    @property
    def size_bytes(self) -> int:
        """The files' total size: an upper bound on the raw text's characters."""
        return sum(name.stat().st_size for name in self.files)

    def fingerprint(self, digest: Callable[[Path], str] | None = None) -> str:
        """A hash of the files' bytes (all of them: an edit anywhere changes it) and of the normalisation code.

        `digest(path)` gives a file's content hash (default `hash_file`, which reads it whole); the token cache
        passes one that remembers it while the file is unchanged (lm/train/tokens.py: `file_digest`).
        """
        digest = digest or hash_file
        parts = [_normalizer_identity(), "normalised" if self.normalised else "raw"]
        parts += [f"{name.stat().st_size}:{digest(name)}" for name in self.files]
        return f"files:{self.size_bytes}:{hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()}"

    def sample(self, max_chars: int, seed: int) -> str:
        """All the normalised text when the files hold at most `max_chars` bytes, else a seeded sample of whole lines."""
        normalise = (lambda line: line) if self.normalised else normalize_line
        if self.size_bytes <= max_chars:
            return "".join(line + "\n" for chunk in self.line_chunks() for line in map(normalise, chunk) if line)  # `text` would keep it held
        raw = (line for chunk in self.line_chunks() for line in chunk)
        return _sample_lines(raw, self.size_bytes, max_chars, seed, normalise)

    @functools.cached_property
    def _whole(self) -> Split:
        """The whole split, read and held (once)."""
        lines = (line for chunk in self.line_chunks() for line in chunk)
        if self.normalised:
            text = "".join(line + "\n" for line in lines)
            return Split(text=text, raw_words=self._raw_words or 0, lines=text.count("\n"))
        return _make_split(lines)

    @property
    def text(self) -> str:
        return self._whole.text

    @property
    def raw_words(self) -> int:
        return self._whole.raw_words

    @property
    def lines(self) -> int:
        return self._whole.lines


@dataclass(frozen=True)
class Corpus:
    """The three splits of a corpus and where they came from."""

    name: str
    source: str
    train: Split | StreamedSplit
    valid: Split
    test: Split
    extra_train: tuple[str, ...] = ()

    def split(self, name: str) -> Split:
        """Return the split called `train`, `valid` or `test`."""
        if name not in SPLITS:
            raise CorpusError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)


def split_name_for_article(index: int) -> str:
    """The split of the index-th article: 4 -> valid, 9 -> test (mod 10), the rest train."""
    return {4: "valid", 9: "test"}.get(index % 10, "train")


def normalize_lines(lines: Iterable[str]) -> tuple[str, int, int]:
    """Normalise raw lines: (the kept lines' text, a newline after each; published words; kept lines)."""
    raw_words = 0
    kept: list[str] = []
    for line in lines:
        raw_words += len(line.split())
        normal = normalize_line(line)
        if normal:
            kept.append(normal)
    return "".join(line + "\n" for line in kept), raw_words, len(kept)


def _make_split(lines: Iterable[str]) -> Split:
    text, raw_words, kept = normalize_lines(lines)
    return Split(text=text, raw_words=raw_words, lines=kept)


def _read_local(directory: Path, names: tuple[str, ...]) -> dict[str, list[str]]:
    """Read `<name>.txt` files of a directory through the `datasets` text builder."""
    from datasets import load_dataset  # imported here: it is slow to import

    files = {name: str(directory / f"{name}.txt") for name in names}
    dataset = load_dataset("text", data_files=files)
    return {name: list(dataset[name]["text"]) for name in names}


def _check_local(directory: Path, names: tuple[str, ...]) -> None:
    if not directory.is_dir():
        raise CorpusError(f"corpus directory {str(directory)!r} does not exist; {_LOCAL_HINT}")
    missing = [f"{name}.txt" for name in names if not (directory / f"{name}.txt").is_file()]
    if missing:
        raise CorpusError(f"corpus directory {str(directory)!r} has no {', '.join(missing)}; {_LOCAL_HINT}")


def _hub_failure(name: str, error: Exception) -> CorpusError:
    reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return CorpusError(
        f"could not load {name!r} from the Hugging Face hub ({type(error).__name__}: {reason}); "
        f"without network access to the hub, {_LOCAL_HINT}"
    )


def split_articles(lines: Iterable[str]) -> dict[str, list[str]]:
    """Split WikiText lines into train/valid/test by article index (an article starts at ' = Title = ')."""
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    index = -1
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("= ") and stripped.endswith(" =") and not stripped.startswith("= ="):
            index += 1
        if index < 0 or not stripped:
            continue
        out[split_name_for_article(index)].append(line)
    return out


def _load_wiki_subset_from_hub() -> dict[str, list[str]]:
    from datasets import load_dataset

    dataset = load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")
    return split_articles(dataset["text"])


def _wikitext_rows(config: str) -> Iterator[tuple[str, str]]:
    """(split, raw line) for every non-blank line of a WikiText configuration, streamed from the hub."""
    from datasets import load_dataset

    for name, hub_name in (("train", "train"), ("valid", "validation"), ("test", "test")):
        for row in load_dataset("Salesforce/wikitext", config, split=hub_name, streaming=True):
            if row["text"].strip():
                yield name, row["text"]


def article_rows(articles: Iterable[dict], size_bytes: int) -> Iterator[tuple[str, str]]:
    """(split, raw line) for the lines of each article ({"title", "text"}) in turn, until `size_bytes` bytes of lines
    are given; the split follows the article's index (`split_name_for_article`). One article is held at a time."""
    read = 0
    for index, article in enumerate(articles):
        name = split_name_for_article(index)
        for line in itertools.chain([f"= {article['title']} ="], article["text"].split("\n")):
            if line.strip():
                yield name, line
                read += len(line.encode("utf-8")) + 1
        if read >= size_bytes:
            break


def _wikipedia_rows(language: str, size_bytes: int) -> Iterator[tuple[str, str]]:
    from datasets import load_dataset

    stream = load_dataset("wikimedia/wikipedia", f"{_WIKIPEDIA_SNAPSHOT}.{language}", split="train", streaming=True)
    return article_rows(stream, size_bytes)


def _gather(rows: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Rows gathered into lines by split (held in memory: for callers that do not stream the training split)."""
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for name, line in rows:
        out[name].append(line)
    return out


def write_splits(rows: Iterable[tuple[str, str]], directory: Path) -> dict[str, dict[str, int]]:
    """Normalise (split, raw line) rows into `directory`/<split>.txt as they come; returns each split's published
    words and kept lines. Nothing but the current line is held: memory does not grow with the corpus."""
    counts = {name: {"raw_words": 0, "lines": 0} for name in SPLITS}
    with contextlib.ExitStack() as stack:
        files = {name: stack.enter_context(open(directory / f"{name}.txt", "w", encoding="utf-8", newline="\n"))
                 for name in SPLITS}
        for name, line in rows:
            counts[name]["raw_words"] += len(line.split())
            if normal := normalize_line(line):
                files[name].write(normal + "\n")
                counts[name]["lines"] += 1
    return counts


def _streamed_to_disk(source: str, rows: Callable[[], Iterable[tuple[str, str]]], directory: Path) -> Path:
    """The directory under `directory` holding `source`'s splits normalised: written from `rows` the first time
    (into a temporary directory renamed when whole), found there afterwards."""
    key = hashlib.blake2b(json.dumps([_STREAM_FORMAT, source, _normalizer_identity()]).encode(), digest_size=16).hexdigest()
    place = directory / key
    if (place / _STREAM_META).is_file():
        log.info("corpus %s: read from its copy in %s", source, place)
        return place
    directory.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=directory, prefix=f".{key}-"))
    try:
        log.info("corpus %s: streaming it to %s, normalised", source, place)
        counts = write_splits(rows(), temporary)
        (temporary / _STREAM_META).write_text(json.dumps({"source": source, "splits": counts}, indent=1), encoding="utf-8")
        shutil.rmtree(place, ignore_errors=True)  # a copy left without its metadata by a crash
        os.replace(temporary, place)
    except OSError:
        if not (place / _STREAM_META).is_file():
            raise
        log.info("corpus %s: another process wrote it first", source)  # its copy is the same text
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return place


def _read_streamed(place: Path) -> dict[str, Split | StreamedSplit]:
    """A directory `_streamed_to_disk` wrote: train as a StreamedSplit over its file, valid and test read whole."""
    counts = json.loads((place / _STREAM_META).read_text(encoding="utf-8"))["splits"]
    splits: dict[str, Split | StreamedSplit] = {
        name: StreamedSplit([place / f"{name}.txt"], normalised=True, raw_words=counts[name]["raw_words"]) for name in SPLITS}
    for name in ("valid", "test"):
        splits[name] = splits[name]._whole
    return splits


def _parse_wikipedia(spec: str) -> tuple[str, int]:
    match = _WIKIPEDIA.match(spec)
    if not match:
        raise CorpusError(f"corpus {spec!r} is not of the form wikipedia:<lang>:<size>, e.g. wikipedia:en:20MB")
    language, number, unit = match.group(1).lower(), float(match.group(2)), match.group(3).upper()
    size = int(number * _UNITS[unit])
    if size < 10_000:
        raise CorpusError(f"corpus {spec!r} asks for {size} bytes; ask for at least 10KB so every split gets an article")
    return language, size


def default_corpus_source() -> tuple[str, Path | None]:
    """Where `wiki-subset` comes from: ($REACH_CORPUS's directory | the shared copy beside the project | None for the hub)."""
    env = os.environ.get("REACH_CORPUS")
    if env:
        return f"local:{env} ($REACH_CORPUS)", Path(env)
    if (SHARED_DEFAULT / "train.txt").is_file():
        return f"local:{SHARED_DEFAULT} (beside the project)", SHARED_DEFAULT
    return "hub:Salesforce/wikitext/wikitext-2-raw-v1/test (re-split by article)", None


def _resolve(spec: str) -> tuple[str, dict[str, list[str]] | Path | Callable[[], Iterable[tuple[str, str]]]]:
    """Return (source description, lines by split, a local directory to read, or a function streaming a hub
    corpus's (split, raw line) rows)."""
    if spec == DEFAULT_CORPUS:
        source, directory = default_corpus_source()
        if directory is not None:
            return source, directory
        try:
            return source, _load_wiki_subset_from_hub()
        except Exception as error:  # datasets raises many kinds of network errors
            raise _hub_failure(spec, error) from error
    if spec in _WIKITEXT_CONFIGS:
        config = _WIKITEXT_CONFIGS[spec]
        return f"hub:Salesforce/wikitext/{config}", functools.partial(_wikitext_rows, config)
    if spec.lower().startswith("wikipedia:"):
        language, size = _parse_wikipedia(spec)
        return (f"hub:wikimedia/wikipedia/{_WIKIPEDIA_SNAPSHOT}.{language} (first {size} bytes)",
                functools.partial(_wikipedia_rows, language, size))
    path = Path(spec).expanduser()
    if path.exists() or os.sep in spec or spec.startswith("."):
        return f"local:{path}", path
    raise CorpusError(
        f"unknown corpus {spec!r}: give a local directory, {DEFAULT_CORPUS}, wikitext-2-raw, "
        "wikitext-103-raw or wikipedia:<lang>:<size>"
    )


def load_corpus(spec: str = DEFAULT_CORPUS, extra_train: Iterable[str] = (), stream_train: bool = False,
                stream_to: Path | None = None) -> Corpus:
    """Load the named corpus, with extra training text appended from `extra_train` directories.

    With `stream_train`, a local corpus's training split is a `StreamedSplit` over its files (and the extra
    directories' train.txt): nothing of it is read here. A hub corpus streamed from the hub (`wikitext-103-raw`,
    `wikipedia:<lang>:<size>`) is then written to disk under `stream_to`, normalised, line by line as it
    arrives (once: a later load finds it there), and its training split is streamed from that file. Without
    `stream_train` (or `stream_to`) every split is read whole into memory.
    """
    source, found = _resolve(spec)
    extras = tuple(str(Path(directory)) for directory in extra_train)
    if callable(found) and stream_train and stream_to is not None:
        try:
            place = _streamed_to_disk(source, found, Path(stream_to))
        except Exception as error:  # datasets raises many kinds of network errors
            raise _hub_failure(spec, error) from error
        splits = _read_streamed(place)
        for directory in extras:
            _check_local(Path(directory), ("train",))
        if extras:
            # Normalising normalised lines leaves them as they are, so the hub's file and the extra raw ones are
            # read as one raw split (tests/test_normalize.py checks that normalisation is idempotent).
            splits["train"] = StreamedSplit([place / "train.txt", *(Path(directory) / "train.txt" for directory in extras)])
        return _checked(Corpus(name=spec, source=source, extra_train=extras, **splits))
    if callable(found):
        try:
            found = _gather(found())
        except Exception as error:
            raise _hub_failure(spec, error) from error
    if stream_train and isinstance(found, Path):
        directories = (found, *(Path(directory) for directory in extras))
        for directory in directories:
            _check_local(directory, ("train",))
        _check_local(found, SPLITS)
        train = StreamedSplit(directory / "train.txt" for directory in directories)
        try:
            # Read as the `datasets` text builder reads them (the same lines), without its seconds of start-up.
            splits = {name: StreamedSplit([found / f"{name}.txt"])._whole for name in ("valid", "test")}
        except (OSError, UnicodeDecodeError) as error:
            raise CorpusError(f"could not read corpus directory {str(found)!r}: {error}") from error
        return _checked(Corpus(name=spec, source=source, extra_train=extras, train=train, **splits))
    if isinstance(found, Path):
        _check_local(found, SPLITS)
        try:
            lines = _read_local(found, SPLITS)
        except Exception as error:
            raise CorpusError(f"could not read corpus directory {str(found)!r}: {error}") from error
    else:
        lines = found
    train_lines = list(lines["train"])
    for directory in extras:
        _check_local(Path(directory), ("train",))
        try:
            train_lines.extend(_read_local(Path(directory), ("train",))["train"])
        except Exception as error:
            raise CorpusError(f"could not read extra training text in {directory!r}: {error}") from error
    splits = {"train": _make_split(train_lines), "valid": _make_split(lines["valid"]), "test": _make_split(lines["test"])}
    return _checked(Corpus(name=spec, source=source, extra_train=extras, **splits))


def _checked(corpus: Corpus) -> Corpus:
    """The corpus, once every split is known to hold text (a streamed training split: its files hold bytes)."""
    for name in SPLITS:
        split = corpus.split(name)
        if not (split.size_bytes if isinstance(split, StreamedSplit) else split.text):
            raise CorpusError(f"corpus {corpus.name!r} has an empty {name} split")
    log.info("corpus %s: %s", corpus.name, ", ".join(
        f"{name} {split.size_bytes:,} bytes streamed" if isinstance(split, StreamedSplit) else f"{name} {len(split.text):,} chars"
        for name, split in ((name, corpus.split(name)) for name in SPLITS)))
    return corpus
