"""What each GGUF layer is: head counts, FFN width, and the zero padding that makes it exact.

llama.cpp's ``llama`` architecture has one shape for every layer; ``deci`` (Nemotron's NAS
models) has per-layer ``head_count``, ``head_count_kv`` and ``feed_forward_length`` arrays, a
layer with 0 heads skipping attention. What neither can say is made exact with zeros, recorded
as ``padding`` in the export's report:

- value heads narrower than the query/key head (FASP): llama.cpp asserts equal K/V head sizes,
  so v_proj rows and o_proj input columns are zero-padded back to the head size;
- attention kept, MLP removed: ``deci`` skips the rest of a layer with ``feed_forward_length =
  0`` *before* adding the attention output (the layer would become identity), so the layer gets
  a zero MLP of ``ZERO_MLP_WIDTH`` (down_proj zero: it adds nothing);
- attention removed in the first layer: llama.cpp derives the head size from layer 0's head
  count (0 heads -> head size 0), so that layer keeps one zero query/KV head (o_proj zero).

Zeros are exact in f32/f16/bf16; after q8_0 block quantization a zero block stays zero, so the
padding itself is exact, but the kept weights match only within quantization error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prunekit.errors import ExportError, UnsupportedArchitectureError
from prunekit.export.per_layer import LayerShape

# One q8_0 block: the zero MLP quantizes in every type.
ZERO_MLP_WIDTH = 32

BlockState = Literal["kept", "zero", "none"]


@dataclass(frozen=True)
class GgufLayer:
    """One layer of the GGUF file and the pruned layer it comes from."""

    source: int  # index in the pruned model's layer list
    attn: BlockState
    mlp: BlockState
    n_head: int
    n_head_kv: int
    n_ff: int
    v_head_dim: int  # the pruned value head size (== head_dim unless padded)
    sliding: bool = False  # attends through the sliding window (gemma3's per-layer pattern)


@dataclass
class GgufLayout:
    arch: str  # llama.cpp's architecture: llama, deci, or the family's own (gemma3, qwen3)
    head_dim: int
    layers: list[GgufLayer]
    padding: list[dict] = field(default_factory=list)
    # Exact rewrites of weights that make llama.cpp compute what the model does (a folded
    # query scale), for report.json beside the padding.
    adjustments: list[dict] = field(default_factory=list)
    sliding_window: int | None = None

    @property
    def uniform(self) -> bool:
        """One head count and FFN width for every layer (scalars, not per-layer arrays)."""
        return self.arch != "deci"


def common_head_dim(shapes: list[LayerShape]) -> int:
    head_dims = {s.head_dim for s in shapes if s.has_attn}
    if len(head_dims) > 1:
        raise ExportError(
            f"GGUF cannot express per-layer head sizes {sorted(head_dims)} (one key_length)"
        )
    if not head_dims:
        raise ExportError("GGUF export needs at least one layer with attention")
    return head_dims.pop()


def _attn_state(shape: LayerShape, first: bool) -> BlockState:
    if shape.has_attn:
        return "kept"
    return "zero" if first else "none"


def _mlp_state(shape: LayerShape, attn: BlockState) -> BlockState:
    if shape.has_mlp:
        return "kept"
    return "zero" if attn != "none" else "none"


def gguf_layer(index: int, shape: LayerShape, head_dim: int, first: bool) -> GgufLayer:
    """The GGUF shape of one pruned layer (see the module docstring for the zero blocks)."""
    attn = _attn_state(shape, first)
    mlp = _mlp_state(shape, attn)
    if attn == "kept" and shape.v_head_dim > head_dim:
        raise ExportError(
            f"layer {index}: value heads ({shape.v_head_dim}) wider than the key heads "
            f"({head_dim}) cannot be written to GGUF"
        )
    heads = (shape.num_attention_heads, shape.num_key_value_heads) if attn == "kept" else (1, 1)
    if attn == "none":
        heads = (0, 0)
    return GgufLayer(
        source=index,
        attn=attn,
        mlp=mlp,
        n_head=heads[0],
        n_head_kv=heads[1],
        n_ff={"kept": shape.intermediate_size, "zero": ZERO_MLP_WIDTH, "none": 0}[mlp],
        v_head_dim=shape.v_head_dim if attn == "kept" else head_dim,
    )


def padding_records(layers: list[GgufLayer], head_dim: int) -> list[dict]:
    """What was zero-padded, per GGUF layer, for report.json."""
    records = []
    for index, layer in enumerate(layers):
        if layer.attn == "kept" and layer.v_head_dim < head_dim:
            records.append(
                {
                    "layer": index,
                    "kind": "value_heads",
                    "detail": f"v_proj rows and o_proj columns padded {layer.v_head_dim} -> "
                    f"{head_dim} per head",
                }
            )
        if layer.attn == "zero":
            records.append(
                {
                    "layer": index,
                    "kind": "zero_attention",
                    "detail": "one zero query/KV head: llama.cpp reads the head size from layer 0",
                }
            )
        if layer.mlp == "zero":
            records.append(
                {
                    "layer": index,
                    "kind": "zero_mlp",
                    "detail": f"zero MLP of width {ZERO_MLP_WIDTH}: deci skips the attention "
                    "output of a layer with feed_forward_length 0",
                }
            )
    return records


def kept_layers(shapes: list[LayerShape]) -> list[tuple[int, LayerShape]]:
    """(index in the pruned model, shape) of each layer with a block left; refused if none."""
    kept = [(i, s) for i, s in enumerate(shapes) if s.has_attn or s.has_mlp]
    if not kept:
        raise ExportError("every layer was removed; nothing to write to GGUF")
    return kept


def check_whole_layers(arch: str, index: int, shape: LayerShape) -> None:
    """Refuse a kept layer an architecture with both blocks in every layer and no biases cannot
    hold (Gemma 3, Qwen3): one of its blocks removed, or a bias."""
    if not (shape.has_attn and shape.has_mlp):
        lost = "MLP" if shape.has_attn else "attention"
        raise ExportError(
            f"GGUF {arch} cannot skip single blocks (layer {index} lost its {lost}): llama.cpp "
            "runs both blocks of every layer, so only whole layers can be removed"
        )
    if shape.qkv_bias or shape.o_proj_bias or shape.gate_up_bias or shape.down_proj_bias:
        raise UnsupportedArchitectureError(f"GGUF {arch} has no biases (layer {index} has)")


def check_one_shape(arch: str, layers: list[GgufLayer]) -> None:
    """Refuse per-layer widths where the architecture has one shape for every layer."""
    for what, values in (
        ("MLP widths", [g.n_ff for g in layers]),
        ("attention head counts", [g.n_head for g in layers]),
        ("KV head counts", [g.n_head_kv for g in layers]),
    ):
        if len(set(values)) > 1:
            raise ExportError(
                f"GGUF {arch} has one shape for every layer; this model has per-layer {what} "
                f"{values}"
            )


def plan_layout(shapes: list[LayerShape]) -> GgufLayout:
    """``llama`` or ``deci``, and the per-layer GGUF shapes of a pruned Llama-family or Qwen2
    model (which families get here: their records' ``gguf``); one-line refusals."""
    kept = kept_layers(shapes)
    head_dim = common_head_dim(shapes)
    layers = [gguf_layer(i, s, head_dim, first=not n) for n, (i, s) in enumerate(kept)]
    signatures = {(g.n_head, g.n_head_kv, g.n_ff) for g in layers}
    uniform = len(signatures) == 1 and layers[0].n_head > 0 and layers[0].n_ff > 0
    uniform = uniform and all(g.attn == g.mlp == "kept" for g in layers)
    return GgufLayout(
        arch="llama" if uniform else "deci",
        head_dim=head_dim,
        layers=layers,
        padding=padding_records(layers, head_dim),
    )


def check_model_fits(model: Any, adapter: Any, layout: GgufLayout) -> None:
    """Refuse what llama.cpp's Llama graph would compute differently (one line each)."""
    config = model.config
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise UnsupportedArchitectureError(f"GGUF llama/deci graphs use SiLU, not {act!r}")
    if getattr(config, "partial_rotary_factor", 1.0) not in (None, 1.0):
        raise UnsupportedArchitectureError("GGUF llama/deci graphs rotate the whole head")
    all_layers = adapter.layers(model)
    for layer in layout.layers:
        if layer.attn != "kept":
            continue
        attn = adapter.attention_channels(all_layers[layer.source], config).module
        kwargs = adapter.attention_call_kwargs(attn)
        if kwargs.get("sliding_window") is not None:
            raise UnsupportedArchitectureError(
                "GGUF llama/deci graphs have no sliding-window attention "
                f"(window {kwargs['sliding_window']} on layer {layer.source})"
            )
        scaling = kwargs.get("scaling")
        if scaling is not None and abs(scaling - layout.head_dim**-0.5) > 1e-6:
            raise UnsupportedArchitectureError(
                f"attention scale {scaling} is not 1/sqrt(head size); GGUF llama cannot say it"
            )
