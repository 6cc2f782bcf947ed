"""A SentencePiece BPE tokenizer (Llama 2, Mistral v0.x, Gemma) as llama.cpp's ``llama`` one.

llama.cpp's SentencePiece tokenizer turns spaces into "▁" (after a "▁" prefix if
``add_space_prefix``), starts from single characters and repeatedly merges the adjacent pair
whose concatenation is the token with the highest *score* (leftmost first on ties); what is left
that is not a token is written as its ``<0xNN>`` byte tokens. That is SentencePiece's own BPE, so
the scores of a ``tokenizer.model`` are written as they are. A Hugging Face fast tokenizer has
merge ranks instead: token ``t`` gets the score ``-rank`` of the first merge that makes it, which
gives the same merges in the same order provided every way llama.cpp could make ``t`` is one of
its merges, and they are ranked together: checked, and refused otherwise.

Token types: ``<0xNN>`` byte tokens BYTE, the unknown token UNKNOWN, special added tokens CONTROL,
other added tokens and the model's user-defined pieces USER_DEFINED, rows past the tokenizer
UNUSED. llama.cpp matches user-defined tokens in the raw text, so each is written as the raw text
the tokenizer matches (``vocab.added_token``): as is where HF matches it in the raw text (added
tokens of both HF tokenizers, unless normalized by a normalizer that turns spaces into "▁"), its
"▁" as spaces where it is matched after that replacement (SentencePiece's own user-defined pieces).

Refused, one line each: Unigram models (llama.cpp's ``llama`` tokenizer does not run Viterbi),
no byte fallback, normalizers other than the "▁" replacement and prefix (NFKC, precompiled
charsmaps, SentencePiece's ``remove_extra_whitespaces``), pre-tokenizers that split text before
the merges.
"""

from __future__ import annotations

import re
from pathlib import Path
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

SPACE = "▁"
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# Tokens no merge makes (single characters, bytes, special and added tokens): below every merge,
# so llama.cpp never prefers forming one of them from text over a merge HF would make.
NO_MERGE_SCORE = -1e9


def _normalizer(normalizer: dict | None) -> tuple[bool, bool]:
    """Whether the normalizer prepends "▁", and whether it turns spaces into "▁"; refuses any
    step llama.cpp would not do."""
    steps = [] if normalizer is None else normalizer.get("normalizers", [normalizer])
    prefix = metaspace = False
    for step in steps:
        kind = step.get("type")
        if kind == "Prepend" and step.get("prepend") == SPACE:
            prefix = True
        elif (
            kind == "Replace"
            and step.get("pattern", {}).get("String") == " "
            and step.get("content") == SPACE
        ):
            metaspace = True
        else:
            raise ExportError(
                f"GGUF export: SentencePiece normalizer step {kind} is not applied by llama.cpp"
            )
    return prefix, metaspace


def _pre_tokenizer_prefix(pre: dict | None) -> bool:
    """Whether the pre-tokenizer prepends "▁"; refuses one that splits the text first."""
    if pre is None:
        return False
    kind = pre.get("type")
    if kind == "Metaspace" and pre.get("replacement") == SPACE and not pre.get("split", True):
        scheme = pre.get("prepend_scheme") or ("always" if pre.get("add_prefix_space") else "never")
        return scheme != "never"
    if kind == "Split" and pre.get("pattern", {}).get("String") == " ":
        return False  # splits on spaces the normalizer has already replaced: a no-op (Gemma)
    raise ExportError(
        f"GGUF export: SentencePiece pre-tokenizer {kind} splits text before the merges, "
        "llama.cpp does not"
    )


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def merge_scores(merges: list[tuple[str, str]], normal: set[str]) -> dict[str, float]:
    """Score per merged token: ``-rank`` of its first merge (module docstring); refuses merges
    llama.cpp cannot reproduce."""
    ranks: dict[str, list[int]] = {}
    for rank, (left, right) in enumerate(merges):
        ranks.setdefault(left + right, []).append(rank)
    for token, found in ranks.items():
        if found[-1] - found[0] + 1 != len(found):
            raise ExportError(
                f"GGUF export: the merges making {token!r} are not ranked together; "
                "llama.cpp's SentencePiece tokenizer would merge in another order"
            )
    pairs = set(merges)
    for token in normal:
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in normal and right in normal and (left, right) not in pairs:
                raise ExportError(
                    f"GGUF export: no BPE merge {left!r} + {right!r} although both and "
                    f"{token!r} are tokens; llama.cpp's SentencePiece tokenizer would merge them"
                )
    return {token: -float(found[0]) for token, found in ranks.items()}


