"""A rank that fails ends the run on every rank, with a one-line error and no hang, and nothing
half-written in the run directory."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

import prunekit
from prunekit.engine.world import World
from prunekit.errors import RankFailure
from prunekit.models.loading import from_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from tests.unit.distributed_helpers import Failed, start_ranks

pytestmark = pytest.mark.usefixtures("data_dir")

TIMEOUT = timedelta(seconds=60)
SETTINGS = dict(ratio=0.2, n_samples=3, seqlen=24, calib="wikitext2")


def prune_on_rank_zero(world: World, out: str, how_rank_one_fails: str) -> dict:
    """Rank 0 prunes with a run directory; rank 1 fails as told, before its first collective."""
    if world.rank == 1:
        if how_rank_one_fails == "killed":
            os._exit(9)  # as a killed process: no exception, no cleanup
        prunekit.prune("/nonexistent/model", "fasp", world=world, **SETTINGS)
    loaded = from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")
    started = time.perf_counter()
    try:
        prunekit.prune(loaded, "fasp", world=world, out=out, **SETTINGS)
    except RankFailure as error:
        return {"error": str(error), "seconds": time.perf_counter() - started}
    return {"error": None}


@pytest.mark.parametrize("how", ["bad-input", "killed"])
def test_a_failed_rank_ends_the_others_with_one_line(how, tmp_path):
    out = tmp_path / "run"
    zero, one = start_ranks(2, prune_on_rank_zero, str(out), how, timeout=TIMEOUT)
    assert isinstance(one, Failed)
    if how == "bad-input":
        assert "ModelNotFoundError" in one.text or "not found" in one.text.lower()
    else:
        assert "exited with code 9" in one.text
    assert zero["error"] is not None, "rank 0 finished although rank 1 never took part"
    assert "\n" not in zero["error"]
    assert "another of the 2 ranks failed" in zero["error"]
    assert zero["seconds"] < TIMEOUT.total_seconds()  # the peer's exit is seen, not waited for
    assert not out.exists()  # nothing half-written
    assert not list(Path(tmp_path).iterdir())
