"""Sliding-window attention survives pruning, export and reload (Mistral: every layer slides).

The reference is the same pruned weights run with the window removed from the config and an
explicit 4-D sliding mask instead: it does not go through the window logic under test. A plain
causal mask gives different logits (the sequences are longer than the window), so a path that
dropped the window fails.
"""

from __future__ import annotations

import copy

import pytest
import torch

from prunekit.errors import UnsupportedArchitectureError
from prunekit.export.load import load_pruned
from prunekit.export.save import export_model
from prunekit.export.shim.modeling_prunekit_llama import uses_sliding_window
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import from_model
from prunekit.models.tiny import TINY_SLIDING_WINDOW, tiny_model, tiny_tokenizer
from prunekit.surgery.depth import remove_blocks
from prunekit.surgery.width import slice_mlp, slice_value_channels

SEQLEN = 3 * TINY_SLIDING_WINDOW


def sliding_mask(batch: int, length: int, window: int) -> torch.Tensor:
    """Additive [B, 1, T, T] mask: query q sees keys q-window+1 .. q."""
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None]
    allowed = (k <= q) & (q - k < window)
    mask = torch.zeros(length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None].expand(batch, 1, length, length)


def windowless_logits(model, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Logits of ``model`` with its config's window removed, under ``mask`` (None: causal)."""
    plain = copy.deepcopy(model)
    plain.config.sliding_window = None
    plain.set_attn_implementation("eager")
    with torch.no_grad():
        return plain(ids, attention_mask=mask, use_cache=False).logits


def depth_pruned_mistral():
    loaded = from_model(tiny_model("mistral"), tiny_tokenizer(), spec="tiny-mistral")
    remove_blocks(loaded, [BlockRef(1, "attn"), BlockRef(2, "mlp")])
    return loaded


def width_pruned_mistral():
    loaded = from_model(tiny_model("mistral", seed=1), tiny_tokenizer(), spec="tiny-mistral")
    adapter, layers = loaded.adapter, loaded.adapter.layers(loaded.model)
    slice_mlp(adapter.mlp_channels(layers[0]), list(range(0, 96, 2)))
    channels = adapter.attention_channels(layers[2], loaded.model.config)
    slice_value_channels(channels, [list(range(0, 16, 2))] * channels.num_kv_heads, adapter)
    return loaded


def ids_longer_than_window() -> torch.Tensor:
    return torch.randint(3, 300, (2, SEQLEN), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("pruned", [depth_pruned_mistral, width_pruned_mistral])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_pruned_mistral_keeps_window_in_memory_and_after_export(pruned, attn, tmp_path):
    loaded = pruned()
    ids = ids_longer_than_window()
    reference = windowless_logits(loaded.model, ids, sliding_mask(2, SEQLEN, TINY_SLIDING_WINDOW))
    causal = windowless_logits(loaded.model, ids, None)
    beyond = slice(TINY_SLIDING_WINDOW, None)
    assert (reference[:, beyond] - causal[:, beyond]).abs().max() > 1e-2  # the window matters

    loaded.model.set_attn_implementation(attn)
    with torch.no_grad():
        in_memory = loaded.model(ids, use_cache=False).logits
    torch.testing.assert_close(in_memory, reference, atol=1e-5, rtol=1e-4)

    result = export_model(loaded, tmp_path / "model", fmt="prunekit")
    assert result.format == "prunekit"
    reloaded = load_pruned(tmp_path / "model", device="cpu")
    assert reloaded.model.config.sliding_window == TINY_SLIDING_WINDOW
    reloaded.model.set_attn_implementation(attn)
    with torch.no_grad():
        exported = reloaded.model(ids, use_cache=False).logits
    torch.testing.assert_close(exported, reference, atol=1e-5, rtol=1e-4)


def test_reloaded_mistral_generates_like_the_pruned_model_past_the_window(tmp_path):
    """Decoding with a cache: the shim's window agrees with the cache transformers builds."""
    loaded = depth_pruned_mistral()
    prompt = ids_longer_than_window()[:1, : TINY_SLIDING_WINDOW + 4]
    settings = {"max_new_tokens": 2 * TINY_SLIDING_WINDOW, "do_sample": False, "pad_token_id": 0}
    expected = loaded.model.generate(prompt, **settings)
    export_model(loaded, tmp_path / "model", fmt="prunekit")
    reloaded = load_pruned(tmp_path / "model", device="cpu")
    assert reloaded.model.generate(prompt, **settings).tolist() == expected.tolist()


def test_width_pruned_mistral_passes_its_window_to_the_attention_kernel():
    """Flash-style kernels get the window as an argument, not in the mask: it must be there."""
    loaded = width_pruned_mistral()
    layer = loaded.adapter.layers(loaded.model)[2]
    kwargs = loaded.adapter.attention_call_kwargs(layer.self_attn)
    assert kwargs["sliding_window"] == TINY_SLIDING_WINDOW
    llama = from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")
    llama_attn = llama.adapter.layers(llama.model)[0].self_attn
    assert llama.adapter.attention_call_kwargs(llama_attn)["sliding_window"] is None


def test_heterogeneous_export_refuses_mixed_attention_kinds(tmp_path):
    kinds = ["full_attention", "sliding_attention"] * 2
    model = tiny_model(
        "qwen2", use_sliding_window=True, sliding_window=TINY_SLIDING_WINDOW, layer_types=kinds
    )
    loaded = from_model(model, tiny_tokenizer(), spec="tiny-qwen2")
    remove_blocks(loaded, [BlockRef(1, "attn")])
    with pytest.raises(UnsupportedArchitectureError, match="mixing attention kinds"):
        export_model(loaded, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    with pytest.raises(ValueError, match="one kind"):
        uses_sliding_window(loaded.model.config)
