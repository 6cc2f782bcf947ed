"""Llama family: Llama 2/3, Mistral, SmolLM2 and Qwen2 (same wiring; Qwen2 adds q/k/v biases)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.models.adapters.base import Adapter


class LlamaAdapter(Adapter):
    family = "llama"
    model_types = ("llama", "mistral")
    attn_module_names = ("input_layernorm", "self_attn")
    mlp_module_names = ("post_attention_layernorm", "mlp")

    def attn_branch(self, layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        out, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden), **kwargs)
        return out

    def mlp_branch(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return layer.mlp(layer.post_attention_layernorm(hidden))

    def attention_call_kwargs(self, attn: nn.Module) -> dict[str, Any]:
        # Qwen2 keeps each layer's window on the module (None on full-attention layers); Mistral
        # reads it from the config at every call, and it applies to every layer.
        if hasattr(attn, "sliding_window"):
            window = attn.sliding_window
        else:
            window = getattr(attn.config, "sliding_window", None)
        return {"scaling": attn.scaling, "sliding_window": window}


class Qwen2Adapter(LlamaAdapter):
    """Qwen2: Llama wiring; q/k/v carry biases (v_proj's bias goes with its rows)."""

    family = "qwen2"
    model_types = ("qwen2",)
