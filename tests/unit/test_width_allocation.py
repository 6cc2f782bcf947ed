"""FASP's allocation by measured cost (``--allocation cost``) against the uniform allocation."""

from __future__ import annotations

import copy
import itertools
import math
import warnings

import pytest
import torch

from prunekit.errors import SettingsError
from prunekit.methods.catalogue import get_method
from prunekit.methods.width.allocation import CostCurve, allocate, convex_costs, kept_steps
from prunekit.methods.width.selection import kept_count
from prunekit.models.loading import from_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.report.accounting import parameter_counts
from tests.unit.width_helpers import logits, width_settings

pytestmark = pytest.mark.usefixtures("data_dir")


def one_kv_head():
    """A tiny Llama with one kv head: every value channel feeds all 4 query heads."""
    model = tiny_model("llama", num_key_value_heads=1)
    return from_model(model, tiny_tokenizer(), spec="tiny-llama-1kv")


def prune(loaded, **settings):
    settings.setdefault("allocation", None)  # FASP's own default unless the test names one
    options = width_settings(n_samples=16, **settings)
    options.validate()
    with warnings.catch_warnings():  # few tokens per restored column on a tiny model: expected
        warnings.simplefilter("ignore", UserWarning)
        return get_method("fasp").prune(loaded, options)


def removed_fractions(plan) -> tuple[float, float]:
    """(MLP channels removed, value channels removed) as fractions of each group's total."""
    mlp = [len(e["mlp"]) for e in plan.kept_channels.values()]
    value = [len(e["attn_v"][0]) for e in plan.kept_channels.values()]
    return 1 - sum(mlp) / (96 * len(mlp)), 1 - sum(value) / (16 * len(value))


def curve(index, kind, width, unit_params, costs, heads=1) -> CostCurve:
    removed = tuple(round(width * s) for s in (0, 0.25, 0.5, 0.75))
    return CostCurve(index, kind, width, heads, unit_params, removed, (0.0, *costs))


def test_expensive_value_channels_keep_their_width():
    """Synthetic curves: the value group costs 100× the MLP per parameter, so the MLP pays."""
    cheap = curve(0, "mlp", 96, 10, (1.0, 2.0, 3.0))
    dear = curve(0, "attn", 16, 10, (100.0, 200.0, 300.0))
    widths = allocate([cheap, dear], target_params=24 * 10, multiple_of=1)
    assert widths == {(0, "mlp"): 72, (0, "attn"): 16}
    # The same curves with the costs swapped: the value channels go first.
    cheap_v = curve(0, "attn", 16, 10, (1e-3, 2e-3, 3e-3))
    widths = allocate([cheap, cheap_v], target_params=4 * 10, multiple_of=1)
    assert widths == {(0, "mlp"): 96, (0, "attn"): 12}


def test_allocation_meets_the_target_within_one_step():
    curves = [
        curve(i, kind, 96 if kind == "mlp" else 16, 7, (0.1 * (i + 1), 0.5, 2.0), heads=2)
        for i in range(3)
        for kind in ("mlp", "attn")
    ]
    for target in (1, 500, 2222, 3528):  # 3528: 75 % of every group, all that is measured
        widths = allocate(curves, target, multiple_of=1)
        removed = sum((c.width - widths[c.key]) * c.heads * c.unit_params for c in curves)
        assert target <= removed < target + 2 * 7  # one channel in each of 2 kv heads
    with pytest.raises(SettingsError, match="out of reach"):
        allocate(curves, 3529, multiple_of=1)


def test_convex_costs_are_a_nondecreasing_convex_minorant():
    removed = (0, 10, 20, 30, 40)
    ys = convex_costs(removed, (0.0, 5.0, 4.0, 6.0, 20.0))  # a dip (noise) and a bump
    slopes = [b - a for a, b in itertools.pairwise(ys)]
    assert all(s >= 0 for s in slopes)
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(slopes))
    assert ys[0] == 0.0 and ys[-1] == 20.0


def test_kept_steps_are_kernel_friendly():
    assert kept_steps(100, 40, 16) == [100, 96, 80, 64, 48]
    assert kept_steps(96, 24, 8)[:3] == [96, 88, 80]
    assert all(k % 8 == 0 for k in kept_steps(96, 24, 8))


def test_one_kv_head_value_channels_get_less_sparsity_than_the_mlp():
    plan = prune(one_kv_head(), ratio=0.2, sparsity=None, allocation="cost")
    mlp, value = removed_fractions(plan)
    assert value < mlp, (mlp, value)
    # ... because they cost more: at the same removed fraction, the value curve is dearer per
    # parameter than the MLP's in most layers (what the allocation read).
    curves = plan.extra["allocation"]["curves"]
    dearer = 0
    for layer in {c["layer"] for c in curves}:
        per_param = {}
        for c in (c for c in curves if c["layer"] == layer):
            unit = 16 * 64 + 4 * 64 if c["kind"] == "attn" else 3 * 64
            per_param[c["kind"]] = c["cost"][2] / (c["removed"][2] * unit)
        dearer += per_param["attn"] > per_param["mlp"]
    assert dearer >= 3


