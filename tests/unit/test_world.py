"""The world of ranks: shares of the windows, and the two collectives (on 2 gloo ranks)."""

from __future__ import annotations

import pytest
import torch

from prunekit.engine.world import SINGLE, World, launched_by_torchrun
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
    assert launched_by_torchrun(env)
    assert not launched_by_torchrun({**env, "WORLD_SIZE": "1"})
    assert not launched_by_torchrun({"RANK": "0"})


def collectives(world: World) -> dict:
    summed = world.sum_(torch.full((2, 2), float(world.rank + 1), dtype=torch.float64))
    return {
        "sum": summed.tolist(),
        "gathered": world.gather({world.rank * 10: world.rank}),
        "broadcast": world.broadcast(f"from {world.rank}"),
        "tokens": world.sum_int(world.rank + 5),
    }


def test_two_ranks_hold_the_same_results():
    first, second = run_ranks(2, collectives)
    assert first == second
    assert first["sum"] == [[3.0, 3.0], [3.0, 3.0]]
    assert first["gathered"] == {0: 0, 10: 1}
    assert first["broadcast"] == "from 0" and first["tokens"] == 11
