"""Depth pruning on the real SmolLM2-135M: fast search == naive search; pruned model generates."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from prunekit.methods.depth.calibration import settings_windows
from prunekit.methods.depth.common import block_units, unit_parameters
from prunekit.methods.depth.runner import DepthRunner
from prunekit.methods.depth.search import Target, greedy_search
from prunekit.methods.settings import CalibrationSettings
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import count_parameters
from prunekit.surgery.depth import remove_blocks

pytestmark = pytest.mark.real


def test_fast_search_equals_naive_search(smollm2_fp32, data_dir) -> None:
    # Tiny calibration keeps the naive oracle (a full forward per candidate) affordable on a
    # 2-core AVX2 CPU; equality, not the quality of the plan, is the point.
    settings = CalibrationSettings(calib="c4", n_samples=2, seqlen=16, seed=0)
    runner = DepthRunner(smollm2_fp32, settings_windows(smollm2_fp32, settings))
    units = block_units(runner, "both", set())
    params = unit_parameters(runner, units)
    target = Target(None, 2, count_parameters(smollm2_fp32.model))
    fast = greedy_search(runner, units, params, target, "ppl", desc=None)
    naive = greedy_search(runner, units, params, target, "ppl", naive=True, desc=None)
    assert [s["removed"] for s in fast.trajectory] == [s["removed"] for s in naive.trajectory]
    assert [s["calib_nll"] for s in fast.trajectory] == [s["calib_nll"] for s in naive.trajectory]
    fast_evals = sum(s["window_evals"] for s in fast.trajectory)
    assert fast_evals < sum(s["naive_window_evals"] for s in fast.trajectory)


def test_pruned_smollm2_generates_with_cache(smollm2_fp32) -> None:
    loaded = dataclasses.replace(smollm2_fp32, model=copy.deepcopy(smollm2_fp32.model))
    before = count_parameters(loaded.model)
    blocks = [BlockRef(0, "attn"), BlockRef(20, "attn"), BlockRef(25, "attn"), BlockRef(25, "mlp")]
    result = remove_blocks(loaded, blocks)
    assert before - count_parameters(loaded.model) == result.removed_parameters
    assert loaded.model.config.num_hidden_layers == 29
    inputs = loaded.tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        cached = loaded.model.generate(**inputs, max_new_tokens=10, do_sample=False)
        uncached = loaded.model.generate(
            **inputs, max_new_tokens=10, do_sample=False, use_cache=False
        )
    assert torch.equal(cached, uncached)
