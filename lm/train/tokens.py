"""The token cache: a training split tokenized once into a memory-mapped file that later runs reuse.

A run needs the training split as one stream of unit ids. Encoding it costs
minutes on a large corpus and, held as a Python list, about 30 bytes per
character; here it is done once, in worker processes, straight into a file
of `uint16` ids (`uint32` when the vocabulary has more than 65,536 units),
and read back as a memory map: the operating system pages in what the
windows touch, and every later run with the same corpus and tokenizer starts
at once.

Where: `--token-cache DIR`, else `$REACH_TOKEN_CACHE`, else
`~/.cache/reach/tokens` (beside the Hugging Face caches: the same corpus
serves many runs, so the cache belongs to the user, not to one run).

Key: a hash of the cache format, the split's fingerprint
(`StreamedSplit.fingerprint`: every byte of its files and the normalisation
code) and the tokenizer's identity (the hash of the files `Tokenizer.save`
writes). A different corpus or tokenizer gets another file; nothing is
overwritten. A run computes the fingerprint once, for this key and the
tokenizer's. The files' content hashes (and the ids' checksum) are
remembered under `stamps/` with each file's identity (device, inode, size,
mtime, ctime) and read again only when that changes (`file_digest` says
what this assumes), so a cached start does not read the corpus.

Files: `<key>.ids` (the raw ids) and `<key>.json` (key, dtype, length, size,
blake2b checksum of the ids), `stamps/` (remembered digests). Both are written to temporary names and
renamed, the sidecar last, so a crash leaves no sidecar. A file whose sidecar
is missing, unreadable, for another key, or whose size or checksum differs
is rebuilt, never used.

The tokenizer itself is cached beside them (`tokenizers/<key>/`), keyed by
the split's fingerprint and the tokenizer settings: training SentencePiece
takes longer than the "within seconds" a cached run promises.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy

from corpora import Corpus, StreamedSplit, Split, hash_file, load_corpus
from corpora.loading import normalize_lines
from lm.config import TokenizerConfig
from lm.tokenizers import Tokenizer, TokenizerError, build_tokenizer, load_tokenizer

__all__ = ["TokenIds", "token_cache_directory", "cached_tokenizer", "corpus_fingerprint", "file_digest", "load_streamed_corpus", "token_ids", "tokenizer_identity", "unit_dtype",
           "TOKEN_CACHE_ENVIRONMENT", "DEFAULT_TOKEN_CACHE"]

log = logging.getLogger(__name__)

TOKEN_CACHE_ENVIRONMENT = "REACH_TOKEN_CACHE"
DEFAULT_TOKEN_CACHE = Path("~/.cache/reach/tokens")
FORMAT = 1
# The tokenizer's training sample is seeded by this, not by the run's seed: runs that differ only in their seed
# share one tokenizer and one token cache.
SAMPLE_SEED = 0
# A file's digest is remembered only when the file was last changed this long before it was hashed (see file_digest):
# longer than any local file system's timestamp granularity.
STAMP_MARGIN_NS = 1_000_000_000

SplitLike = Split | StreamedSplit


def token_cache_directory(configured: str | None = None) -> Path:
    """The token cache directory: `configured`, else $REACH_TOKEN_CACHE, else ~/.cache/reach/tokens."""
    chosen = configured or os.environ.get(TOKEN_CACHE_ENVIRONMENT) or str(DEFAULT_TOKEN_CACHE)
    return Path(chosen).expanduser()


def unit_dtype(vocab_size: int) -> numpy.dtype:
    """The narrowest unsigned integer type holding every unit id."""
    return numpy.dtype(numpy.uint16 if vocab_size <= 1 << 16 else numpy.uint32)


def tokenizer_identity(tokenizer: Tokenizer) -> str:
    """A hash of the tokenizer's saved files: two tokenizers with the same identity encode alike."""
    digest = hashlib.blake2b(digest_size=16)
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save(Path(directory))
        for path in sorted(Path(directory).iterdir()):
            digest.update(path.name.encode() + b"\x00" + path.read_bytes() + b"\x00")
    return digest.hexdigest()


