"""The tokenizer as llama.cpp reads it (``tokenizer.ggml.*``), as plain data.

``bpe_vocab`` (byte-level BPE, ``gpt2``) and ``spm_vocab`` (SentencePiece, ``llama``) build a
``GgufVocab`` from a Hugging Face tokenizer; ``GgufVocab.write`` puts it in a GGUF file. The
helpers here read what both kinds share off the HF tokenizer: special token ids, whether BOS/EOS
are added, the chat template, the token list padded to the embedding's rows, and how an added
token is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gguf
from gguf import TokenType

from prunekit.errors import ExportError

SPECIALS = ("bos", "eos", "unk", "pad")


@dataclass
class GgufVocab:
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]  # gguf.TokenType per token
    special_ids: dict[str, int]  # bos/eos/unk/pad -> id, those the tokenizer has
    add_bos: bool
    add_eos: bool
    scores: list[float] | None = None  # SentencePiece: merge priority, higher merges first
    merges: list[str] | None = None  # byte-level BPE: "left right", by rank
    add_space_prefix: bool | None = None  # SentencePiece: "▁" before the text
    chat_template: str | None = None
    facts: dict = field(default_factory=dict)  # what the report adds about the source

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        adders = {
            "bos": writer.add_bos_token_id,
            "eos": writer.add_eos_token_id,
            "unk": writer.add_unk_token_id,
            "pad": writer.add_pad_token_id,
        }
        for name, token_id in self.special_ids.items():
            adders[name](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)

    def report(self) -> dict:
        return {
            "source": "huggingface",
            "model": self.model,
            "pre": self.pre,
            "tokens": len(self.tokens),
            **self.facts,
        }


def special_ids(tokenizer: Any) -> dict[str, int]:
    ids = {name: getattr(tokenizer, f"{name}_token_id", None) for name in SPECIALS}
    return {name: token_id for name, token_id in ids.items() if token_id is not None}


def adds_bos_eos(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding with special tokens puts BOS first / EOS last (what llama.cpp adds)."""
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and ids[:1] == [bos]
    add_eos = eos is not None and len(ids) > 1 and ids[-1:] == [eos]
    return add_bos, add_eos


def chat_template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else None


def id_to_token(tokenizer: Any, rows: int) -> dict[int, str]:
    """The tokenizer's tokens by id; refuses more tokens than embedding rows."""
    vocab = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    count = max(vocab) + 1
    if count > rows:
        raise ExportError(f"the tokenizer has {count} tokens but the embedding only {rows} rows")
    return vocab


def padded_tokens(vocab: dict[int, str], rows: int) -> list[str]:
    """One token per embedding row; rows the tokenizer never produces are ``[PAD{i}]``."""
    return [vocab.get(i, f"[PAD{i}]") for i in range(rows)]


def added_token(content: str, special: bool, metaspace: bool = False) -> tuple[str, int]:
    """An added token as llama.cpp's (text, type). Special: CONTROL, matched in text only when
    parsing special tokens (as HF does by default). Others: USER_DEFINED, which llama.cpp always
    matches in the raw text, so written as the raw text the tokenizer matches: as is, or, where
    the tokenizer matches it after spaces became "▁" (``metaspace``), with its "▁" as spaces."""
    if special:
        return content, int(TokenType.CONTROL)
    return (content.replace("▁", " ") if metaspace else content), int(TokenType.USER_DEFINED)
