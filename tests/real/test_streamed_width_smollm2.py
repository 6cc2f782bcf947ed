"""FASP's default (the cost allocation) streamed on the real SmolLM2-135M under a memory budget
below the model's size: the same kept channels as in memory, and the export reloads to the
in-memory pruned model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from prunekit.api import prune, prune_streamed
from prunekit.export.load import load_pruned
from prunekit.memory import MemoryBudget

pytestmark = [pytest.mark.real, pytest.mark.usefixtures("data_dir")]

# Few calibration tokens: the point is the equality of the two paths, not a good pruning.
SETTINGS = dict(ratio=0.15, calib="c4", n_samples=4, seqlen=128, seed=0)
BUDGET = "400MB"  # the fp32 model is ~540 MB


def test_streamed_fasp_default_under_budget_equals_in_memory(smollm2_fp32, tmp_path):
    model_bytes = sum(p.numel() * p.element_size() for p in smollm2_fp32.model.parameters())
    budget = MemoryBudget.parse(BUDGET)
    assert budget.compute_limit("cpu") < model_bytes
    loaded = dataclasses.replace(smollm2_fp32, model=copy.deepcopy(smollm2_fp32.model))
    memory = prune(loaded, "fasp", **SETTINGS)
    streamed = prune_streamed(
        "smollm2-135m",
        "fasp",
        save=tmp_path / "pruned",
        dtype="fp32",
        device="cpu",
        budget=budget,
        **SETTINGS,
    )
    assert streamed.report["memory"]["mode"] == "streamed"
    assert streamed.report["memory"]["predicted"]["host_peak_bytes"] <= budget.host_limit("cpu")
    assert streamed.plan.settings["allocation"] == memory.plan.settings["allocation"] == "cost"
    widths = streamed.plan.extra["allocation"]["widths"]
    assert widths == memory.plan.extra["allocation"]["widths"]
    assert len({w["mlp"] for w in widths.values()}) > 1  # the allocation really varies
    assert streamed.plan.kept_channels == memory.plan.kept_channels
    reloaded = load_pruned(tmp_path / "pruned", dtype="fp32", device="cpu")
    ids = smollm2_fp32.tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = memory.model(ids).logits
        got = reloaded.model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
