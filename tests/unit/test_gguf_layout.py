"""The GGUF layout: architecture choice, zero blocks and padding records, one-line refusals."""

from __future__ import annotations

import pytest

from prunekit.errors import ExportError
from prunekit.export.gguf.layout import ZERO_MLP_WIDTH, plan_layout
from prunekit.export.per_layer import LayerShape

ATTN = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, v_head_dim=16)


def layer(attn: bool = True, mlp: bool = True, width: int = 96, **attn_overrides) -> LayerShape:
    fields = {**ATTN, **attn_overrides} if attn else {}
    return LayerShape(
        has_attn=attn, has_mlp=mlp, intermediate_size=width if mlp else None, **fields
    )


def test_same_shape_everywhere_is_llama_even_with_padded_value_heads():
    layout = plan_layout([layer(v_head_dim=12)] * 3)
    assert layout.arch == "llama"
    assert [p["kind"] for p in layout.padding] == ["value_heads"] * 3


def test_layers_with_neither_block_are_dropped():
    layout = plan_layout([layer(), layer(attn=False, mlp=False), layer()])
    assert layout.arch == "llama" and [g.source for g in layout.layers] == [0, 2]


def test_zero_blocks_only_where_llama_cpp_needs_them():
    shapes = [layer(attn=False), layer(mlp=False), layer(attn=False), layer(width=40)]
    layout = plan_layout(shapes)
    assert layout.arch == "deci"
    assert [(g.n_head, g.n_head_kv, g.n_ff) for g in layout.layers] == [
        (1, 1, 96),  # first layer: one zero head (llama.cpp reads the head size here)
        (4, 2, ZERO_MLP_WIDTH),  # MLP removed under a kept attention: a zero MLP
        (0, 0, 96),  # attention removed elsewhere: 0 heads, as deci says it
        (4, 2, 40),
    ]


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ([layer(), layer(head_dim=32)], "per-layer head sizes"),
        ([layer(v_head_dim=20)], "wider than the key heads"),
        ([layer(attn=False)], "at least one layer with attention"),
        ([layer(attn=False, mlp=False)] * 2, "every layer was removed"),
    ],
)
def test_refusals(shapes, message):
    with pytest.raises(ExportError, match=message):
        plan_layout(shapes)
