"""Tokenizer metadata: the source GGUF's own, or built from a Hugging Face BPE tokenizer.

llama.cpp re-implements the tokenizer from ``tokenizer.ggml.*``: the token list, their types,
the BPE merges and ``tokenizer.ggml.pre``, which names the pre-tokenizer regex. The pre name is
read off the tokenizer's own pre-tokenizer (its split regex), never guessed from the model name;
an unknown one is refused rather than tokenized differently. The token list is padded to the
embedding's rows with unused ``[PAD{i}]`` entries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
from gguf import GGUFValueType, TokenType

from prunekit.errors import ExportError

_GPT2_SPLIT = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
_LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace("\\p{N}{1,3}", "\\p{N}")


def _split_patterns(pre: dict | None) -> list[str] | None:
    """The pre-tokenizer as a list of split steps ('bytelevel', 'digits', or a regex)."""
    if pre is None:
        return None
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    out = []
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel":
            if step.get("use_regex", True):
                out.append(_GPT2_SPLIT)
        elif kind == "Digits" and step.get("individual_digits"):
            out.append("digits")
        elif kind == "Split":
            pattern = step.get("pattern", {})
            out.append(pattern.get("Regex") or pattern.get("String"))
        else:
            out.append(f"<{kind}>")
    return out


# Split steps -> llama.cpp's name for the same pre-tokenizer.
_PRE_NAMES = {
    (_GPT2_SPLIT,): "gpt-2",
    ("digits", _GPT2_SPLIT): "smollm",
    (_LLAMA3_SPLIT,): "llama-bpe",
    (_QWEN2_SPLIT,): "qwen2",
}


def pre_name(tokenizer_json: dict) -> str:
    steps = _split_patterns(tokenizer_json.get("pre_tokenizer"))
    name = _PRE_NAMES.get(tuple(steps or ()))
    if name is None:
        raise ExportError(
            f"GGUF export: unrecognised BPE pre-tokenizer {steps}; llama.cpp would split text "
            "differently"
        )
    return name


def _token_types(tokenizer: Any, count: int, rows: int) -> list[int]:
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    types = []
    for token_id in range(rows):
        if token_id >= count:
            types.append(TokenType.UNUSED)
        elif token_id in added:
            types.append(TokenType.CONTROL if added[token_id].special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
    return [int(t) for t in types]


def _merges(model: dict) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def bpe_metadata(
    writer: gguf.GGUFWriter, tokenizer: Any, rows: int, bos_required: bool = False
) -> dict:
    """Write an HF byte-level BPE tokenizer's metadata; returns what the report records.

    ``bos_required``: the family needs BOS at the start of every sequence (Gemma; prunekit
    prepends it per window), so llama.cpp is told to add it whatever the tokenizer does.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(
        tokenizer, "_tokenizer", None
    )
    if backend is None:
        raise ExportError("GGUF export needs a fast (tokenizers) tokenizer")
    data = json.loads(backend.to_str())
    if data["model"]["type"] != "BPE":
        raise ExportError(
            f"GGUF export writes BPE tokenizers; this one is {data['model']['type']} "
            "(SentencePiece models are not supported yet)"
        )
    vocab = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    count = max(vocab) + 1
    if count > rows:
        raise ExportError(f"the tokenizer has {count} tokens but the embedding only {rows} rows")
    tokens = [vocab.get(i, f"[PAD{i}]") for i in range(rows)]
    pre = pre_name(data)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(_token_types(tokenizer, count, rows))
    writer.add_token_merges(_merges(data["model"]))
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    if bos_required and tokenizer.bos_token_id is None:
        raise ExportError(
            "the model needs a BOS token before every sequence; the tokenizer has none"
        )
    add_bos = bos_required or _adds_bos(tokenizer)
    writer.add_add_bos_token(add_bos)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
    return {
        "source": "huggingface",
        "model": "gpt2",
        "pre": pre,
        "tokens": rows,
        "add_bos": add_bos,
    }


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
