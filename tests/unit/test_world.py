"""The world of ranks: shares of the windows, and the two collectives (on 2 gloo ranks)."""

from __future__ import annotations

import pytest
import torch

from prunekit.engine.world import SINGLE, World
from prunekit.launcher import launched
from tests.unit.distributed_helpers import run_ranks


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("count", [0, 1, 3, 7, 8])
def test_shares_cover_every_item_once_in_order(size, count):
    items = list(range(count))
    shares = [World(rank=r, size=size).share(items) for r in range(size)]
    assert [item for share in shares for item in share] == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_process_does_not_communicate():
    tensor = torch.ones(3)
    assert SINGLE.sum_(tensor) is tensor and tensor.tolist() == [1.0, 1.0, 1.0]
    assert SINGLE.gather({2: 0.5}) == {2: 0.5}
    assert SINGLE.broadcast("x") == "x" and SINGLE.sum_int(4) == 4


def test_launcher_environment_is_recognised():
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"}
    assert launched(env) is not None
    assert launched({**env, "WORLD_SIZE": "1"}) is None
    assert launched({"RANK": "0"}) is None


def collectives(world: World) -> dict:
    summed = world.sum_(torch.full((2, 2), float(world.rank + 1), dtype=torch.float64))
    return {
        "sum": summed.tolist(),
        "gathered": world.gather({world.rank * 10: world.rank}),
        "broadcast": world.broadcast(f"from {world.rank}"),
        "tokens": world.sum_int(world.rank + 5),
        "traffic": dict(world.traffic),
    }


def test_two_ranks_hold_the_same_results():
    first, second = run_ranks(2, collectives)
    assert {k: v for k, v in first.items() if k != "traffic"} == {
        k: v for k, v in second.items() if k != "traffic"
    }
    assert first["sum"] == [[3.0, 3.0], [3.0, 3.0]]
    assert first["gathered"] == {0: 0, 10: 1}
    assert first["broadcast"] == "from 0" and first["tokens"] == 11
    assert first["traffic"]["sum_bytes"] == 2 * 4 * 8 + 2 * 8  # the 2x2 fp64 sum, the int64


def test_plan_memory_predicts_one_ranks_share():
    from dataclasses import replace

    from prunekit.memory import MemorySettings, plan_memory
    from prunekit.models.tiny import tiny_config

    config = tiny_config("llama")
    alone = MemorySettings(method="fasp", n_samples=3, seqlen=64, dtype="fp32")
    two = replace(alone, nproc=2)
    assert (alone.rank_samples, two.rank_samples) == (3, 2)  # 3 windows over 2 ranks
    assert replace(alone, n_samples=16, batch_size=4, nproc=3).rank_samples == 8  # whole batches

    def states(plan) -> int:
        return sum(t.bytes for t in plan.terms if t.name == "calibration states (in)")

    one_plan, two_plan = plan_memory(config, alone), plan_memory(config, two)
    assert states(two_plan) * 3 == states(one_plan) * 2
    assert two_plan.settings.n_samples == 3  # shown as asked
    grams = [t for t in two_plan.terms if t.name == "Gram sum over ranks"]
    assert grams and not [t for t in one_plan.terms if t.name == "Gram sum over ranks"]


def idle_rank_statistics(world: World) -> torch.Tensor:
    """A 800-wide Gram matrix (three blocks: off-diagonal ones mirrored) that only rank 0 fed."""
    from prunekit.engine.sequential import InputStatistics

    stats = InputStatistics(800, gram=True, fast_products=False)
    if world.rank == 0:
        stats.add_batch(torch.randn(40, 800, generator=torch.Generator().manual_seed(0)))
    stats.add_ranks(world)
    return stats.gram


def test_a_rank_without_windows_holds_the_whole_gram_matrix():
    first, second = run_ranks(2, idle_rank_statistics)
    assert torch.equal(first, second)
    assert torch.equal(second, second.T)  # mirrored, not zero below the diagonal blocks