def test_allocated_fasp_hits_the_ratio_target():
    loaded = one_kv_head()
    before = parameter_counts(loaded.model, loaded.adapter).total
    plan = prune(loaded, ratio=0.2, sparsity=None, allocation="cost")
    after = parameter_counts(loaded.model, loaded.adapter).total
    achieved = 1 - after / before
    one_mlp_channel = 3 * 64  # the largest step of this model at --multiple-of 1
    assert 0.2 <= achieved < 0.2 + one_mlp_channel / before
    assert plan.extra["allocation"]["target_params"] == math.ceil(0.2 * before)
    # The uniform allocation overshoots more (every layer moves at once).
    uniform = one_kv_head()
    prune(uniform, ratio=0.2, sparsity=None, allocation="uniform")
    assert 1 - parameter_counts(uniform.model, uniform.adapter).total / before > achieved


def test_sparsity_target_spends_the_uniform_budget():
    """--sparsity with cost allocation removes what the uniform column ratio would (± a step)."""
    uniform, allocated = one_kv_head(), one_kv_head()
    prune(uniform, sparsity=0.3)
    prune(allocated, sparsity=0.3, allocation="cost")
    removed = [
        sum(p.numel() for p in tiny_model("llama", num_key_value_heads=1).parameters())
        - parameter_counts(m.model, m.adapter).total
        for m in (uniform, allocated)
    ]
    assert removed[0] <= removed[1] < removed[0] + 3 * 64


def test_cost_allocation_is_the_default():
    default, explicit = one_kv_head(), one_kv_head()
    plan_default = prune(default, ratio=0.2, sparsity=None)
    plan_cost = prune(explicit, ratio=0.2, sparsity=None, allocation="cost")
    assert plan_default.kept_channels == plan_cost.kept_channels
    assert plan_default.settings["allocation"] == "cost"  # the plan records what ran
    assert plan_default.extra["allocation"]["mode"] == "cost"


def test_uniform_allocation_keeps_the_uniform_widths():
    plan_uniform = prune(one_kv_head(), sparsity=0.3, allocation="uniform")
    for entry in plan_uniform.kept_channels.values():
        assert len(entry["mlp"]) == kept_count(96, 0.3)
        assert len(entry["attn_v"][0]) == kept_count(16, 0.3)
    assert "allocation" not in plan_uniform.extra
    assert plan_uniform.settings["allocation"] == "uniform"


def test_cost_allocation_is_deterministic():
    first, second = one_kv_head(), one_kv_head()
    plan_a = prune(first, ratio=0.25, sparsity=None, allocation="cost")
    plan_b = prune(second, ratio=0.25, sparsity=None, allocation="cost")
    assert plan_a.kept_channels == plan_b.kept_channels
    assert plan_a.extra["allocation"] == plan_b.extra["allocation"]
    torch.testing.assert_close(logits(first.model), logits(second.model), rtol=0, atol=0)


def test_cost_allocation_respects_multiple_of():
    plan = prune(one_kv_head(), ratio=0.2, sparsity=None, allocation="cost", multiple_of=8)
    widths = plan.extra["allocation"]["widths"]
    assert any(w["mlp"] < 96 for w in widths.values())
    for entry in plan.kept_channels.values():
        assert len(entry["mlp"]) % 8 == 0
        assert len(entry["attn_v"][0]) % 8 == 0


def test_cost_allocation_replays_from_the_plan():
    """The plan (per-layer widths) rebuilds the same pruned model on a fresh copy."""
    from prunekit.surgery import apply_plan

    loaded = one_kv_head()
    fresh = from_model(copy.deepcopy(loaded.model), loaded.tokenizer, spec=loaded.spec)
    plan = prune(loaded, ratio=0.2, sparsity=None, allocation="cost", restore=False)
    apply_plan(fresh, plan)
    torch.testing.assert_close(logits(fresh.model), logits(loaded.model), rtol=1e-5, atol=1e-5)


def test_unknown_allocation_is_refused():
    with pytest.raises(SettingsError, match="--allocation must be uniform or cost"):
        width_settings(allocation="global").validate()


def test_wanda_sp_does_not_take_allocation():
    with pytest.raises(SettingsError, match="--allocation is not a setting of wanda-sp"):
        get_method("wanda-sp").check_settings(["allocation"])


def test_streamed_default_is_the_cost_allocation(tmp_path, caplog):
    """Streamed, the default is cost as in memory (no fallback, nothing logged): the same
    per-group widths and kept channels, and the export reloads to the in-memory model."""
    from prunekit.api import prune as prune_api
    from prunekit.api import prune_streamed
    from prunekit.export.load import load_pruned
    from prunekit.models.loading import load_model
    from tests.unit.test_streamed_width import SETTINGS, TOLERANCE, save_small_shards

    source = save_small_shards("llama", tmp_path / "dense")
    memory = prune_api(load_model(str(source), dtype="fp32", device="cpu"), "fasp", **SETTINGS)
    with caplog.at_level("WARNING", logger="prunekit.methods.width.fasp"):
        streamed = prune_streamed(
            str(source), "fasp", save=tmp_path / "pruned", dtype="fp32", device="cpu", **SETTINGS
        )
    assert not caplog.records
    assert streamed.plan.settings["allocation"] == memory.plan.settings["allocation"] == "cost"
    assert streamed.plan.extra["allocation"]["widths"] == memory.plan.extra["allocation"]["widths"]
    assert streamed.plan.kept_channels == memory.plan.kept_channels
    reloaded = load_pruned(tmp_path / "pruned", dtype="fp32", device="cpu")
    torch.testing.assert_close(logits(reloaded.model), logits(memory.model), **TOLERANCE)
