"""OPT (pre-LayerNorm variants only): fc1/fc2 MLP with biases, learned positions."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.models.adapters.base import Adapter, AttentionChannels, MLPChannels


class OPTAdapter(Adapter):
    family = "opt"
    model_types = ("opt",)
    attn_module_names = ("self_attn_layer_norm", "self_attn")
    mlp_module_names = ("final_layer_norm", "fc1", "fc2")

    def check_supported(self, config: Any) -> None:
        # Post-LN OPT (opt-350m) normalises *after* the residual add, so a block is not a pure
        # residual branch and removing or restoring it is not what the methods assume.
        if not getattr(config, "do_layer_norm_before", True):
            raise self.unsupported(
                "post-LayerNorm OPT (do_layer_norm_before=False, e.g. facebook/opt-350m) is not "
                "supported: its blocks are not residual branches"
            )

    def attn_branch(self, layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        out, _ = layer.self_attn(hidden_states=layer.self_attn_layer_norm(hidden), **kwargs)
        return out

    def mlp_branch(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))

    def final_hidden(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        decoder = self.decoder(model)
        if decoder.final_layer_norm is not None:
            hidden = decoder.final_layer_norm(hidden)
        if decoder.project_out is not None:
            hidden = decoder.project_out(hidden)
        return hidden

    def mlp_channels(self, layer: nn.Module) -> MLPChannels:
        return MLPChannels(producers=[layer.fc1], consumer=layer.fc2)

    def attention_channels(self, layer: nn.Module, config: Any) -> AttentionChannels:
        attn = layer.self_attn
        num_heads = attn.q_proj.out_features // attn.head_dim
        return AttentionChannels(
            q_proj=attn.q_proj,
            k_proj=attn.k_proj,
            v_proj=attn.v_proj,
            o_proj=attn.out_proj,
            # From the shapes, not attn.num_heads: whole-head pruning changes the count.
            num_heads=num_heads,
            num_kv_heads=num_heads,
            head_dim=attn.head_dim,
            v_head_dim=attn.v_proj.out_features // num_heads,
            module=attn,
        )

    def query_key_states(
        self, attn: nn.Module, hidden: torch.Tensor, position_embeddings: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # OPT scales the queries before the product and calls the interface with scaling 1.0.
        batch, length = hidden.shape[:2]
        query = (attn.q_proj(hidden) * attn.scaling).view(batch, length, -1, attn.head_dim)
        key = attn.k_proj(hidden).view(batch, length, -1, attn.head_dim)
        return query.transpose(1, 2), key.transpose(1, 2)

    def attention_call_kwargs(self, attn: nn.Module) -> dict:
        return {"scaling": 1.0}

    def output_projection(self, attn: nn.Module) -> nn.Linear:
        return attn.out_proj
