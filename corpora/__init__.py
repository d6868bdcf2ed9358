"""Corpora for Reach: loading through Hugging Face `datasets`, and text normalisation.

The only package that imports `datasets` (lazily, inside the loaders), and
one that never imports torch.
"""

from corpora.loading import DEFAULT_CORPUS, Corpus, CorpusError, Split, StreamedSplit, default_corpus_source, hash_file, load_corpus
from corpora.normalize import normalize, normalize_line

__all__ = ["DEFAULT_CORPUS", "Corpus", "CorpusError", "Split", "StreamedSplit", "default_corpus_source", "hash_file", "load_corpus", "normalize", "normalize_line"]
