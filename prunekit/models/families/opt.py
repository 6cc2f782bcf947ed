"""OPT (pre-LayerNorm): its record, with the parameter counts of biased fc1/fc2 and learned
positions. No shim (per-layer shapes are refused) and no GGUF architecture."""

from __future__ import annotations

from typing import Any

from prunekit.models.adapters.opt import OPTAdapter
from prunekit.models.families.base import Family
from prunekit.models.shapes import ModelShapes


def tiny_opt() -> Any:
    from transformers import OPTConfig

    from prunekit.models.tiny_sizes import TINY_COMMON

    return OPTConfig(
        hidden_size=64,
        ffn_dim=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        enable_bias=True,
        do_layer_norm_before=True,
        **TINY_COMMON,
    )


def opt_shapes(config: Any) -> ModelShapes:
    """OPT: biased projections, LayerNorms with bias, learned positions (offset 2), fc1/fc2."""
    h, i, nh = config.hidden_size, config.ffn_dim, config.num_attention_heads
    bias = bool(getattr(config, "enable_bias", True))
    norm = 2 * h if getattr(config, "layer_norm_elementwise_affine", True) else 0
    attn = 4 * h * h + (4 * h if bias else 0) + norm
    mlp = 2 * h * i + ((i + h) if bias else 0) + norm
    proj = getattr(config, "word_embed_proj_dim", None) or h
    rest = (config.max_position_embeddings + 2) * h  # OPT's learned positions start at 2
    if config.do_layer_norm_before and not getattr(config, "_remove_final_layer_norm", False):
        rest += norm
    if proj != h:
        rest += 2 * proj * h  # project_in and project_out (no bias)
    tied = bool(getattr(config, "tie_word_embeddings", True))
    embedding = config.vocab_size * proj
    return ModelShapes(
        family="opt",
        num_layers=config.num_hidden_layers,
        hidden_size=h,
        intermediate_size=i,
        num_heads=nh,
        num_kv_heads=nh,
        head_dim=h // nh,
        vocab_size=config.vocab_size,
        tied=tied,
        attn_params=attn,
        mlp_params=mlp,
        embedding_params=embedding,
        head_params=0 if tied else embedding,
        rest_params=rest,
        mlp_matrices=2,  # fc1, fc2
        rotary=False,
    )


OPT = Family(
    adapter=OPTAdapter,
    shapes=opt_shapes,
    tiny={"opt": tiny_opt},
    mlp_width_attribute="ffn_dim",
    display_name="OPT",
)
