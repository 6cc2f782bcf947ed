"""Depth methods streamed on the real SmolLM2-135M: the same removals as in memory, and the
streamed export reloads to the in-memory pruned model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from prunekit.api import prune, prune_streamed
from prunekit.export.load import load_pruned

pytestmark = pytest.mark.real

# Tiny calibration: the point is equality of the paths, not a good pruning. BlockPruner's
# default search (kl-per-param over blocks and whole layers), K=3.
SETTINGS = dict(blocks=3, calib="c4", n_samples=2, seqlen=16, seed=0)
# Below the model's size (540 MB in fp32): the weights are streamed, the states fit one chunk.
BELOW_MODEL_SIZE = 200 * 10**6


@pytest.fixture(scope="module")
def in_memory(smollm2_fp32, data_dir):
    """The in-memory run both streamed variants are compared with (searched once)."""
    loaded = dataclasses.replace(smollm2_fp32, model=copy.deepcopy(smollm2_fp32.model))
    return prune(loaded, "blockpruner", **SETTINGS)


@pytest.mark.parametrize("max_memory", [BELOW_MODEL_SIZE, 1])  # one chunk; one window per chunk
def test_streamed_blockpruner_equals_in_memory(smollm2_fp32, in_memory, tmp_path, max_memory):
    memory = in_memory
    streamed = prune_streamed(
        "smollm2-135m",
        "blockpruner",
        save=tmp_path / "pruned",
        dtype="fp32",
        device="cpu",
        max_memory=max_memory,
        **SETTINGS,
    )
    assert streamed.plan.removed_blocks == memory.plan.removed_blocks
    assert [s["calib_nll"] for s in streamed.plan.trajectory] == [
        s["calib_nll"] for s in memory.plan.trajectory
    ]
    reloaded = load_pruned(tmp_path / "pruned", dtype="fp32", device="cpu")
    ids = smollm2_fp32.tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = memory.model(ids).logits
        got = reloaded.model(ids).logits
    assert torch.equal(got, expected)


def test_batched_blockpruner_equals_batch_1(smollm2_fp32, in_memory):
    """Windows in one batch of 2: the plan of batch 1, the scores to rounding."""
    loaded = dataclasses.replace(smollm2_fp32, model=copy.deepcopy(smollm2_fp32.model))
    batched = prune(loaded, "blockpruner", batch_size=2, **SETTINGS)
    assert batched.plan.removed_blocks == in_memory.plan.removed_blocks
    assert batched.plan.extra["search"]["engine"]["batch_size"] == 2
    assert [s["calib_nll"] for s in batched.plan.trajectory] == pytest.approx(
        [s["calib_nll"] for s in in_memory.plan.trajectory], rel=1e-5
    )
