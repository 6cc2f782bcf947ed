"""Depth methods on 2 gloo ranks plan exactly as one process does, bit for bit.

One ``run_ranks`` call runs every case on both ranks (a spawn costs seconds); the parent runs
the same cases in one process and compares: the removal order, the kept layers and every
trajectory loss exactly (the ranks gather per-window values and sum them in window order, so
the arithmetic is the one-process arithmetic). 3 calibration windows over 2 ranks: rank 0 runs
two, rank 1 one (uneven). The cases cover every family for BlockPruner's default and paper
settings, SLEB and ShortGPT; llama and qwen2 for layer-PPL, RM, rm-block and bi-block; the
two-pass step (chunks of one batch per rank), a dense pass chunked unlike the steps, batches of
2 windows, the naive oracle and the exhaustive step, and streamed models (one under a state
budget); and a search interrupted and resumed from rank 0's checkpoint. Stand-in candidates
(FakeRunner) check the step's bookkeeping at every chunking, including a rank that stops a
candidate early.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunekit.api import lazy_loaded
from prunekit.engine.residency import Streamed
from prunekit.engine.world import World
from prunekit.methods.catalogue import get_method
from prunekit.methods.depth import blockpruner as blockpruner_module
from prunekit.methods.depth.scores import Criterion
from prunekit.methods.depth.step import score_step
from prunekit.models.lazy import LazyModel
from prunekit.models.loading import from_model
from prunekit.models.tiny import ALL_TINY_FAMILIES, tiny_config, tiny_model, tiny_tokenizer
from prunekit.pipeline.apply import run_method
from prunekit.pipeline.checkpoints import RunCheckpoints
from prunekit.report.run_dir import PARTIAL_PLAN_FILE
from tests.unit.depth_helpers import one_thread  # noqa: F401  (as the ranks: one thread)
from tests.unit.distributed_helpers import run_ranks
from tests.unit.test_depth_search import LOWER, TABLE, FakeRunner, _c
from tests.unit.test_streamed_depth import save_small_shards

pytestmark = pytest.mark.usefixtures("data_dir")

CALIB = dict(n_samples=3, seqlen=24, calib="wikitext2", seed=0, blocks=2)
PAPER = dict(criterion="ppl", candidates="blocks")
# A budget of 6 window states: the KL dense pass (3 states a window: 2 + the dense finals) gets
# chunks of 2 windows per rank, a step of 3 or more candidates chunks of 1.
STATES_2_OF_1 = 6 * CALIB["seqlen"] * tiny_config("llama").hidden_size * 4
# (name, family, method, settings, streamed)
CASES = (
    [(f"blockpruner/{f}", f, "blockpruner", {}, False) for f in ALL_TINY_FAMILIES]
    + [(f"blockpruner-paper/{f}", f, "blockpruner", PAPER, False) for f in ALL_TINY_FAMILIES]
    + [(f"sleb/{f}", f, "sleb", {}, False) for f in ALL_TINY_FAMILIES]
    + [(f"shortgpt/{f}", f, "shortgpt", {}, False) for f in ALL_TINY_FAMILIES]
    + [
        (f"{m}/{f}", f, m, {}, False)
        for m in ("layer-ppl", "rm", "rm-block", "bi-block")
        for f in ("llama", "qwen2")
    ]
    + [
        # One batch per rank per chunk: 2 chunks, the bound pass then the exact pass.
        ("two-pass/llama", "llama", "blockpruner", dict(state_bytes=1), False),
        ("two-pass-paper/qwen2", "qwen2", "blockpruner", dict(state_bytes=1, **PAPER), False),
        ("two-pass-sleb/gemma3", "gemma3", "sleb", dict(state_bytes=1), False),
        # The dense pass in chunks of 2 windows per rank, the steps in chunks of 1: a window
        # runs on the same rank in both (its KL dense finals are there).
        ("dense-chunks/llama", "llama", "blockpruner", dict(state_bytes=STATES_2_OF_1), False),
        # Batches {0, 1} and {2}: rank 0 runs the first batch, rank 1 the second.
        ("batch-2/llama", "llama", "blockpruner", dict(batch_size=2), False),
        ("batch-2-paper/mistral", "mistral", "blockpruner", dict(batch_size=2, **PAPER), False),
        # The oracle (every candidate on every window) and the exhaustive step (no bound).
        ("naive/llama", "llama", "blockpruner", dict(naive=True), False),
        ("exhaustive/qwen2", "qwen2", "blockpruner", dict(exhaustive=True, **PAPER), False),
        # Streamed from small shards, chunks of one window (the two-pass step).
        ("streamed/llama", "llama", "blockpruner", dict(state_bytes=1), True),
        ("streamed-shortgpt/qwen2", "qwen2", "shortgpt", {}, True),
    ]
)
STREAMED_FAMILIES = sorted({family for _, family, _, _, streamed in CASES if streamed})
# What must equal the one-process plan exactly, per trajectory entry.
EXACT_KEYS = ("removed", "blocks", "calib_nll", "calib_ppl", "search_loss", "score", "ratio_total")


class DeafWorld(World):
    """Two ranks that never meet: each keeps its own windows' values (the negative control)."""

    def gather(self, values):
        return dict(values)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def loaded_for(family: str, streamed: bool, sources: dict[str, str]):
    if not streamed:
        return from_model(tiny_model(family), tiny_tokenizer(), spec=f"tiny-{family}")
    lazy = LazyModel.open(sources[family], dtype="fp32", device="cpu")
    loaded = lazy_loaded(lazy, sources[family])
    loaded.residency = Streamed(lazy)
    return loaded


