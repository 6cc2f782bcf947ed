"""Wanda-sp, FLAP and magnitude on the shared engine; settings, ratio targets and bad input."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import NumericalError, SettingsError, UnsupportedArchitectureError
from prunekit.methods.catalogue import get_method
from prunekit.methods.width.flap import ModuleScores, global_selection
from prunekit.report.accounting import parameter_counts, pruning_ratios
from tests.unit.width_helpers import (
    logits,
    masked_reference,
    prune_tiny,
    tiny_loaded,
    width_settings,
)

pytestmark = pytest.mark.usefixtures("data_dir")


@pytest.mark.parametrize("method", ["wanda-sp", "magnitude"])
def test_uniform_baselines_slice_equals_mask(family, method):
    pruned, dense, plan = prune_tiny(family, method, n_samples=2, seqlen=32)
    torch.testing.assert_close(
        logits(pruned.model), logits(masked_reference(dense, plan)), rtol=1e-4, atol=1e-4
    )


def test_wanda_sp_prunes_whole_kv_groups():
    _pruned, _, plan = prune_tiny("llama", "wanda-sp", sparsity=0.5, n_samples=2, seqlen=32)
    shapes = plan.extra["shapes"]["0"]
    assert (shapes["num_heads"], shapes["num_kv_heads"]) == (2, 1)  # 4/2 heads -> 2/1
    assert shapes["v_head_dim"] == shapes["head_dim"] == 16
    assert len(plan.kept_channels["0"]["attn_heads"]) == 1


def test_flap_compensates_with_a_new_bias_and_adapts_widths():
    pruned, _dense, plan = prune_tiny("llama", "flap", sparsity=0.3, n_samples=4, seqlen=32)
    layer = pruned.adapter.layers(pruned.model)[0]
    assert layer.mlp.down_proj.bias is not None  # stock Llama down_proj has none
    assert plan.extra["shapes"]["0"]["mlp_consumer_bias"]
    widths = {s["intermediate_size"] for s in plan.extra["shapes"].values()}
    assert all(0 < w < 96 for w in widths)
    assert plan.extra["restored_weights"] == "restored.safetensors"


def test_flap_global_selection_keeps_one_unit_per_module():
    modules = [
        ModuleScores(0, "mlp", torch.tensor([-1.0, 0.0, 1.0]), 10, torch.zeros(3)),
        ModuleScores(1, "mlp", torch.tensor([-2.0, -1.5]), 10, torch.zeros(2)),
    ]
    assert global_selection(modules, 25) == [[0, 1], [0]]
    assert global_selection(modules, 1000) == [[0, 1], [0]]


@pytest.mark.parametrize("method", ["fasp", "wanda-sp", "flap", "magnitude"])
def test_ratio_target_is_reached(method):
    loaded = tiny_loaded("llama")
    before = parameter_counts(loaded.model, loaded.adapter)
    settings = width_settings(method, sparsity=None, ratio=0.15, n_samples=2, seqlen=32)
    get_method(method).prune(loaded, settings)
    achieved = pruning_ratios(before, parameter_counts(loaded.model, loaded.adapter))
    assert 0.14 <= achieved["ratio_total"] < 0.3


def test_fasp_ratio_picks_the_smallest_sufficient_sparsity():
    loaded = tiny_loaded("llama")
    before = parameter_counts(loaded.model, loaded.adapter)
    plan = get_method("fasp").prune(
        loaded, width_settings(sparsity=None, ratio=0.1, n_samples=2, seqlen=32, restore=False)
    )
    assert (
        pruning_ratios(before, parameter_counts(loaded.model, loaded.adapter))["ratio_total"] >= 0.1
    )
    assert 0.0 < plan.extra["sparsity"] < 0.3


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_sparsity_outside_range_is_rejected(bad):
    with pytest.raises(SettingsError, match="sparsity"):
        width_settings(sparsity=bad)


def test_unreachable_ratio_and_bad_targets_are_rejected():
    loaded = tiny_loaded("llama")
    with pytest.raises(SettingsError, match="out of reach"):
        get_method("fasp").prune(loaded, width_settings(sparsity=None, ratio=0.95))
    with pytest.raises(SettingsError, match="targets"):
        get_method("fasp").prune(loaded, width_settings(targets=["qk"]))


def test_layer_without_coupled_structure_names_the_module():
    loaded = tiny_loaded("llama")
    loaded.adapter.layers(loaded.model)[2].mlp.up_proj = torch.nn.Linear(64, 50, bias=False)
    with pytest.raises(UnsupportedArchitectureError, match="layer 2.*up_proj|layer 2.*50"):
        get_method("fasp").prune(loaded, width_settings())


def test_nan_statistics_fail_loudly():
    loaded = tiny_loaded("llama")
    with torch.no_grad():
        loaded.adapter.layers(loaded.model)[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="layer 1"):
        get_method("fasp").prune(loaded, width_settings(n_samples=2, seqlen=32))
