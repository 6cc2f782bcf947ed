"""Settling the likely winner first (groups of one candidate): same answers, fewer LM heads."""

from __future__ import annotations

import pytest
import torch

from prunekit.data import calibration_windows, tokenize_text
from prunekit.errors import SettingsError
from prunekit.methods.depth.calibration import BlockRunner
from prunekit.methods.depth.common import block_units, unit_parameters
from prunekit.methods.depth.search import (
    Criterion,
    SearchState,
    Target,
    greedy_search,
    label,
    previous_ranking,
    score_step,
)
from prunekit.models.loading import from_model
from prunekit.models.tiny import _SAMPLE_TEXT, TINY_FAMILIES, tiny_model, tiny_tokenizer
from tests.unit.depth_helpers import one_thread  # noqa: F401
from tests.unit.test_depth_search import LOWER, TABLE, FakeRunner, _c


def _peaked_runner(family: str) -> BlockRunner:
    """A tiny model whose LM head is scaled up 10x: peaked predictions, as in a trained model,
    so the vocabulary-subset bound is tight enough to skip heads (at scale 1 it skips none)."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(family)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(10.0)
    loaded = from_model(model, tokenizer)
    bos = tokenizer.bos_token_id if loaded.adapter.bos_per_window else None
    ids = tokenize_text(tokenizer, _SAMPLE_TEXT)
    return BlockRunner(loaded, calibration_windows(ids, 4, 24, 0, bos))


def _search(runner: BlockRunner, criterion: str, **kwargs) -> tuple[list, int]:
    units = block_units(runner, "both", set())
    target = Target(None, 4, 10**6)
    params = unit_parameters(runner, units)
    state = greedy_search(runner, units, params, target, criterion, desc=None, **kwargs)
    outcome = [(s["removed"], s["calib_nll"], s["score"]) for s in state.trajectory]
    return outcome, sum(s["window_evals"] for s in state.trajectory)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_groups_of_one_ranked_first_equal_naive_with_fewer_heads(family: str) -> None:
    runner = _peaked_runner(family)
    naive, naive_heads = _search(runner, "ppl", naive=True)
    position, position_heads = _search(runner, "ppl", group_bytes=1, order="position")
    ranked, ranked_heads = _search(runner, "ppl", group_bytes=1)
    # Bit-identical removal order, calibration NLL and winning score after every step.
    assert ranked == naive and position == naive
    assert ranked_heads < position_heads < naive_heads  # measured: 75 < 81 < 104 for llama


def test_groups_of_one_per_param_criterion_equals_naive() -> None:
    runner = _peaked_runner("qwen2")
    naive, _ = _search(runner, "ppl-per-param", naive=True)
    assert _search(runner, "ppl-per-param", group_bytes=1)[0] == naive


def test_first_step_settles_the_lowest_first_window_bound_first() -> None:
    # First-window bounds 40, 1.5, 0.5, 0.5: _c(2) and _c(3) tie, the lower position goes first.
    runner = FakeRunner(TABLE, LOWER)
    scores = score_step(runner, [], list(TABLE), Criterion("ppl", 400), group_bytes=0)
    assert scores.first == _c(2) and runner.heads[0] == (_c(2), 0)
    assert scores.bound_evals == 4 + 4 * 4  # the first-window pass, then every window
    assert scores.best == _c(1) and scores.best_nll == 8.0


def test_previous_ranking_is_settled_first_and_saves_heads() -> None:
    # In position order _c(0) comes first and pays 4 heads for its total of 53 (its bound, 47.7,
    # is below the empty incumbent); settled first, the previous step's runner-up _c(1) (8)
    # lets the bound drop both _c(0) and _c(2) (bound 10.8) without a head.
    table = {_c(0): [50.0, 1.0, 1.0, 1.0], _c(1): [2.0] * 4, _c(2): [3.0] * 4}
    lower = {c: [v * 0.9 for v in values] for c, values in table.items()}
    criterion = Criterion("ppl", 400)
    position_runner, ranked_runner = FakeRunner(table, lower), FakeRunner(table, lower)
    position = score_step(
        position_runner, [], list(table), criterion, group_bytes=0, order="position"
    )
    ranked = score_step(
        ranked_runner, [], list(table), criterion, group_bytes=0, previous=[_c(1), _c(0)]
    )
    assert ranked.first == _c(1) and ranked_runner.heads[:4] == [(_c(1), w) for w in range(4)]
    assert position.first is None and position_runner.heads[0] == (_c(0), 0)
    assert ranked.best == position.best == _c(1) and ranked.best_nll == position.best_nll
    assert ranked.window_evals == 4 < position.window_evals == 8
    assert ranked.bound_evals == position.bound_evals == 12  # no first-window pass needed
    assert not ranked.exact[_c(0)] and not ranked.exact[_c(2)]


def test_previous_ranking_comes_from_the_trajectory_so_a_resume_has_it() -> None:
    units = [_c(0), _c(1), _c(2, "mlp")]
    state = SearchState(
        removed=[_c(1)],
        trajectory=[
            {"scores": [[label(_c(1)), 1.0, True], ["2.mlp", 2.0, True], ["0.attn", 9.0, False]]}
        ],
    )
    assert previous_ranking(state, units) == [_c(1), _c(2, "mlp"), _c(0)]
    assert previous_ranking(SearchState(), units) == []


def test_unknown_order_is_refused() -> None:
    with pytest.raises(SettingsError, match="unknown search order"):
        score_step(FakeRunner(TABLE, LOWER), [], list(TABLE), Criterion("ppl", 400), order="x")
