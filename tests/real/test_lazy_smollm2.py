"""The real SmolLM2 (GGUF alias -> dequantized cache) opened lazily: parts equal the eager load."""

from __future__ import annotations

import pytest
import torch

from prunekit.models.lazy import EMBEDDINGS, HEAD, REST, LazyModel

pytestmark = pytest.mark.real


def test_layer_zero_and_tied_head_equal_the_eager_model(smollm2_fp32):
    lazy = LazyModel.open("smollm2-135m", dtype="fp32", device="cpu")
    assert str(lazy.directory) == smollm2_fp32.source
    eager = dict(smollm2_fp32.model.named_parameters(remove_duplicate=False)) | dict(
        smollm2_fp32.model.named_buffers(remove_duplicate=False)
    )
    for part in (0, EMBEDDINGS, REST, HEAD):
        with lazy.onloaded(part):
            got = dict(lazy.model.named_parameters(remove_duplicate=False)) | dict(
                lazy.model.named_buffers(remove_duplicate=False)
            )
            for name in lazy.tensor_names(part):
                assert torch.equal(got[name], eager[name]), name
    # SmolLM2 ties its head to the embedding: one tensor, counted once.
    assert lazy.part_bytes(EMBEDDINGS, HEAD) == lazy.part_bytes(EMBEDDINGS)
    assert lazy.onloaded_bytes() == 0
