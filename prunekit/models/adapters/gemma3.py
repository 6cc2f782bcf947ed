"""Gemma 3 (text): sandwich norms around each block, scaled embeddings, BOS in every window."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.adapters.base import Adapter


class Gemma3Adapter(Adapter):
    family = "gemma3"
    model_types = ("gemma3_text",)
    # Each block owns both of its norms: Gemma normalises the branch input and its output.
    attn_module_names = ("input_layernorm", "self_attn", "post_attention_layernorm")
    mlp_module_names = ("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm")
    bos_per_window = True

    def attn_branch(self, layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        out, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden), **kwargs)
        return self.attn_from_o_proj(layer, out)

    def mlp_branch(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden)))

    def attn_from_o_proj(self, layer: nn.Module, out: torch.Tensor) -> torch.Tensor:
        return layer.post_attention_layernorm(out)

    def cap_logits(self, model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def normalize_query_key(
        self, attn: nn.Module, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return attn.q_norm(query), attn.k_norm(key)