def _hash(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def load_streamed_corpus(spec: str, extra_train: Iterable[str] = (), token_cache: str | None = None) -> Corpus:
    """The corpus `spec` with its training split streamed from disk, never held: a local corpus's files, or a hub
    corpus written once, normalised, under the token cache's `corpora/` (corpora.load_corpus's `stream_to`)."""
    return load_corpus(spec, extra_train, stream_train=True, stream_to=token_cache_directory(token_cache) / "corpora")


def corpus_fingerprint(split: SplitLike, directory: Path) -> str:
    """`split.fingerprint()`, with its files' digests remembered in the cache `directory` (`file_digest`)."""
    return split.fingerprint(lambda path: file_digest(path, directory))


def cached_tokenizer(split: SplitLike, config: TokenizerConfig, directory: Path, fingerprint: str | None = None) -> Tokenizer:
    """The tokenizer `config` trains on `split`'s bounded sample: from the cache, or trained and saved there.

    `fingerprint` is `split.fingerprint()` when the caller has it already (a run hashes its corpus once for both
    this key and the ids' key); it is never remembered on the split, whose files may change between calls.
    """
    key = _hash(FORMAT, fingerprint or split.fingerprint(), asdict(config), SAMPLE_SEED)
    place = directory / "tokenizers" / key
    if place.is_dir():
        try:
            return load_tokenizer(place)
        except TokenizerError as error:
            log.warning("cached tokenizer %s is damaged (%s): training it again", place, error)
            shutil.rmtree(place, ignore_errors=True)
    sample = split.sample(config.tokenizer_sample_chars, SAMPLE_SEED)
    log.info("building the %s tokenizer on %s training characters", config.tokenizer, f"{len(sample):,}")
    tokenizer = build_tokenizer(config.tokenizer, sample, config.vocab_size, config.subword_type, config.char_min_count)
    del sample
    place.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=place.parent, prefix=f".{key}-"))
    tokenizer.save(temporary)
    try:
        os.replace(temporary, place)
    except OSError:  # another process saved the same tokenizer first
        shutil.rmtree(temporary, ignore_errors=True)
    return tokenizer


@dataclass(frozen=True)
class TokenIds:
    """A training split's unit ids, memory-mapped from the cache."""

    ids: numpy.ndarray  # (N,) uint16 or uint32, a copy-on-write memory map of `path`
    path: Path
    chars: int  # characters of normalised text encoded
    reused: bool  # True: found in the cache, nothing encoded this time
    seconds: float  # encoding time when built, checking time when reused


# Set in each worker process before it encodes (inherited through fork).
_worker: dict[str, Any] = {}


def _start_worker(tokenizer: Tokenizer, dtype: numpy.dtype) -> None:
    _worker.update(tokenizer=tokenizer, dtype=dtype)


def _encode_chunk(lines: list[str], normalised: bool) -> tuple[bytes, int]:
    """(the ids of a chunk of lines as raw bytes, its characters); raw lines are normalised first."""
    text = "".join(line + "\n" for line in lines) if normalised else normalize_lines(lines)[0]
    # A chunk ends with a line break and tokenizers encode line by line, so the chunks' ids joined are the ids of the
    # whole text joined.
    ids = numpy.asarray(_worker["tokenizer"].encode(text), dtype=_worker["dtype"])
    return ids.tobytes(), len(text)


def _read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _identity(status: os.stat_result) -> list[int]:
    return [status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns]


def file_digest(path: Path, directory: Path) -> str:
    """`hash_file(path)`, remembered in `directory`/stamps with the file's identity (device, inode, size, mtime
    and ctime) and read back while that identity is unchanged, so a cached start does not read a large corpus.

    What this assumes: every change to a file's bytes changes its ctime, which no user can set back (POSIX:
    write and truncate update it; `touch` and `os.utime` set mtime but make ctime now; a replaced file has
    another inode). A digest is only remembered for a file last changed at least STAMP_MARGIN_NS before its
    hashing began (as git treats "racily clean" files), so an edit in the same timestamp tick as the
    hashing, or during it, is never hidden by a remembered digest. A file system whose ctime does not follow
    writes, or a clock stepped back past a file's ctime, would defeat it.
    """
    path = Path(path).resolve()
    stamp = directory / "stamps" / f"{hashlib.blake2b(str(path).encode(), digest_size=16).hexdigest()}.json"
    before = _identity(path.stat())
    remembered = _read_sidecar(stamp)
    if remembered is not None and remembered.get("path") == str(path) and remembered.get("identity") == before:
        return remembered["digest"]
    begun = time.time_ns()
    digest = hash_file(path)
    if _identity(path.stat()) == before and begun - max(before[3], before[4]) > STAMP_MARGIN_NS:
        temporary = stamp.with_name(f".{stamp.name}.{os.getpid()}")
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps({"path": str(path), "identity": before, "digest": digest}), encoding="utf-8")
            os.replace(temporary, stamp)
        except OSError as error:  # remembering only saves time: the digest is right either way
            log.warning("could not remember the digest of %s in %s (%s)", path, stamp.parent, error)
    return digest


def _problem(ids_path: Path, sidecar: dict | None, key: str) -> str | None:
    """Why a cached file may not be used, or None when it is whole."""
    if sidecar is None:
        return "its metadata is missing or unreadable"
    if sidecar.get("format") != FORMAT or sidecar.get("key") != key:
        return "its metadata is for another corpus, tokenizer or format"
    if sidecar.get("dtype") not in ("uint16", "uint32") or not isinstance(sidecar.get("length"), int):
        return "its metadata is damaged"
    if not ids_path.is_file():
        return "its ids file is missing"
    expected = sidecar["length"] * numpy.dtype(sidecar["dtype"]).itemsize
    if ids_path.stat().st_size != expected:
        return f"its ids file holds {ids_path.stat().st_size:,} bytes, not {expected:,}"
    if file_digest(ids_path, ids_path.parent) != sidecar.get("checksum"):
        return "its ids file does not match its checksum"
    return None