def _types_and_scores(
    tokenizer: Any, vocab: dict[int, str], scores: dict[str, float], rows: int, metaspace: bool
) -> tuple[list[str], list[int], list[float]]:
    tokens = padded_tokens(vocab, rows)
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    unk = tokenizer.unk_token_id
    types, values = [], []
    for token_id, token in enumerate(tokens):
        score = NO_MERGE_SCORE
        if token_id not in vocab:
            kind = TokenType.UNUSED
        elif token_id == unk:
            kind = TokenType.UNKNOWN
        elif token_id in added:
            entry = added[token_id]
            tokens[token_id], kind = added_token(
                entry.content, entry.special, metaspace and entry.normalized
            )
        elif BYTE_TOKEN.fullmatch(token):
            kind = TokenType.BYTE
        else:
            kind, score = TokenType.NORMAL, scores.get(token, score)
        types.append(int(kind))
        values.append(score)
    return tokens, types, values


def spm_vocab(tokenizer: Any, tokenizer_json: dict, rows: int) -> GgufVocab:
    """An HF fast tokenizer with a SentencePiece-style BPE model (byte fallback, "▁" for spaces)."""
    model = tokenizer_json["model"]
    if model["type"] == "Unigram":
        raise ExportError(
            "GGUF export: SentencePiece Unigram tokenizers are not supported (llama.cpp's "
            "'llama' tokenizer merges by score and would split text differently)"
        )
    if not model.get("byte_fallback"):
        raise ExportError(
            "GGUF export: a SentencePiece BPE tokenizer without byte fallback is not supported "
            "(llama.cpp writes unknown characters as <0xNN> byte tokens)"
        )
    prefix, metaspace = _normalizer(tokenizer_json.get("normalizer"))
    prefix = _pre_tokenizer_prefix(tokenizer_json.get("pre_tokenizer")) or prefix
    vocab = id_to_token(tokenizer, rows)
    added = tokenizer.added_tokens_decoder
    normal = {t for i, t in vocab.items() if i not in added and not BYTE_TOKEN.fullmatch(t)}
    scores = merge_scores(_merge_pairs(model), normal)
    tokens, types, values = _types_and_scores(tokenizer, vocab, scores, rows, metaspace)
    return _vocab(tokenizer, tokens, types, values, prefix, {"scores": "merge ranks"})


def _vocab(tokenizer, tokens, types, scores, prefix, facts) -> GgufVocab:
    add_bos, add_eos = adds_bos_eos(tokenizer)
    return GgufVocab(
        model="llama",
        pre="default",
        tokens=tokens,
        types=types,
        scores=scores,
        special_ids=special_ids(tokenizer),
        add_bos=add_bos,
        add_eos=add_eos,
        add_space_prefix=prefix,
        chat_template=chat_template(tokenizer),
        facts={"add_space_prefix": prefix, **facts},
    )


def sentencepiece_vocab(tokenizer: Any, rows: int) -> GgufVocab:
    """A slow HF tokenizer backed by a ``sentencepiece`` model (``tokenizer.sp_model``): the
    model's own pieces, scores and piece types, plus the tokens added on top of it."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as error:
        raise ExportError(
            "GGUF export: reading a SentencePiece model needs sentencepiece and protobuf: "
            "pip install sentencepiece protobuf"
        ) from error

    source = getattr(tokenizer, "vocab_file", None)
    if source and Path(source).is_file():  # the file as written: HF may edit the loaded copy
        proto = sentencepiece_model_pb2.ModelProto.FromString(Path(source).read_bytes())
    else:
        proto = sentencepiece_model_pb2.ModelProto.FromString(
            tokenizer.sp_model.serialized_model_proto()
        )
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type != trainer.BPE:
        raise ExportError(
            "GGUF export: only SentencePiece BPE models are supported, this one is "
            f"{trainer.ModelType.Name(trainer.model_type)}"
        )
    if not trainer.byte_fallback:
        raise ExportError("GGUF export: a SentencePiece model without byte fallback")
    if normalizer.precompiled_charsmap or normalizer.name not in ("identity", ""):
        raise ExportError(
            f"GGUF export: SentencePiece normalization {normalizer.name!r} is not applied by "
            "llama.cpp"
        )
    if normalizer.remove_extra_whitespaces:
        raise ExportError(
            "GGUF export: SentencePiece's remove_extra_whitespaces (runs of spaces collapsed, "
            "ends stripped) is not applied by llama.cpp"
        )
    tokens, types, scores = [], [], []
    for piece in proto.pieces:
        text, kind = piece.piece, int(piece.type)  # the same numbering as gguf.TokenType
        if piece.type == piece.USER_DEFINED:  # SentencePiece matches it after spaces became "▁"
            text, kind = added_token(piece.piece, special=False, metaspace=True)
        tokens.append(text)
        types.append(kind)
        scores.append(float(piece.score))
    id_to_token(tokenizer, rows)  # refuses more tokens than rows
    for token_id in range(len(proto.pieces), rows):
        added = tokenizer.added_tokens_decoder.get(token_id)
        text, kind = (
            (f"[PAD{token_id}]", int(TokenType.UNUSED))
            if added is None
            else added_token(added.content, added.special)  # matched in the raw text
        )
        tokens.append(text)
        types.append(kind)
        scores.append(NO_MERGE_SCORE)
    prefix = normalizer.add_dummy_prefix
    return _vocab(tokenizer, tokens, types, scores, prefix, {"scores": "sentencepiece model"})
