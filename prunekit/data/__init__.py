"""Text data: named corpora and token windows."""

from prunekit.data.corpora import CORPORA, check_dataset, corpus_source, known_corpora, load_corpus
from prunekit.data.windows import (
    calibration_windows,
    check_seqlen,
    corpus_tokens,
    eval_windows,
    held_out_windows,
    tokenize_text,
)

__all__ = [
    "CORPORA",
    "calibration_windows",
    "held_out_windows",
    "check_dataset",
    "check_seqlen",
    "corpus_source",
    "corpus_tokens",
    "eval_windows",
    "known_corpora",
    "load_corpus",
    "tokenize_text",
]