def plan_of(world: World | None, case: tuple, sources: dict[str, str]) -> dict:
    """The plan's decisions and trajectory (without timings), and the most windows one rank ran
    in a chunk."""
    _, family, method, extra, streamed = case
    loaded = loaded_for(family, streamed, sources)
    loaded.world = world
    settings = get_method(method).make_settings(**CALIB, **extra)
    plan = run_method(get_method(method), loaded, settings)
    search = plan.extra["search"]
    return {
        "removed_blocks": plan.removed_blocks,
        "kept_layers": plan.extra["kept_layers"],
        "layer_blocks": plan.extra["layer_blocks"],
        "trajectory": [{k: v for k, v in s.items() if k != "seconds"} for s in plan.trajectory],
        "unit_scores": plan.extra.get("scores"),
        "largest_chunk": search["engine"]["largest_chunk_windows"],
        "streamed": search["engine"]["streamed"],
    }


class RankFakeRunner(FakeRunner):
    """FakeRunner's candidates on ``world``: global chunks, window w on rank w % size."""

    def __init__(self, world: World, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.world = world

    def chunks(self, branches: int):
        size = self.chunk * self.world.size
        for start in range(0, self.num_windows, size):
            yield list(range(start, min(start + size, self.num_windows)))

    def mine(self, windows):
        return [w for w in windows if w % self.world.size == self.world.rank]


# _c(1)'s bounds are not below its losses on windows 0 and 2 (0.5 < 3, 0.5 < 1): rank 1's own
# floor before window 3 (its loss 5 on window 1 + the bounds of 0, 2, 3: 9) clears the best
# (_c(0): 8), so it stops; the replay's floor before window 3 (6) does not, and the value of
# window 3 is missing there: the candidate is dropped with rank 1's floor.
STOPPED_TABLE = {_c(0): [2.0, 2.0, 2.0, 2.0], _c(1): [0.5, 5.0, 0.5, 5.0]}
STOPPED_LOWER = {_c(0): [1.0, 1.0, 1.0, 1.0], _c(1): [3.0, 0.0, 1.0, 0.0]}


def fake_steps(world: World | None) -> dict:
    """Steps of FakeRunner candidates: (best, its loss, exact flags, values) per chunking."""
    results = {}
    for name, table, lower in (("table", TABLE, LOWER), ("stopped", STOPPED_TABLE, STOPPED_LOWER)):
        for chunk in (1, 2, 4):
            if world is None:
                runner = FakeRunner(table, lower, chunk)
            else:
                runner = RankFakeRunner(world, table, lower, chunk)
            scores = score_step(runner, [], list(table), Criterion("ppl", runner.tokens))
            results[name, chunk] = (scores.best, scores.best_nll, scores.exact, scores.values)
    return results


class Interrupted(Exception):
    pass


MARK = -7.0


def resumed_search(world: World, run_dir: str) -> dict:
    """BlockPruner interrupted after its first step on every rank, then resumed: rank 0 keeps
    the checkpoints (the others get none, as the pipeline lends them to rank 0 only)."""
    method = get_method("blockpruner")
    checkpoints = RunCheckpoints(run_dir) if world.is_main else None
    real_checkpointer = blockpruner_module.checkpointer

    def interrupting_checkpointer(*args, **kwargs):
        save = real_checkpointer(*args, **kwargs)

        def save_then_stop(state):
            save(state)
            raise Interrupted

        return save_then_stop

    loaded = loaded_for("llama", False, {})
    loaded.world = world
    blockpruner_module.checkpointer = interrupting_checkpointer
    try:
        method.prune(loaded, method.make_settings(**CALIB), checkpoints=checkpoints)
    except Interrupted:
        pass
    finally:
        blockpruner_module.checkpointer = real_checkpointer
    if world.is_main:  # a mark in the saved step that only rank 0's file can pass on
        partial = Path(run_dir) / PARTIAL_PLAN_FILE
        saved = json.loads(partial.read_text())
        saved["trajectory"][0]["seconds"] = MARK
        partial.write_text(json.dumps(saved))
    settings = method.make_settings(resume=True, **CALIB)
    plan = method.prune(loaded, settings, checkpoints=checkpoints)
    trajectory = [{k: v for k, v in s.items() if k != "seconds"} for s in plan.trajectory]
    return {
        "removed_blocks": plan.removed_blocks,
        "trajectory": trajectory,
        "first_seconds": plan.trajectory[0]["seconds"],
    }


def every_case(world: World, sources: dict[str, str], run_dir: str) -> dict:
    torch.manual_seed(0)
    results = {case[0]: plan_of(world, case, sources) for case in CASES}
    results["fake"] = fake_steps(world)
    results["resume"] = resumed_search(world, run_dir)
    deaf = DeafWorld(rank=world.rank, size=world.size, backend=world.backend)
    try:
        results["deaf"] = plan_of(deaf, CASES[0], sources)
    except KeyError as missing:  # the other rank's windows never arrived
        results["deaf"] = f"KeyError {missing}"
    return results


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """The streamed cases' sharded checkpoints, saved before the ranks are spawned."""
    root = tmp_path_factory.mktemp("distributed-depth")
    return {f: str(save_small_shards(f, root / f)) for f in STREAMED_FAMILIES}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distributed-resume")


@pytest.fixture(scope="module")
def ranks(sources, run_dir) -> list[dict]:
    return run_ranks(2, every_case, sources, str(run_dir))


@pytest.fixture(scope="module")
def one_process(sources) -> dict:
    return {case[0]: plan_of(None, case, sources) for case in CASES}


def trajectory_losses(plan: dict) -> list[dict]:
    return [{k: s.get(k) for k in EXACT_KEYS} for s in plan["trajectory"]]


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_two_ranks_plan_as_one_process(case, ranks, one_process):
    first, second = ranks[0][case], ranks[1][case]
    expected = one_process[case]
    # Both ranks took the same decisions and recorded the same trajectory (work counters too).
    for key in ("removed_blocks", "kept_layers", "layer_blocks", "trajectory", "unit_scores"):
        assert first[key] == second[key], key
    assert first["removed_blocks"] == expected["removed_blocks"]
    assert len(expected["removed_blocks"]) >= 2
    assert first["kept_layers"] == expected["kept_layers"]
    assert first["layer_blocks"] == expected["layer_blocks"]
    assert trajectory_losses(first) == trajectory_losses(expected)  # exactly, not approx
    assert first["unit_scores"] == expected["unit_scores"]  # one-shot: the mean scores too
    # Each rank ran a strict share of the windows (rank 0 one more), not all of them.
    windows = CALIB["n_samples"]
    assert first["largest_chunk"] <= (windows + 1) // 2 and second["largest_chunk"] <= windows // 2
    assert 1 <= expected["largest_chunk"] <= windows
    assert first["streamed"] == expected["streamed"]


def test_without_the_gather_the_ranks_cannot_plan(ranks, one_process):
    """The negative control: ranks that keep their own windows' values (no gather, no sum)
    never produce the one-process plan (here: each lacks the other's windows)."""
    for rank in ranks:
        assert rank["deaf"] != one_process[CASES[0][0]]
        assert isinstance(rank["deaf"], str) and rank["deaf"].startswith("KeyError")


def test_fake_candidates_decide_as_one_process(ranks):
    """The step's bookkeeping alone, at every chunking: the same winner and loss as one process,
    the same decisions on both ranks."""
    expected = fake_steps(None)
    assert ranks[0]["fake"] == ranks[1]["fake"]
    for key, (best, loss, _, values) in expected.items():
        got_best, got_loss, got_exact, got_values = ranks[0]["fake"][key]
        assert (got_best, got_loss) == (best, loss), key
        assert got_exact[best] and got_values[best] == values[best]
    assert expected["table", 4][0] == _c(1)


def test_a_rank_that_stopped_early_drops_the_candidate(ranks):
    best, loss, exact, values = ranks[0]["fake"]["stopped", 4]  # one chunk: the single pass
    assert best == _c(0) and loss == 8.0
    assert not exact[_c(1)] and values[_c(1)] == 9.0  # rank 1's floor
    # One process sees every window: the candidate settles at its exact loss (11).
    _, _, one_exact, one_values = fake_steps(None)["stopped", 4]
    assert one_exact[_c(1)] and one_values[_c(1)] == 11.0


def test_resumed_search_plans_as_one_process(ranks, one_process, run_dir):
    """Rank 0 alone read the checkpoint and handed the resumed state to rank 1."""
    expected = one_process["blockpruner/llama"]
    assert (run_dir / PARTIAL_PLAN_FILE).is_file()
    for rank in ranks:
        assert rank["resume"]["removed_blocks"] == expected["removed_blocks"]
        assert trajectory_losses(rank["resume"]) == trajectory_losses(expected)
        assert rank["resume"]["first_seconds"] == MARK  # the step came from rank 0's file
    assert ranks[0]["resume"] == ranks[1]["resume"]
