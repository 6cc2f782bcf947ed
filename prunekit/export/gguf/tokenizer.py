"""Tokenizer metadata: the source GGUF's own, or built from the Hugging Face tokenizer.

llama.cpp re-implements the tokenizer from ``tokenizer.ggml.*``. ``hf_vocab`` reads an HF
tokenizer into that data (``GgufVocab``), whatever the model family: byte-level BPE becomes
llama.cpp's ``gpt2`` tokenizer (``bpe_vocab``), SentencePiece BPE its ``llama`` one
(``spm_vocab``). What llama.cpp would tokenize differently is refused, one line each.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import gguf
from gguf import GGUFValueType

from prunekit.errors import ExportError
from prunekit.export.gguf.bpe_vocab import bpe_vocab
from prunekit.export.gguf.spm_vocab import SPACE, sentencepiece_vocab, spm_vocab
from prunekit.export.gguf.vocab import GgufVocab


def _is_sentencepiece_style(tokenizer_json: dict) -> bool:
    """SentencePiece-style: spaces become "▁" or unknown text falls back to bytes, where a
    byte-level BPE maps every byte to a printable character instead."""
    steps = [tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")]
    text = json.dumps(steps, ensure_ascii=False)
    model = tokenizer_json["model"]
    return model["type"] == "Unigram" or bool(model.get("byte_fallback")) or SPACE in text


def hf_vocab(tokenizer: Any, rows: int) -> GgufVocab:
    """The GGUF tokenizer data of an HF tokenizer, its token list padded to ``rows``."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(
        tokenizer, "_tokenizer", None
    )
    if backend is None:
        if getattr(tokenizer, "sp_model", None) is not None:
            return sentencepiece_vocab(tokenizer, rows)
        raise ExportError(
            "GGUF export needs a fast (tokenizers) or a SentencePiece-backed tokenizer, "
            f"not {type(tokenizer).__name__}"
        )
    data = json.loads(backend.to_str())
    if _is_sentencepiece_style(data):
        return spm_vocab(tokenizer, data, rows)
    if data["model"]["type"] != "BPE":
        raise ExportError(
            f"GGUF export writes BPE and SentencePiece tokenizers; this one is "
            f"{data['model']['type']}"
        )
    return bpe_vocab(tokenizer, data, rows)


def write_hf_tokenizer(
    writer: gguf.GGUFWriter, tokenizer: Any, rows: int, bos_required: bool = False
) -> dict:
    """Write the HF tokenizer's metadata; returns what the report records.

    ``bos_required``: the family needs BOS at the start of every sequence (Gemma; prunekit
    prepends it per window), so llama.cpp is told to add it whatever the tokenizer does.
    """
    vocab = hf_vocab(tokenizer, rows)
    if bos_required:
        if tokenizer.bos_token_id is None:
            raise ExportError(
                "the model needs a BOS token before every sequence; the tokenizer has none"
            )
        vocab = dataclasses.replace(vocab, add_bos=True)
    vocab.write(writer)
    return vocab.report()


def copy_gguf_tokenizer(writer: gguf.GGUFWriter, source: Path, rows: int) -> dict:
    """Copy every ``tokenizer.*`` key of the GGUF the model was loaded from, unchanged."""
    reader = gguf.GGUFReader(source)
    copied = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type)
        copied += 1
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    count = len(tokens.data) if tokens is not None else 0
    if count != rows:
        raise ExportError(
            f"{source.name} lists {count} tokens but the embedding has {rows} rows; "
            "cannot keep its tokenizer"
        )
    return {"source": f"gguf:{source.name}", "keys": copied, "tokens": rows}
