"""Parameter shapes of a supported model from its transformers config alone (no weights).

The memory model (``prunekit.memory``) needs the size of one decoder layer, of its attention and
MLP blocks, of the embedding and of an untied LM head for models far larger than the machine
(70B), so the counts come from the config's fields. The family knowledge (which projections carry
a bias, Gemma's sandwich and q/k norms, OPT's learned positions and embedding projections) lives
here, beside the adapters; ``tests/unit/test_memory_model.py`` checks every count against
``sum(p.numel())`` of the real tiny model of every family, tied and untied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunekit.models.adapters import adapter_for_config


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


def model_shapes(config: Any) -> ModelShapes:
    """The shapes of the model ``config`` describes (a supported family; clear error otherwise)."""
    adapter = adapter_for_config(config)
    if adapter.family == "opt":
        return _opt_shapes(config)
    return _llama_like_shapes(config, adapter.family)


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _llama_like_shapes(config: Any, family: str) -> ModelShapes:
    """Llama, Mistral, Qwen2 and Gemma 3: gated MLP, RMS norms (weight only), GQA."""
    h, i = config.hidden_size, config.intermediate_size
    nh = config.num_attention_heads
    nkv = getattr(config, "num_key_value_heads", None) or nh
    hd = _head_dim(config)
    q, kv = nh * hd, nkv * hd
    attention_bias = bool(getattr(config, "attention_bias", False))
    if family == "qwen2":
        qkv_bias, o_bias = True, False  # Qwen2 always biases q/k/v, never o_proj
    else:
        qkv_bias, o_bias = attention_bias, attention_bias
    attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if qkv_bias else 0) + (h if o_bias else 0)
    mlp = 3 * h * i + ((2 * i + h) if getattr(config, "mlp_bias", False) else 0)
    if family == "gemma3":
        attn += 2 * hd + 2 * h  # q_norm, k_norm; input and post-attention norms
        mlp += 2 * h  # pre- and post-feedforward norms
    else:
        attn += h  # input_layernorm
        mlp += h  # post_attention_layernorm (the MLP's pre-norm)
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
    )


def _opt_shapes(config: Any) -> ModelShapes:
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
    )
