"""Every width method plans the same in memory and streamed, and at batch 1 and batch 3.

Streamed runs use a sink that keeps each finished layer's tensors (no export), so every family
is compared, including those whose heterogeneous widths the export refuses; the export path
itself is tested in test_streamed_width.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.api import lazy_loaded
from prunekit.engine.residency import Streamed
from prunekit.methods.catalogue import get_method
from prunekit.methods.settings import MethodSettings
from prunekit.models.lazy import LazyModel, Part
from prunekit.models.loading import LoadedModel, load_model
from prunekit.plan import PruningPlan
from tests.unit.test_streamed_width import TOLERANCE, save_small_shards

pytestmark = pytest.mark.usefixtures("data_dir")

# A ratio target (not a column ratio) so the parameter count of the streamed skeleton is used.
CALIBRATION = dict(ratio=0.2, n_samples=4, seqlen=32, calib="wikitext2", seed=0)
METHODS = {
    "fasp-cost": ("fasp", dict(allocation="cost")),
    "fasp-uniform": ("fasp", dict(allocation="uniform")),
    "wanda-sp": ("wanda-sp", {}),
    "flap": ("flap", {}),
    "magnitude": ("magnitude", {}),
}
# Other batch sizes sum the statistics in another order: last-bit differences, amplified by the
# least-squares restoration's conditioning (at most 3e-5 of a tensor's largest weight measured,
# on 4 windows of 32 tokens) and carried to the next layers; the kept indices must be equal.
BATCH_RELATIVE = 2e-4


def settings_of(variant: str, **overrides) -> tuple[str, MethodSettings]:
    method, extra = METHODS[variant]
    values = {**CALIBRATION, **extra, **overrides}
    if method == "magnitude":  # no data: only the target
        values = {"ratio": values["ratio"]}
    return method, get_method(method).make_settings(values)


class KeptLayers(dict):
    """A streamed run's sink: each finished layer's tensors, by layer index (once per layer)."""

    def __call__(self, part: Part, module: nn.Module) -> None:
        if isinstance(part, int):
            assert part not in self, f"layer {part} handed to the sink twice"
            self[part] = {k: v.detach().clone() for k, v in module.state_dict().items()}


def in_memory(source: Path, variant: str, **overrides) -> tuple[LoadedModel, PruningPlan]:
    method, settings = settings_of(variant, **overrides)
    loaded = load_model(str(source), dtype="fp32", device="cpu")
    return loaded, get_method(method).prune(loaded, settings)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Sharded dense checkpoints and in-memory runs, made once per module and shared by the
    tests (each family's checkpoint saved once; each in-memory run done once)."""
    root = tmp_path_factory.mktemp("parity")
    sources: dict[str, Path] = {}
    done: dict[tuple, tuple[dict, PruningPlan]] = {}

    def source(family: str) -> Path:
        if family not in sources:
            sources[family] = save_small_shards(family, root / family)
        return sources[family]

    def memory(family: str, variant: str, batch_size: int = 1) -> tuple[dict, PruningPlan]:
        key = (family, variant, batch_size)
        if key not in done:
            loaded, plan = in_memory(source(family), variant, batch_size=batch_size)
            done[key] = (layer_tensors(loaded), plan)
        return done[key]

    return source, memory


def streamed(source: Path, variant: str, **overrides) -> tuple[KeptLayers, PruningPlan, LazyModel]:
    method, settings = settings_of(variant, **overrides)
    lazy = LazyModel.open(str(source), dtype="fp32", device="cpu")
    loaded = lazy_loaded(lazy, str(source))
    layers = KeptLayers()
    loaded.residency = Streamed(lazy, layers)
    return layers, get_method(method).prune(loaded, settings), lazy


def layer_tensors(loaded: LoadedModel) -> dict[int, dict[str, torch.Tensor]]:
    layers = loaded.adapter.layers(loaded.model)
    return {i: layer.state_dict() for i, layer in enumerate(layers)}


def assert_same_plan(got: PruningPlan, expected: PruningPlan) -> None:
    assert got.kept_channels == expected.kept_channels
    assert got.kept_channels  # something was pruned
    assert got.extra["shapes"] == expected.extra["shapes"]
    assert got.extra.get("allocation", {}).get("widths") == expected.extra.get(
        "allocation", {}
    ).get("widths")


