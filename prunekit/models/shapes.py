"""Parameter shapes of a supported model from its transformers config alone (no weights).

The memory model (``prunekit.memory``) needs the size of one decoder layer, of its attention and
MLP blocks, of the embedding and of an untied LM head for models far larger than the machine
(70B), so the counts come from the config's fields. Each family record
(``prunekit.models.families``, whose ``model_shapes`` looks it up) says how its config becomes a
``ModelShapes``; the gated-MLP families share ``gated_shapes`` here, told which projections carry
a bias and which norms there are. ``tests/unit/test_memory_model.py`` checks every count against
``sum(p.numel())`` of the real tiny model of every family, tied and untied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShapes:
    """What the memory model needs to know about a model's tensors, in parameters."""

    family: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied: bool
    attn_params: int  # one layer's attention block (projections, biases, its norms)
    mlp_params: int  # one layer's MLP block (projections, biases, its norms)
    embedding_params: int  # the input embedding
    head_params: int  # the LM head when untied (0 when tied to the embedding)
    rest_params: int  # final norm, learned positions, embedding projections
    # What the memory model reads besides the counts (family facts, set by the family record):
    mlp_matrices: int = 3  # matrices of one MLP block (gated: gate, up, down)
    rotary: bool = True  # RoPE tables are built (OPT's positions are learned weights)
    attention_kinds: int = 1  # distinct rotary tables and masks (Gemma 3: local and global)

    @property
    def layer_params(self) -> int:
        return self.attn_params + self.mlp_params

    @property
    def attn_width(self) -> int:
        """Input width of the attention consumer (o_proj): num_heads × head_dim."""
        return self.num_heads * self.head_dim

    @property
    def total_params(self) -> int:
        return (
            self.num_layers * self.layer_params
            + self.embedding_params
            + self.head_params
            + self.rest_params
        )

    @property
    def largest_tensor(self) -> int:
        """Elements of the largest single tensor (the embedding or head, or an MLP matrix)."""
        return max(self.vocab_size * self.hidden_size, self.hidden_size * self.intermediate_size)


def head_dim_of(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def gated_shapes(
    config: Any,
    family: str,
    *,
    qkv_bias: bool | None = None,
    o_bias: bool | None = None,
    qk_norms: bool = False,
    sandwich_norms: bool = False,
    attention_kinds: int = 1,
) -> ModelShapes:
    """A gated-MLP, RMS-norm (weight only), GQA decoder: Llama, Mistral, Qwen2/3 and Gemma 3.

    ``qkv_bias``/``o_bias``: whether those projections carry a bias (None: the config's
    ``attention_bias``). ``qk_norms``: per-head q/k RMS norms over ``head_dim``.
    ``sandwich_norms``: each block also normalises its output (Gemma). ``attention_kinds``:
    distinct rotary tables and masks the layers use (Gemma 3: local and global).
    """
    h, i = config.hidden_size, config.intermediate_size
    nh = config.num_attention_heads
    nkv = getattr(config, "num_key_value_heads", None) or nh
    hd = head_dim_of(config)
    q, kv = nh * hd, nkv * hd
    attention_bias = bool(getattr(config, "attention_bias", False))
    qkv_bias = attention_bias if qkv_bias is None else qkv_bias
    o_bias = attention_bias if o_bias is None else o_bias
    attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if qkv_bias else 0) + (h if o_bias else 0)
    mlp = 3 * h * i + ((2 * i + h) if getattr(config, "mlp_bias", False) else 0)
    norms_per_block = 2 if sandwich_norms else 1  # the pre-norm, and the post-norm if sandwiched
    attn += norms_per_block * h + (2 * hd if qk_norms else 0)
    mlp += norms_per_block * h
    tied = bool(getattr(config, "tie_word_embeddings", True))
    embedding = config.vocab_size * h
    return ModelShapes(
        family=family,
        num_layers=config.num_hidden_layers,
        hidden_size=h,
        intermediate_size=i,
        num_heads=nh,
        num_kv_heads=nkv,
        head_dim=hd,
        vocab_size=config.vocab_size,
        tied=tied,
        attn_params=attn,
        mlp_params=mlp,
        embedding_params=embedding,
        head_params=0 if tied else embedding,
        rest_params=h,  # the final norm
        attention_kinds=attention_kinds,
    )
