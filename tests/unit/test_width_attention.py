"""Attention with v_head_dim != head_dim: eager and SDPA, KV cache and generate()."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from prunekit.models.attention import has_variable_heads, pad_values
from tests.unit.width_helpers import IDS, masked_reference, prune_tiny

pytestmark = pytest.mark.usefixtures("data_dir")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", ["fasp", "wanda-sp"])
def test_cached_decoding_matches_full_forward(family, attn, method):
    """Prefill + one token at a time through the cache == one full forward (pruned model)."""
    pruned, _, _ = prune_tiny(family, method, attn=attn, restore=False, n_samples=2, seqlen=32)
    model = pruned.model
    assert all(has_variable_heads(layer.self_attn) for layer in pruned.adapter.layers(model))
    ids = IDS[:1]
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        steps = [model(input_ids=ids[:, :10], past_key_values=cache, use_cache=True).logits]
        for t in range(10, ids.shape[1]):
            steps.append(model(input_ids=ids[:, t : t + 1], past_key_values=cache).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_generate_matches_masked_reference(family, attn):
    pruned, dense, plan = prune_tiny(
        family, "fasp", attn=attn, restore=False, n_samples=2, seqlen=32
    )
    reference = masked_reference(dense, plan)
    prompt = IDS[:1, :6]
    with torch.no_grad():
        ours = pruned.model.generate(prompt, max_new_tokens=8, do_sample=False)
        theirs = reference.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours, theirs)


def test_cache_stores_values_with_their_own_size():
    pruned, _, plan = prune_tiny("llama", "fasp", restore=False, n_samples=2, seqlen=32)
    cache = DynamicCache(config=pruned.model.config)
    with torch.no_grad():
        pruned.model(input_ids=IDS[:1], past_key_values=cache, use_cache=True)
    layer = cache.layers[0]
    assert layer.keys.shape[-1] == 16
    assert layer.values.shape[-1] == plan.extra["shapes"]["0"]["v_head_dim"] < 16


def test_sdpa_gets_values_padded_to_the_query_head_size(monkeypatch):
    """Fused SDPA kernels need q, k and v of one head size; the padding must not leak out."""
    pruned, _, plan = prune_tiny(
        "llama", "fasp", attn="sdpa", restore=False, n_samples=2, seqlen=32
    )
    assert plan.extra["shapes"]["0"]["v_head_dim"] < 16
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, *args, **kwargs):
        seen.append((query.shape[-1], value.shape[-1]))
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    with torch.no_grad():
        pruned.model(input_ids=IDS[:1], use_cache=False)
    assert seen and all(q == v == 16 for q, v in seen)


def test_pad_values_only_for_fused_implementations():
    value = torch.randn(1, 2, 5, 12)
    padded = pad_values(value, 16, "sdpa")
    assert padded.shape[-1] == 16
    assert torch.equal(padded[..., :12], value) and not padded[..., 12:].any()
    assert pad_values(value, 16, "eager") is value
    assert pad_values(value, 12, "sdpa") is value
