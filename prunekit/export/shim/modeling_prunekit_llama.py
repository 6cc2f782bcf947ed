"""Llama-style causal LM whose decoder layers differ from one another (written by prunekit).

This file is copied next to the weights of a pruned model and reached through ``auto_map`` in
config.json, so plain transformers loads the model with ``trust_remote_code=True`` even where
prunekit is not installed. It depends on torch and transformers only.

Every layer is built from its own config, ``config.per_layer_config[i]`` (transformers' sparse
per-layer overrides). The attributes a layer may override:

- ``skip``: the removed residual blocks of the layer, by module name: ``"self_attn"`` (the
  attention block with its input norm) and/or ``"mlp"`` (the MLP block with its norm);
- ``intermediate_size``: the MLP width (pruned gate/up rows and down columns);
- ``v_head_dim``: the value head size, which may be smaller than the query/key ``head_dim``
  (pruned v_proj rows and o_proj columns); queries and keys keep ``head_dim``;
- ``num_key_value_heads``: kept key/value heads;
- ``qkv_bias``, ``o_proj_bias``, ``gate_up_bias``, ``down_proj_bias``: which projections carry a
  bias (restoration methods such as FLAP add biases to o_proj/down_proj).

A global ``qk_norm`` (Qwen3) gives every attention block per-head RMS norms of its queries and
keys, ``q_norm``/``k_norm`` over ``head_dim``, applied before RoPE as the family does.

The KV cache holds one entry per *attention block*: a layer without attention takes no cache
slot, so ``cache.get_seq_length()`` always reads a layer that has seen the tokens.

Sliding-window attention (Mistral's ``sliding_window``, or ``layer_types`` naming sliding layers)
is supported when every layer uses the same kind of attention: then the cache layers
transformers builds from the config agree with the mask whichever slot a layer takes.

The file runs on every transformers 5.x release prunekit supports (5.0 to 5.24 tested). Three
things changed between them, and each is decided here from what the installed version offers:
how per-layer configs are read (5.0 keeps ``per_layer_config`` as a plain dict), the mask
helpers' keyword names (``input_embeds``/``inputs_embeds``, ``past_key_values``/``cache``,
``cache_position``) and the name of the cache field of the model outputs.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, LlamaConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

ATTENTION_BLOCK = "self_attn"
MLP_BLOCK = "mlp"
SLIDING = "sliding_attention"
# The outputs' cache field: ``past_key_values`` before 5.24, ``cache`` from 5.24 on.
CACHE_FIELD = (
    "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
)


class PrunekitLlamaConfig(LlamaConfig):
    """A Llama config plus per-layer shapes; ``base_model_type`` names the family it came from."""

    model_type = "prunekit_llama"


def _layer_attr(config: LlamaConfig, name: str, default):
    value = getattr(config, name, None)
    return default if value is None else value


def layer_configs(config: LlamaConfig) -> list:
    """One config per decoder layer, the sparse ``per_layer_config`` overrides applied.

    transformers with heterogeneous configs returns them itself; older releases (5.0 up to the
    one that added them) keep the overrides as the plain dict read from config.json.
    """
    layers = config.per_layer_config
    if not isinstance(layers, dict):
        return list(layers)
    overrides = {int(index): entry for index, entry in layers.items()}
    configs = []
    for index in range(config.num_hidden_layers):
        layer = copy.copy(config)
        for name, value in overrides.get(index, {}).items():
            setattr(layer, name, value)
        configs.append(layer)
    return configs


def uses_sliding_window(config: LlamaConfig) -> bool:
    """Every layer attends through a sliding window (mixed attention kinds are refused)."""
    if getattr(config, "sliding_window", None) is None:
        return False
    kinds = set(getattr(config, "layer_types", None) or [SLIDING])
    if len(kinds) > 1:
        raise ValueError(f"layers mix attention kinds {sorted(kinds)}; this file needs one kind")
    return kinds == {SLIDING}


def attention_function(implementation: str | None) -> Callable:
    """The attention kernel for ``implementation`` (eager when unset or "eager")."""
    if implementation in (None, "eager"):
        return eager_attention_forward
    if not hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # 5.0: a plain mapping
        return ALL_ATTENTION_FUNCTIONS[implementation]
    # Spelled out: set_attn_implementation searches this file for the literal call.
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)


@functools.cache
def _mask_parameters(helper: Callable) -> frozenset:
    return frozenset(inspect.signature(helper).parameters)


def causal_mask(
    config: LlamaConfig,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Cache | None,
    position_ids: torch.Tensor,
    cache_position: torch.Tensor,
):
    """transformers' (sliding-window) causal mask, called with the installed version's keywords."""
    helper = (
        create_sliding_window_causal_mask if uses_sliding_window(config) else create_causal_mask
    )
    names = _mask_parameters(helper)
    kwargs = {"config": config, "attention_mask": attention_mask, "position_ids": position_ids}
    kwargs["inputs_embeds" if "inputs_embeds" in names else "input_embeds"] = inputs_embeds
    kwargs["cache" if "cache" in names else "past_key_values"] = cache
    if "cache_position" in names:
        kwargs["cache_position"] = cache_position
    return helper(**kwargs)


class PrunedAttention(nn.Module):
    """Grouped-query attention with its own head counts and a value head size of its own."""

    def __init__(self, config: LlamaConfig, cache_idx: int, model_config: LlamaConfig):
        super().__init__()
        self.config = config
        # The attention implementation is read from the model's config, which
        # ``set_attn_implementation`` updates; the per-layer copies keep the value at load time.
        self.model_config = model_config
        self.layer_idx = cache_idx  # the KV-cache slot; attention-less layers take none
        self.head_dim = _layer_attr(
            config, "head_dim", config.hidden_size // config.num_attention_heads
        )
        self.v_head_dim = _layer_attr(config, "v_head_dim", self.head_dim)
        num_heads = config.num_attention_heads
        num_kv_heads = _layer_attr(config, "num_key_value_heads", num_heads)
        self.num_key_value_groups = num_heads // num_kv_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        # The mask carries the window for eager and SDPA; kernels that build their own need it.
        self.sliding_window = config.sliding_window if uses_sliding_window(model_config) else None
        qkv_bias = _layer_attr(config, "qkv_bias", config.attention_bias)
        o_bias = _layer_attr(config, "o_proj_bias", config.attention_bias)
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, num_kv_heads * self.v_head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * self.v_head_dim, hidden, bias=o_bias)
        if getattr(config, "qk_norm", False):
            self.q_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        query = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim)
        key = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim)
        if hasattr(self, "q_norm"):
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        value = self.v_proj(hidden_states).view(*input_shape, -1, self.v_head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        implementation = self.model_config._attn_implementation
        attention = attention_function(implementation)
        # Fused SDPA/flash kernels need one head size for q, k and v (else a math path that is
        # 10-30x slower on CPU at long prompts): zero-pad the values to head_dim and slice the
        # zeros off after. Decoding too: in bf16 the fused kernel beats the math path 2-10x even
        # with the copy of the value cache this costs at every token.
        if implementation != "eager" and self.v_head_dim < self.head_dim:
            value = nn.functional.pad(value, (0, self.head_dim - self.v_head_dim))
        out, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        out = out[..., : self.v_head_dim]
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class PrunedMLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        width = config.intermediate_size
        gate_up_bias = _layer_attr(config, "gate_up_bias", config.mlp_bias)
        down_bias = _layer_attr(config, "down_proj_bias", config.mlp_bias)
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=gate_up_bias)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=gate_up_bias)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=down_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class PrunedDecoderLayer(nn.Module):
    """A decoder layer that holds only the blocks its config keeps (stock module names)."""

    def __init__(self, config: LlamaConfig, cache_idx: int | None, model_config: LlamaConfig):
        super().__init__()
        skip = set(getattr(config, "skip", None) or ())
        if ATTENTION_BLOCK not in skip:
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = PrunedAttention(config, cache_idx, model_config)
        if MLP_BLOCK not in skip:
            self.post_attention_layernorm = LlamaRMSNorm(
                config.hidden_size, eps=config.rms_norm_eps
            )
            self.mlp = PrunedMLP(config)

    @property
    def has_attention(self) -> bool:
        return hasattr(self, "self_attn")

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if hasattr(self, "self_attn"):
            attn_out, _ = self.self_attn(
                self.input_layernorm(hidden_states),
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                cache=cache,
                **kwargs,
            )
            hidden_states = hidden_states + attn_out
        if hasattr(self, "mlp"):
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


def attention_layer_count(config: LlamaConfig) -> int:
    layers = layer_configs(config)
    return sum(ATTENTION_BLOCK not in (getattr(lc, "skip", None) or ()) for lc in layers)


class PrunekitLlamaPreTrainedModel(PreTrainedModel):
    config_class = PrunekitLlamaConfig
    config: PrunekitLlamaConfig
    base_model_prefix = "model"
    _no_split_modules = ["PrunedDecoderLayer"]  # noqa: RUF012 (transformers convention)
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_attention_backend = True


class PrunekitLlamaModel(PrunekitLlamaPreTrainedModel):
    def __init__(self, config: PrunekitLlamaConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        layers, cache_idx = [], 0
        for layer_config in layer_configs(config):
            has_attention = ATTENTION_BLOCK not in (getattr(layer_config, "skip", None) or ())
            slot = cache_idx if has_attention else None
            layers.append(PrunedDecoderLayer(layer_config, slot, config))
            cache_idx += int(has_attention)
        self.layers = nn.ModuleList(layers)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        cache = cache if cache is not None else past_key_values
        cache_position = kwargs.pop("cache_position", None)  # passed by generate() before 5.5
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        if cache_position is None:
            past = cache.get_seq_length() if cache is not None else 0
            cache_position = (
                torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past
            )
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)
        mask = causal_mask(
            self.config, inputs_embeds, attention_mask, cache, position_ids, cache_position
        )
        hidden = inputs_embeds
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.layers:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                cache=cache if use_cache else None,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), **{CACHE_FIELD: cache})


class PrunekitLlamaForCausalLM(PrunekitLlamaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # noqa: RUF012

    def __init__(self, config: PrunekitLlamaConfig):
        super().__init__(config)
        self.model = PrunekitLlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        model_cache = cache if cache is not None else past_key_values
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=model_cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:, :]
        elif not isinstance(logits_to_keep, int):
            hidden = hidden[:, logits_to_keep, :]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)}
        )


__all__ = ["PrunekitLlamaConfig", "PrunekitLlamaForCausalLM", "PrunekitLlamaModel"]
