"""The block-by-block replay machinery: captured layer kwargs and block outputs."""

from __future__ import annotations

import pytest
import torch

from prunekit.engine.layerwise import (
    _clean_kwargs,
    capture_layer_context,
    embed,
    run_block,
    run_layer,
)
from prunekit.models.adapters import BLOCK_KINDS
from tests.unit.width_helpers import tiny_loaded


def _kwargs_seen_in_a_full_forward(loaded, ids):
    layers = loaded.adapter.layers(loaded.model)
    seen = [None] * len(layers)

    def make_hook(index):
        def hook(_module, _args, kwargs):
            seen[index] = kwargs

        return hook

    handles = [
        layer.register_forward_pre_hook(make_hook(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    with torch.inference_mode():
        loaded.model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    return seen


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("attn", ["eager", "sdpa"])  # eager: masks are real tensors
def test_pass_through_capture_sees_the_kwargs_of_a_real_forward(family, attn):
    loaded = tiny_loaded(family, attn)
    ids = torch.randint(0, loaded.model.config.vocab_size, (1, 12))
    context = capture_layer_context(loaded.model, loaded.adapter, ids)
    reference = _kwargs_seen_in_a_full_forward(loaded, ids)
    for captured, seen in zip(context.kwargs, reference, strict=True):
        assert captured.keys() == _clean_kwargs(seen).keys() and captured
        for key, value in captured.items():
            _assert_same(value, seen[key])


def test_replayed_layers_reproduce_the_models_hidden_states(tiny):
    ids = torch.randint(0, tiny.model.config.vocab_size, (1, 12))
    context = capture_layer_context(tiny.model, tiny.adapter, ids)
    with torch.inference_mode():
        expected = tiny.model(input_ids=ids, output_hidden_states=True).hidden_states
        hidden = embed(tiny.model, tiny.adapter, ids)
        for index, layer in enumerate(tiny.adapter.layers(tiny.model)):
            by_blocks = hidden
            for kind in BLOCK_KINDS:
                by_blocks = run_block(tiny.adapter, layer, kind, by_blocks, context.kwargs[index])
            hidden = run_layer(layer, hidden, context.kwargs[index])
            torch.testing.assert_close(by_blocks, hidden, rtol=1e-5, atol=1e-5)
            if index + 1 < len(expected) - 1:  # the last entry is after the final norm
                torch.testing.assert_close(hidden, expected[index + 1], rtol=1e-5, atol=1e-5)
        final = tiny.adapter.final_hidden(tiny.model, hidden)
        torch.testing.assert_close(final, expected[-1], rtol=1e-5, atol=1e-5)


def test_capture_puts_back_an_existing_instance_forward(tiny):
    layer = tiny.adapter.layers(tiny.model)[0]
    original = layer.forward
    calls = []

    def wrapped(*args, **kwargs):  # what accelerate's offload hooks install
        calls.append(1)
        return original(*args, **kwargs)

    layer.forward = wrapped
    capture_layer_context(tiny.model, tiny.adapter, torch.tensor([[1, 2, 3]]))
    assert layer.__dict__["forward"] is wrapped
    for other in tiny.adapter.layers(tiny.model)[1:]:
        assert "forward" not in other.__dict__
    with torch.inference_mode():
        tiny.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert calls
