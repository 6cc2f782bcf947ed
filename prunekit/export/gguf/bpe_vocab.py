"""A Hugging Face byte-level BPE tokenizer as llama.cpp's ``gpt2`` tokenizer.

llama.cpp re-implements the tokenizer from the token list, their types, the BPE merges and
``tokenizer.ggml.pre``, which names the pre-tokenizer regex. The pre name is read off the
tokenizer's own pre-tokenizer (its split regex), never guessed from the model name; an unknown
one is refused rather than tokenized differently.
"""

from __future__ import annotations

from typing import Any

from gguf import TokenType

from prunekit.errors import ExportError
from prunekit.export.gguf.vocab import (
    GgufVocab,
    added_token,
    adds_bos_eos,
    chat_template,
    id_to_token,
    padded_tokens,
    special_ids,
)

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
            types.append(added_token(added[token_id].content, added[token_id].special)[1])
        else:
            types.append(TokenType.NORMAL)
    return [int(t) for t in types]


def _merges(model: dict) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def bpe_vocab(tokenizer: Any, tokenizer_json: dict, rows: int) -> GgufVocab:
    """An HF byte-level BPE tokenizer (``tokenizer_json``: its tokenizer.json) for llama.cpp."""
    vocab = id_to_token(tokenizer, rows)
    add_bos, add_eos = adds_bos_eos(tokenizer)
    return GgufVocab(
        model="gpt2",
        pre=pre_name(tokenizer_json),
        tokens=padded_tokens(vocab, rows),
        types=_token_types(tokenizer, max(vocab) + 1, rows),
        special_ids=special_ids(tokenizer),
        add_bos=add_bos,
        add_eos=add_eos,
        merges=_merges(tokenizer_json["model"]),
        chat_template=chat_template(tokenizer),
    )