def _open(ids_path: Path, sidecar: dict) -> numpy.ndarray:
    # Copy-on-write: the array is writable (torch.from_numpy warns about read-only arrays) yet the file never changes.
    return numpy.memmap(ids_path, dtype=numpy.dtype(sidecar["dtype"]), mode="c", shape=(sidecar["length"],))


def token_ids(split: SplitLike, tokenizer: Tokenizer, directory: Path, workers: int | None = None,
              progress: bool = True, fingerprint: str | None = None) -> TokenIds:
    """The split's unit ids from the cache in `directory`, encoded and stored there first when absent or damaged.

    `fingerprint`: `split.fingerprint()`, when the caller has computed it already (see `cached_tokenizer`).
    """
    begun = time.perf_counter()
    fingerprint = fingerprint or split.fingerprint()
    key = _hash(FORMAT, fingerprint, tokenizer_identity(tokenizer))
    ids_path, sidecar_path = directory / f"{key}.ids", directory / f"{key}.json"
    if ids_path.exists() or sidecar_path.exists():
        sidecar = _read_sidecar(sidecar_path)
        problem = _problem(ids_path, sidecar, key)
        if problem is None:
            seconds = time.perf_counter() - begun
            log.info("token cache: %s units from %s (checked in %.1f s)", f"{sidecar['length']:,}", ids_path, seconds)
            return TokenIds(_open(ids_path, sidecar), ids_path, sidecar["chars"], True, seconds)
        log.warning("token cache %s cannot be used (%s): encoding again", ids_path, problem)
        for path in (sidecar_path, ids_path):
            path.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = unit_dtype(tokenizer.vocab_size)
    length, chars = _encode_to(ids_path, split, tokenizer, dtype, workers or os.cpu_count() or 1, progress)
    seconds = time.perf_counter() - begun
    sidecar = {"format": FORMAT, "key": key, "dtype": dtype.name, "length": length, "bytes": length * dtype.itemsize,
               "checksum": hash_file(ids_path), "chars": chars, "corpus": fingerprint, "tokenizer": tokenizer.describe(),
               "encode_seconds": round(seconds, 3)}
    temporary = sidecar_path.with_name(f".{sidecar_path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(sidecar, indent=1), encoding="utf-8")
    os.replace(temporary, sidecar_path)  # last: the sidecar's presence says the ids are whole
    log.info("token cache: encoded %s characters into %s units in %.1f s (%s chars/s) -> %s", f"{chars:,}", f"{length:,}",
             seconds, f"{chars / max(seconds, 1e-9):,.0f}", ids_path)
    return TokenIds(_open(ids_path, sidecar), ids_path, chars, False, seconds)


def _encode_to(ids_path: Path, split: SplitLike, tokenizer: Tokenizer, dtype: numpy.dtype, workers: int,
               progress: bool) -> tuple[int, int]:
    """Encode the split into a temporary file, then rename it to `ids_path`; returns (units, characters)."""
    from tqdm import tqdm

    temporary = ids_path.with_name(f".{ids_path.name}.{os.getpid()}")
    total = split.size_bytes if isinstance(split, StreamedSplit) else len(split.text)
    written = chars = 0
    # fork: the workers inherit the tokenizer and import nothing (spawn would re-import torch in each).
    pool = multiprocessing.get_context("fork").Pool(workers, _start_worker, (tokenizer, dtype)) if workers > 1 else None
    if pool is None:
        _start_worker(tokenizer, dtype)
    try:
        with open(temporary, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="encoding",
                                               disable=None if progress else True, leave=False) as bar:  # None: only on a terminal
            pending: collections.deque = collections.deque()

            def drain_one() -> None:
                nonlocal written, chars
                data, count = pending.popleft().get()
                out.write(data)
                written += len(data)
                chars += count
                bar.update(count)

            for lines in split.line_chunks():
                if pool is None:
                    pending.append(_Done(_encode_chunk(lines, split.normalised)))
                else:
                    pending.append(pool.apply_async(_encode_chunk, (lines, split.normalised)))
                while len(pending) > 2 * workers:  # a few chunks in flight: memory stays bounded
                    drain_one()
            while pending:
                drain_one()
        os.replace(temporary, ids_path)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        temporary.unlink(missing_ok=True)
    return written // dtype.itemsize, chars


class _Done:
    """A result computed in this process, with the `get` of an `AsyncResult`."""

    def __init__(self, value: Any):
        self.value = value

    def get(self) -> Any:
        return self.value
