"""Depth surgery: physical removal equals masking, generation with cache works, counts drop."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import PlanError
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import count_parameters, from_model
from prunekit.models.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer
from prunekit.plan import PruningPlan
from prunekit.surgery import apply_plan
from prunekit.surgery.depth import BlockwiseDecoderLayer, remove_blocks
from tests.unit.depth_helpers import one_thread  # noqa: F401

# Layer 0 loses its attention (the cache pitfall), layer 2 goes entirely, layer 3 keeps attn only.
REMOVED = [BlockRef(0, "attn"), BlockRef(2, "attn"), BlockRef(2, "mlp"), BlockRef(3, "mlp")]


def _loaded(family: str):
    return from_model(tiny_model(family), tiny_tokenizer())


def _zero_branches(loaded, blocks):
    """Mask blocks on the unpruned model: hook the branch's last module to output zeros."""
    adapter, layers = loaded.adapter, loaded.adapter.layers(loaded.model)

    def zero(_module, _inputs, output):
        if isinstance(output, tuple):
            return (torch.zeros_like(output[0]), *output[1:])
        return torch.zeros_like(output)

    handles = []
    for block in blocks:
        layer = layers[block.layer]
        # The last module of the branch: its output is the branch's (norms of zero stay zero).
        name = adapter.block_module_names(block.kind)[-1]
        if name.endswith("layernorm"):  # Gemma's post-norms: zero the module before them
            name = adapter.block_module_names(block.kind)[1]
        handles.append(getattr(layer, name).register_forward_hook(zero))
    return handles


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_pruned_model_equals_masked_model(family: str) -> None:
    loaded = _loaded(family)
    ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    prompt = ids[:1, :8]
    handles = _zero_branches(loaded, REMOVED)
    with torch.inference_mode():
        masked_logits = loaded.model(ids).logits
        masked_gen = loaded.model.generate(prompt, max_new_tokens=12, do_sample=False)
    for handle in handles:
        handle.remove()
    before = count_parameters(loaded.model)
    expected_drop = sum(
        loaded.adapter.block_parameter_count(loaded.adapter.layers(loaded.model)[b.layer], b.kind)
        for b in REMOVED
    )

    result = remove_blocks(loaded, REMOVED)

    with torch.inference_mode():
        logits = loaded.model(ids).logits
        generated = loaded.model.generate(prompt, max_new_tokens=12, do_sample=False)
        uncached = loaded.model.generate(
            prompt, max_new_tokens=12, do_sample=False, use_cache=False
        )
    torch.testing.assert_close(logits, masked_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(generated, masked_gen)
    assert torch.equal(generated, uncached)
    assert before - count_parameters(loaded.model) == expected_drop == result.removed_parameters
    assert result.kept_layers == [0, 1, 3]
    assert result.layer_blocks == [["mlp"], ["attn", "mlp"], ["attn"]]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_structure_after_removal(family: str) -> None:
    loaded = _loaded(family)
    layer_types = getattr(loaded.model.config, "layer_types", None)
    keys_before = set(loaded.model.state_dict())
    remove_blocks(loaded, REMOVED)
    model, adapter = loaded.model, loaded.adapter
    layers = adapter.layers(model)
    assert model.config.num_hidden_layers == len(layers) == 3
    if layer_types is not None:
        assert model.config.layer_types == [layer_types[i] for i in (0, 1, 3)]
    assert model.config.prunekit_depth["kept_layers"] == [0, 1, 3]
    assert isinstance(layers[0], BlockwiseDecoderLayer)
    assert not adapter.has_block(layers[0], "attn") and adapter.has_block(layers[0], "mlp")
    for index, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                assert module.layer_idx == index
    # Surviving parameters keep their stock names (renumbered layers), nothing new appears.
    mapping = {"0": "0", "1": "1", "2": "3"}
    for key in model.state_dict():
        parts = key.split(".")
        if "layers" in parts:
            i = parts.index("layers") + 1
            parts[i] = mapping[parts[i]]
        assert ".".join(parts) in keys_before


def test_layer_zero_without_attention_keeps_cache_positions() -> None:
    """Without the placeholder cache entries, positions restart at 0 on every decode step."""
    loaded = _loaded("llama")
    remove_blocks(loaded, [BlockRef(0, "attn")])
    prompt = torch.randint(3, 300, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = loaded.model(prompt, use_cache=True)
    assert out.cache.get_seq_length() == 6


def test_plan_replay_and_bad_blocks() -> None:
    loaded = _loaded("llama")
    plan = PruningPlan("blockpruner", loaded.identity(), removed_blocks=["1.mlp", "3.attn"])
    apply_plan(loaded, plan)
    assert count_parameters(loaded.model) < plan.model["num_parameters"]
    with pytest.raises(PlanError):
        remove_blocks(loaded, [BlockRef(1, "mlp")])  # already gone
    fresh = _loaded("llama")
    with pytest.raises(PlanError):
        remove_blocks(fresh, [BlockRef(9, "attn")])
