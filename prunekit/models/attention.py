"""Attention whose value/output head size may differ from the query/key head size.

FASP prunes value channels (rows of v_proj, columns of o_proj) but never Q or K, so a pruned
layer has ``v_head_dim < head_dim``. The stock Hugging Face attention modules reshape the values
with ``head_dim`` and break; Wanda-sp and FLAP remove whole heads, which some stock modules
(OPT) also cannot follow because they cache the head count. This module swaps such an attention
module's class for a subclass whose forward reshapes every projection by its own size:

- q, k: the family's own projection, norms and rotary (``Adapter.query_key_states``);
- v: ``v_proj(h)`` viewed as ``[B, T, n_kv, v_head_dim]`` with ``v_head_dim`` read from shapes;
- the stock attention interface (eager: two matmuls; for SDPA and flash the values are
  zero-padded to ``head_dim`` so the fused kernels apply, and the padding is sliced off);
- the cache stores keys and values as separate tensors, so different last dims are fine.

Weights and parameter names are untouched, so ``state_dict`` stays that of the stock model.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from prunekit.models.adapters.base import Adapter


def value_head_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    attention_mask: torch.Tensor | None = None,
    cache: Any | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The forward installed by ``enable_variable_heads`` (``self`` is the attention module)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    adapter: Adapter = self.prunekit_adapter
    if cache is None:
        cache = kwargs.pop("past_key_values", None)
    kwargs.pop("output_attentions", None)
    batch, length = hidden_states.shape[:2]
    query, key = adapter.query_key_states(self, hidden_states, position_embeddings)
    num_kv_heads = key.shape[1]
    value = self.v_proj(hidden_states).view(batch, length, num_kv_heads, -1).transpose(1, 2)
    if cache is not None:
        key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
    implementation = self.config._attn_implementation
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, _eager_attention)
    value_dim = value.shape[-1]
    out, weights = interface(
        self,
        query,
        key,
        pad_values(value, query.shape[-1], implementation),
        attention_mask,
        dropout=0.0,
        **adapter.attention_call_kwargs(self),
        **kwargs,
    )
    out = out[..., :value_dim].reshape(batch, length, -1).contiguous()
    return adapter.output_projection(self)(out), weights


def pad_values(value: torch.Tensor, head_dim: int, implementation: str) -> torch.Tensor:
    """Values zero-padded to the query/key head size for fused attention kernels.

    SDPA's fused (flash) kernels, and flash-attention, need one head size for q, k and v;
    otherwise PyTorch takes the math path, which materialises the [heads, T, T] scores: 10-30x
    slower on CPU at 2,048 tokens. Zero value columns only add zero output columns, which the
    caller slices off, so the result is the same. Eager attention takes any value size as is.
    Decoding pads too, although it copies the value cache at every token: measured per
    attention call on CPU, bf16 is 2-10x faster padded (cache of 160 to 8,192 tokens); fp32 is
    even up to 2,048 tokens and 28 % slower padded at 8,192.
    """
    missing = head_dim - value.shape[-1]
    if missing <= 0 or implementation == "eager":
        return value
    return torch.nn.functional.pad(value, (0, missing))


def _eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    softcap: float | None = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ · scale + mask) v, with GQA and optional soft-capping; any value size."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


@functools.cache
def _variable_heads_class(base: type[nn.Module], adapter_cls: type) -> type[nn.Module]:
    return type(
        f"Prunekit{base.__name__}",
        (base,),
        {"forward": value_head_forward, "prunekit_adapter": adapter_cls(), "__module__": __name__},
    )


def enable_variable_heads(attention: nn.Module, adapter: Adapter) -> None:
    """Make ``attention`` run with whatever q/k/v/o shapes its projections now have (idempotent)."""
    base = getattr(type(attention), "prunekit_base", None) or type(attention)
    cls = _variable_heads_class(base, type(adapter))
    cls.prunekit_base = base
    attention.__class__ = cls


def has_variable_heads(attention: nn.Module) -> bool:
    return hasattr(type(attention), "prunekit_base")
