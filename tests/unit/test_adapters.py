"""Adapters name the blocks and channel groups of each family correctly."""

from __future__ import annotations

import pytest
import torch

from prunekit.engine import capture_layer_context, embed, run_block
from prunekit.errors import UnsupportedArchitectureError
from prunekit.evaluation.nll import nll_from_hidden
from prunekit.models.adapters import BlockRef, adapter_for_config, supported_model_types
from prunekit.models.tiny import TINY_VOCAB, tiny_config


def test_block_by_block_equals_the_stock_forward(tiny):
    """h + attn(h), then h + mlp(h), layer by layer, reproduces the model's own loss."""
    model, adapter = tiny.model, tiny.adapter
    ids = torch.randint(0, TINY_VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    context = capture_layer_context(model, adapter, ids[:1])
    with torch.inference_mode():
        hidden = embed(model, adapter, ids)
        for layer, kwargs in zip(adapter.layers(model), context.kwargs, strict=True):
            for kind in ("attn", "mlp"):
                hidden = run_block(adapter, layer, kind, hidden, kwargs)
        ours = nll_from_hidden(model, adapter, hidden, ids).sum() / (2 * 23)
        stock = model(ids, labels=ids).loss
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)


def test_each_block_is_a_real_residual_branch(tiny):
    """Zeroing a block's branch changes the output: the adapter points at live modules."""
    model, adapter = tiny.model, tiny.adapter
    ids = torch.randint(0, TINY_VOCAB, (1, 16), generator=torch.Generator().manual_seed(2))
    context = capture_layer_context(model, adapter, ids)
    layer = adapter.layers(model)[1]
    with torch.inference_mode():
        hidden = embed(model, adapter, ids)
        for kind in ("attn", "mlp"):
            delta = adapter.branch(layer, kind, hidden, context.kwargs[1])
            assert delta.shape == hidden.shape
            assert delta.abs().sum() > 0


def test_block_modules_and_parameter_counts(tiny):
    model, adapter = tiny.model, tiny.adapter
    layer = adapter.layers(model)[0]
    per_layer = sum(p.numel() for p in layer.parameters())
    attn = adapter.block_parameter_count(layer, "attn")
    mlp = adapter.block_parameter_count(layer, "mlp")
    assert attn > 0 and mlp > 0
    assert attn + mlp == per_layer  # every parameter of a layer belongs to exactly one block
    assert adapter.has_block(layer, "attn") and adapter.has_block(layer, "mlp")


def test_channel_groups_are_coupled(tiny):
    model, adapter = tiny.model, tiny.adapter
    layer = adapter.layers(model)[0]
    mlp = adapter.mlp_channels(layer)
    assert all(p.out_features == mlp.consumer.in_features for p in mlp.producers)
    attn = adapter.attention_channels(layer, model.config)
    assert attn.v_proj.out_features == attn.num_kv_heads * attn.v_head_dim
    assert attn.o_proj.in_features == attn.num_heads * attn.v_head_dim
    assert attn.q_proj.out_features == attn.num_heads * attn.head_dim
    assert attn.num_heads % attn.num_kv_heads == 0


def test_gqa_layout_of_tiny_llama(tiny_llama):
    layer = tiny_llama.adapter.layers(tiny_llama.model)[0]
    attn = tiny_llama.adapter.attention_channels(layer, tiny_llama.model.config)
    assert (attn.num_heads, attn.num_kv_heads, attn.queries_per_kv) == (4, 2, 2)


def test_unknown_architecture_is_refused_clearly():
    class Config:
        model_type = "mamba"

    with pytest.raises(UnsupportedArchitectureError, match="mamba.*supported: .*llama"):
        adapter_for_config(Config())
    assert "opt" in supported_model_types()


def test_post_layernorm_opt_is_refused():
    config = tiny_config("opt", do_layer_norm_before=False)
    with pytest.raises(UnsupportedArchitectureError, match="post-LayerNorm"):
        adapter_for_config(config)


def test_block_ref_round_trip_and_order():
    refs = [BlockRef(3, "mlp"), BlockRef(3, "attn"), BlockRef(1, "mlp")]
    assert sorted(refs) == [BlockRef(1, "mlp"), BlockRef(3, "attn"), BlockRef(3, "mlp")]
    assert BlockRef.parse(str(BlockRef(12, "attn"))) == BlockRef(12, "attn")
    with pytest.raises(ValueError):
        BlockRef.parse("3.ffn")
