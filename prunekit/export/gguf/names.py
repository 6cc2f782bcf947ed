"""GGUF tensor names, taken from the ``gguf`` package's own table (the names llama.cpp loads)."""

from __future__ import annotations

import gguf

# prunekit's role of a tensor -> the gguf package's tensor kind.
_GLOBAL = {
    "embedding": gguf.MODEL_TENSOR.TOKEN_EMBD,
    "final_norm": gguf.MODEL_TENSOR.OUTPUT_NORM,
    "lm_head": gguf.MODEL_TENSOR.OUTPUT,
    "rope_freqs": gguf.MODEL_TENSOR.ROPE_FREQS,
}
_LAYER = {
    "attn_norm": gguf.MODEL_TENSOR.ATTN_NORM,
    "q_norm": gguf.MODEL_TENSOR.ATTN_Q_NORM,
    "k_norm": gguf.MODEL_TENSOR.ATTN_K_NORM,
    "attn_post_norm": gguf.MODEL_TENSOR.ATTN_POST_NORM,
    "q": gguf.MODEL_TENSOR.ATTN_Q,
    "k": gguf.MODEL_TENSOR.ATTN_K,
    "v": gguf.MODEL_TENSOR.ATTN_V,
    "o": gguf.MODEL_TENSOR.ATTN_OUT,
    "ffn_norm": gguf.MODEL_TENSOR.FFN_NORM,
    "gate": gguf.MODEL_TENSOR.FFN_GATE,
    "up": gguf.MODEL_TENSOR.FFN_UP,
    "down": gguf.MODEL_TENSOR.FFN_DOWN,
    "ffn_post_norm": gguf.MODEL_TENSOR.FFN_POST_NORM,
}


def global_name(role: str, suffix: str = "weight") -> str:
    return f"{gguf.TENSOR_NAMES[_GLOBAL[role]]}.{suffix}"


def layer_name(role: str, layer: int, suffix: str = "weight") -> str:
    return f"{gguf.TENSOR_NAMES[_LAYER[role]].format(bid=layer)}.{suffix}"
