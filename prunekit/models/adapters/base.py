"""What an adapter is: the one place that knows how a model family is wired.

Methods and surgery speak in *blocks* (the attention or MLP residual branch of a decoder layer)
and *channel groups* (a consumer matrix's input columns coupled with producer rows). An adapter
names those pieces for one family and computes each block's residual contribution, so nothing
outside ``prunekit.models`` ever tests ``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from prunekit.errors import UnsupportedArchitectureError

BlockKind = Literal["attn", "mlp"]
BLOCK_KINDS: tuple[BlockKind, ...] = ("attn", "mlp")


@dataclass(frozen=True, order=True)
class BlockRef:
    """One residual block: (layer index in the *original* model, kind). Orders as (layer, kind)."""

    layer: int
    kind: BlockKind

    def __str__(self) -> str:
        return f"{self.layer}.{self.kind}"

    @classmethod
    def parse(cls, text: str) -> BlockRef:
        layer, kind = text.split(".")
        if kind not in BLOCK_KINDS:
            raise ValueError(f"unknown block kind {kind!r} in {text!r}")
        return cls(int(layer), kind)  # type: ignore[arg-type]


@dataclass
class MLPChannels:
    """Intermediate channel j <-> row j of each producer (and its bias) <-> consumer column j."""

    producers: list[nn.Linear]
    consumer: nn.Linear

    @property
    def width(self) -> int:
        return self.consumer.in_features


@dataclass
class AttentionChannels:
    """The projections of one attention block, with the head layout needed to couple them.

    Value channel (g, d) of kv-head g is row g*v_head_dim + d of v_proj and columns
    h*v_head_dim + d of o_proj for every query head h with h // (num_heads // num_kv_heads) == g.
    """

    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int
    v_head_dim: int
    # The attention module itself (width surgery swaps its forward for variable head sizes).
    module: nn.Module | None = None

    @property
    def queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads


class Adapter:
    """Base adapter. Subclasses set the module names and override the branch functions."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    # Child modules of a decoder layer that belong to each block (the norm goes with its block).
    attn_module_names: ClassVar[tuple[str, ...]]
    mlp_module_names: ClassVar[tuple[str, ...]]
    # Whether the model must see a BOS token at the start of every evaluation window.
    bos_per_window: ClassVar[bool] = False

    # ---- structure -------------------------------------------------------------------------
    def check_supported(self, config: Any) -> None:
        """Raise UnsupportedArchitectureError for variants this adapter cannot prune correctly."""

    def decoder(self, model: nn.Module) -> nn.Module:
        return model.get_decoder()

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.decoder(model).layers

    def num_layers(self, model: nn.Module) -> int:
        return len(self.layers(model))

    def block_module_names(self, kind: BlockKind) -> tuple[str, ...]:
        return self.attn_module_names if kind == "attn" else self.mlp_module_names

    def has_block(self, layer: nn.Module, kind: BlockKind) -> bool:
        return all(getattr(layer, name, None) is not None for name in self.block_module_names(kind))

    def block_parameter_count(self, layer: nn.Module, kind: BlockKind) -> int:
        return sum(
            p.numel()
            for name in self.block_module_names(kind)
            if getattr(layer, name, None) is not None
            for p in getattr(layer, name).parameters()
        )

    # ---- computation -----------------------------------------------------------------------
    def attn_branch(self, layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """The attention block's contribution f(h): the layer computes h + f(h)."""
        raise NotImplementedError

    def mlp_branch(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def branch(
        self, layer: nn.Module, kind: BlockKind, hidden: torch.Tensor, kwargs: dict
    ) -> torch.Tensor:
        if kind == "attn":
            return self.attn_branch(layer, hidden, kwargs)
        return self.mlp_branch(layer, hidden)

    def final_hidden(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Decoder output after the last layer: final norm (and any projection)."""
        return self.decoder(model).norm(hidden)

    def head_logits(self, model: nn.Module, final_hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the decoder's final hidden state (LM head, plus any soft-capping)."""
        return self.cap_logits(model, model.get_output_embeddings()(final_hidden))

    def attn_from_o_proj(self, layer: nn.Module, out: torch.Tensor) -> torch.Tensor:
        """The attention branch's output given its o_proj output (any post-norm applied)."""
        return out

    def cap_logits(self, model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
        """What the model does to the LM head's output (an elementwise, increasing map)."""
        return logits

    # ---- channel groups (width pruning) ---------------------------------------------------
    def mlp_channels(self, layer: nn.Module) -> MLPChannels:
        mlp = layer.mlp
        return MLPChannels(producers=[mlp.gate_proj, mlp.up_proj], consumer=mlp.down_proj)

    def attention_channels(self, layer: nn.Module, config: Any) -> AttentionChannels:
        attn = layer.self_attn
        head_dim = (
            getattr(attn, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        num_kv_heads = attn.k_proj.out_features // head_dim
        num_heads = attn.q_proj.out_features // head_dim
        return AttentionChannels(
            q_proj=attn.q_proj,
            k_proj=attn.k_proj,
            v_proj=attn.v_proj,
            o_proj=attn.o_proj,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            v_head_dim=attn.v_proj.out_features // num_kv_heads,
            module=attn,
        )

    # ---- attention with pruned value channels or heads (prunekit.models.attention) ---------
    def query_key_states(
        self, attn: nn.Module, hidden: torch.Tensor, position_embeddings: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries [B, H, T, d] and keys [B, Hkv, T, d], positions applied, as the family does."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        batch, length = hidden.shape[:2]
        query = attn.q_proj(hidden).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        key = attn.k_proj(hidden).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        query, key = self.normalize_query_key(attn, query, key)
        cos, sin = position_embeddings
        return apply_rotary_pos_emb(query, key, cos, sin)

    def normalize_query_key(
        self, attn: nn.Module, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head q/k norms (Gemma 3); identity for families without them."""
        return query, key

    def attention_call_kwargs(self, attn: nn.Module) -> dict:
        """Keyword arguments the family passes to the attention interface besides the tensors."""
        return {"scaling": attn.scaling, "sliding_window": getattr(attn, "sliding_window", None)}

    def output_projection(self, attn: nn.Module) -> nn.Linear:
        return attn.o_proj

    # ---- config bookkeeping after layers are deleted ----------------------------------------
    def config_after_layer_removal(self, config: Any, kept_layers: list[int]) -> None:
        """Update the config in place once only ``kept_layers`` (original indices) remain."""
        config.num_hidden_layers = len(kept_layers)
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None:
            config.layer_types = [layer_types[i] for i in kept_layers]

    def unsupported(self, message: str) -> UnsupportedArchitectureError:
        return UnsupportedArchitectureError(f"{self.family}: {message}")
