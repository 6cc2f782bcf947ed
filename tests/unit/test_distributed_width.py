"""Width and combined methods on 2 gloo ranks plan as one process does (every tiny family).

Each rank runs its share of the calibration windows (3 windows over 2 ranks: uneven); the
statistics (Gram matrices, sums, counts, FASP's per-token energies) are summed over the ranks
before every decision. The sum is the one-process sum in another order, so the kept channels
must be equal and the restored weights equal to float tolerance (as across batch sizes:
test_width_parity.py). All cases run in one spawn of the 2 ranks (a module fixture).
"""

from __future__ import annotations

import pytest
import torch

from prunekit.engine.world import World
from prunekit.methods.catalogue import get_method
from prunekit.models.loading import from_model
from prunekit.models.tiny import ALL_TINY_FAMILIES, tiny_model, tiny_tokenizer
from prunekit.pipeline.apply import run_method
from tests.unit.distributed_helpers import run_ranks
from tests.unit.test_width_parity import BATCH_RELATIVE, assert_close_to_scale
from tests.unit.test_width_parity import METHODS as WIDTH_METHODS

pytestmark = pytest.mark.usefixtures("data_dir")

CALIBRATION = dict(ratio=0.2, n_samples=3, seqlen=24, calib="wikitext2", seed=0)
# The width methods with data (test_width_parity.py's, magnitude aside), and more.
METHODS = {
    **{variant: run for variant, run in WIDTH_METHODS.items() if variant != "magnitude"},
    # One window over 2 ranks: rank 1 runs nothing and still sums and decides with rank 0.
    "fasp-one-window": ("fasp", dict(allocation="cost", n_samples=1)),
    "depth-then-width": ("blockpruner+fasp", dict(ratio=0.3)),
    "width-then-depth": ("fasp+blockpruner", dict(ratio=0.3)),
}
# Every family with FASP's default; the other methods on two families (their statistics are
# the same sums on every family).
CASES = [(family, "fasp-cost") for family in ALL_TINY_FAMILIES] + [
    (family, variant)
    for family in ("llama", "qwen2")
    for variant in METHODS
    if variant != "fasp-cost"
]


def prune_case(family: str, variant: str, world: World | None) -> dict:
    """The plan's decisions and the pruned layers of one case, on ``world`` (None: alone)."""
    method, extra = METHODS[variant]
    loaded = from_model(tiny_model(family), tiny_tokenizer(), spec=f"tiny-{family}")
    loaded.world = world
    settings = get_method(method).make_settings(**{**CALIBRATION, **extra})
    plan = run_method(get_method(method), loaded, settings)
    if plan.stages:  # a combined method: each stage's decision
        plan.kept_channels = [
            s.get("removed_blocks") or s.get("kept_channels") for s in plan.stages
        ]
        plan.extra["calibration_tokens"] = None
    layers = loaded.adapter.layers(loaded.model)
    return {
        "kept_channels": plan.kept_channels,
        "widths": plan.extra.get("allocation", {}).get("widths"),
        "tokens": plan.extra["calibration_tokens"],
        "layers": {i: layer.state_dict() for i, layer in enumerate(layers)},
    }


def every_case(world: World) -> dict:
    return {case: prune_case(*case, world) for case in CASES}


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return run_ranks(2, every_case)


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_two_ranks_plan_as_one_process(family, variant, two_ranks):
    alone = prune_case(family, variant, None)
    first, second = (rank[(family, variant)] for rank in two_ranks)
    assert alone["kept_channels"]  # something was pruned
    for got in (first, second):
        assert got["kept_channels"] == alone["kept_channels"]
        assert got["widths"] == alone["widths"]
        assert got["tokens"] == alone["tokens"]
        assert_close_to_scale(got["layers"], alone["layers"], BATCH_RELATIVE)
    # The ranks decided from the same summed statistics: the same weights, bit for bit.
    for index, tensors in first["layers"].items():
        for name, tensor in tensors.items():
            assert torch.equal(tensor, second["layers"][index][name]), (index, name)


def unsummed_case(world: World) -> dict:
    """FASP's default on llama with each rank deciding from its own windows' statistics."""
    from prunekit.engine.sequential import InputStatistics

    InputStatistics.add_ranks = lambda self, world: None
    return prune_case("llama", "fasp-cost", world)


def test_ranks_without_the_sum_plan_otherwise():
    """Negative control: without the sum over ranks, each rank plans from its own share."""
    alone = prune_case("llama", "fasp-cost", None)
    first, second = run_ranks(2, unsummed_case)
    assert first["kept_channels"] != alone["kept_channels"]
    assert first["kept_channels"] != second["kept_channels"]


def streamed_fasp(world: World, source: str) -> dict:
    """FASP's default on a model streamed from its shards, each finished layer kept by a sink."""
    from prunekit.api import lazy_loaded
    from prunekit.engine.residency import Streamed
    from prunekit.models.lazy import LazyModel
    from tests.unit.test_width_parity import KeptLayers

    lazy = LazyModel.open(source, dtype="fp32", device="cpu")
    loaded = lazy_loaded(lazy, source)
    loaded.world = world
    layers = KeptLayers()
    loaded.residency = Streamed(lazy, layers)
    method, extra = METHODS["fasp-cost"]
    settings = get_method(method).make_settings(**{**CALIBRATION, **extra})
    plan = run_method(get_method(method), loaded, settings)
    return {"kept_channels": plan.kept_channels, "layers": dict(layers)}


def test_two_ranks_streamed_plan_as_one_process_in_memory(tmp_path):
    from tests.unit.test_streamed_depth import save_small_shards

    source = str(save_small_shards("llama", tmp_path / "llama"))
    alone = prune_case("llama", "fasp-cost", None)
    first, second = run_ranks(2, streamed_fasp, source)
    for got in (first, second):
        assert got["kept_channels"] == alone["kept_channels"]
        assert_close_to_scale(got["layers"], alone["layers"], BATCH_RELATIVE)