def assert_same_layers(got: dict, expected: dict, tolerance: dict) -> None:
    assert set(got) == set(expected)
    for index, tensors in expected.items():
        assert set(got[index]) == set(tensors), index
        for name, tensor in tensors.items():
            torch.testing.assert_close(got[index][name], tensor, **tolerance, msg=f"{index} {name}")


def assert_close_to_scale(got: dict, expected: dict, relative: float) -> None:
    """Each tensor within ``relative`` of its own largest magnitude (a wrong kept set or a
    missed restoration is off by the order of the weights themselves)."""
    assert set(got) == set(expected)
    for index, tensors in expected.items():
        assert set(got[index]) == set(tensors), index
        for name, tensor in tensors.items():
            error = (got[index][name] - tensor).abs().max().item()
            assert error <= relative * tensor.abs().max().item(), (index, name, error)


# FASP's uniform widths streamed, exported and reloaded: test_streamed_width.py, every family.
@pytest.mark.parametrize("variant", [v for v in METHODS if v != "fasp-uniform"])
def test_streamed_plan_equals_in_memory(family, variant, runs):
    source, memory = runs
    expected_layers, expected_plan = memory(family, variant)
    layers, plan, lazy = streamed(source(family), variant)
    assert_same_plan(plan, expected_plan)
    # Every layer reached the sink once, pruned (a recording pass hands over nothing).
    assert_same_layers(layers, expected_layers, TOLERANCE)
    assert lazy.onloaded_bytes() == 0  # every part read for a pass was released


# The cost pass and FASP's Gram statistics, FLAP's means and variances, Wanda-sp's norms (FASP's
# uniform widths run the same pruning pass as its cost allocation).
@pytest.mark.parametrize("variant", ["fasp-cost", "flap", "wanda-sp"])
def test_batched_statistics_plan_equals_batch_one(family, variant, runs):
    _, memory = runs
    one_layers, one_plan = memory(family, variant)
    three_layers, three_plan = memory(family, variant, batch_size=3)  # batches of 3 and 1
    assert three_plan.settings["batch_size"] == 3
    assert_same_plan(three_plan, one_plan)
    assert_close_to_scale(three_layers, one_layers, BATCH_RELATIVE)


def test_streamed_batched_cost_allocation_equals_in_memory_batch_one(runs):
    source, memory = runs
    expected_layers, expected_plan = memory("llama", "fasp-cost")
    layers, plan, _ = streamed(source("llama"), "fasp-cost", batch_size=3)
    assert_same_plan(plan, expected_plan)
    assert_close_to_scale(layers, expected_layers, BATCH_RELATIVE)


def test_batch_size_is_validated_and_refused_where_unused():
    from prunekit.errors import SettingsError

    with pytest.raises(SettingsError, match="--batch-size must be at least 1"):
        get_method("fasp").make_settings(batch_size=0)
    with pytest.raises(SettingsError, match="--batch-size is not a setting of magnitude"):
        get_method("magnitude").check_settings(["batch_size"])


def test_cli_prune_passes_batch_size(runs, monkeypatch):
    from typer.testing import CliRunner

    import prunekit.api
    from prunekit.cli import app

    seen = {}

    def fake_prune(model, method, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(prunekit.api, "prune", fake_prune)
    source, _ = runs
    args = ["prune", "--method", "wanda-sp", "--model", str(source("llama")), "--sparsity", "0.3"]
    CliRunner().invoke(app, [*args, "--batch-size", "3", "--device", "cpu"])
    assert seen["batch_size"] == 3


def test_memory_model_streams_every_width_method():
    from prunekit.memory import MemorySettings, plan_memory
    from prunekit.models.tiny import tiny_config

    config = tiny_config("llama")
    for method in ("fasp", "wanda-sp", "flap", "magnitude"):
        plan = plan_memory(config, MemorySettings(method=method, streamed=True, n_samples=4))
        names = {t.name for t in plan.terms}
        assert "weights (one layer)" in names and "weights (whole model)" not in names, method

    def solve(sparsity: float) -> int:
        plan = plan_memory(config, MemorySettings(method="fasp", sparsity=sparsity))
        return sum(t.bytes for t in plan.terms if t.name == "restoration solve")

    # FASP's cost pass restores every group at 7/8 of its width, whatever the target.
    assert solve(0.5) == solve(0.125) < solve(0.05)
