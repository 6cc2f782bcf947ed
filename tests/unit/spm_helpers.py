"""A small SentencePiece BPE model trained like Llama 2's, and HF tokenizers made from it.

Llama 2's tokenizer.model settings: BPE, byte fallback, digits split, identity normalization
(no NFKC), whitespace kept as it is, a "▁" dummy prefix, <unk>/<s>/</s> at ids 0/1/2. Trained on
the first 300 kB of WikiText-2 with a character coverage below 1, so rare characters (CJK,
emoji, some accents) are left to byte fallback; small enough to train once per test session.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SPM_VOCAB = 800
TRAIN_CHARS = 300_000


LLAMA2_SETTINGS = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    allow_whitespace_only_pieces=True,
    character_coverage=0.9995,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
)


def train_spm(text: str, directory: Path, vocab_size: int = SPM_VOCAB, **changes) -> Path:
    """Train on ``text``; returns ``directory/tokenizer.model``. ``changes``: trainer settings
    added to or replacing Llama 2's (``user_defined_symbols``, ``byte_fallback``, ...)."""
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "spm"),
        vocab_size=vocab_size,
        num_threads=1,
        minloglevel=2,
        **{**LLAMA2_SETTINGS, **changes},
    )
    model = directory / "tokenizer.model"
    shutil.move(directory / "spm.model", model)
    return model


def fast_tokenizer(model_file: Path, **kwargs):
    """transformers' LlamaTokenizer (tokenizers-backed) converted from the .model file, as
    ``from_pretrained`` does for a Llama 2 checkpoint; BOS added, as Llama 2's config says."""
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(str(model_file.parent), add_bos_token=True, **kwargs)


def slow_tokenizer(model_file: Path):
    """The ``sentencepiece``-backed HF tokenizer of the same file (legacy behaviour)."""
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    return SentencePieceBackend(
        vocab_file=str(model_file), unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
