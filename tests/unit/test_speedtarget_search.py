"""The speed-target search (issue 16): splits from a real BlockPruner trajectory on a tiny model,
priced by a hand-made latency table (each block: a fixed part + a part linear in its width)."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import pytest
import torch

from prunekit.api import prune
from prunekit.errors import SettingsError
from prunekit.evaluation.perplexity import windows_nll
from prunekit.latency.structure import LayerStructure, ModelStructure
from prunekit.methods.depth.calibration import held_out_settings_windows, settings_windows
from prunekit.methods.settings import CalibrationSettings
from prunekit.models.loading import from_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.speedtarget.losses import calibration_loss_fn, depth_prefix_plan
from prunekit.speedtarget.prune import SPEED_METHOD
from prunekit.speedtarget.report import speed_target_markdown, speed_target_record
from prunekit.speedtarget.run import choose_split, search_for_speed
from prunekit.speedtarget.search import (
    DepthStep,
    Split,
    WidthRule,
    candidate_splits,
    choose,
    depth_blocks_bound,
    depth_reaches,
    depth_steps,
    narrow,
    remove_blocks,
    search_speed_target,
)
from prunekit.surgery import apply_plan
from tests.unit.depth_helpers import one_thread  # noqa: F401
from tests.unit.settings_helpers import settings_for, text_calibration

LAYERS = 6
# The hand-made table: microseconds per block, a fixed launch cost + a cost per channel.
FIXED_US = 40.0  # embeddings and LM head
ATTN_US, ATTN_PER_VALUE_US = 20.0, 1.0  # per kv-head value channel
MLP_US, MLP_PER_CHANNEL_US = 10.0, 1.0  # per intermediate channel


def predict(structure: ModelStructure) -> float:
    """Seconds: the fixed part plus every remaining block's entry."""
    total = FIXED_US
    for layer in structure.layers:
        if layer.has_attn:
            total += ATTN_US + ATTN_PER_VALUE_US * layer.kv_heads * layer.v_head_dim
        if layer.has_mlp:
            total += MLP_US + MLP_PER_CHANNEL_US * layer.mlp_width
    return total * 1e-6


def dense_structure(config) -> ModelStructure:
    head_dim = config.hidden_size // config.num_attention_heads
    layer = LayerStructure(
        attn_heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        head_dim=head_dim,
        v_head_dim=head_dim,
        mlp_width=config.intermediate_size,
    )
    return ModelStructure(
        (layer,) * config.num_hidden_layers, config.hidden_size, config.vocab_size
    )


def speedup(dense: ModelStructure, shape: ModelStructure) -> float:
    return predict(dense) / predict(shape)


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> dict:
    return text_calibration(tmp_path_factory.mktemp("calib"))


def tiny_dense():
    return from_model(
        tiny_model("llama", num_hidden_layers=LAYERS), tiny_tokenizer(), spec="tiny-llama"
    )


@pytest.fixture(scope="module")
def tiny_run(calib):
    """A real 8-step BlockPruner trajectory on a 6-layer tiny Llama, and its dense shape."""
    loaded = tiny_dense()
    dense = dense_structure(loaded.model.config)
    plan = prune(loaded, "blockpruner", blocks=8, **calib).plan
    return dense, plan


def depth_loss(trajectory: list[dict]):
    """A loss along the trajectory: its measured calibration NLL per token (log of its calib
    ppl; the dense model's taken as the first step's), plus what the width stage would add
    (growing with s²): a stand-in for the combined plan's measured loss."""

    def loss_of(split: Split) -> float:
        nll = math.log(trajectory[max(split.k, 1) - 1]["calib_ppl"])
        return nll + 2.0 * split.sparsity**2

    return loss_of


def test_remove_blocks_uses_original_layer_indices() -> None:
    layer = LayerStructure(4, 2, 16, 16, 96)
    dense = ModelStructure((layer,) * LAYERS, 64, 320)
    shape = remove_blocks(dense, ["2.attn", "4.mlp", "2.mlp", "5.attn"])
    assert len(shape.layers) == LAYERS - 1  # layer 2 lost both blocks
    assert shape.layers[2] == layer  # original 3
    assert shape.layers[3].mlp_width == 0 and shape.layers[3].has_attn  # original 4
    assert not shape.layers[4].has_attn and shape.layers[4].mlp_width == 96  # original 5
    with pytest.raises(SettingsError, match="not in a model of 6 layers"):
        remove_blocks(dense, ["6.attn"])


def test_every_split_reaches_the_target_with_the_smallest_sparsity(tiny_run) -> None:
    dense, plan = tiny_run
    steps = depth_steps(plan.trajectory)
    rule = WidthRule()
    splits = candidate_splits(dense, steps, predict, 1.4, rule)
    assert [s.k for s in splits] == list(range(len(splits)))  # every k priced (stride 1)
    for split in splits:
        shape = remove_blocks(dense, split.removed_blocks)
        assert split.removed_blocks == tuple(b for step in steps[: split.k] for b in step.blocks)
        assert speedup(dense, narrow(shape, split.sparsity, rule)) >= 1.4
        assert split.speedup == pytest.approx(speedup(dense, narrow(shape, split.sparsity, rule)))
        if split.sparsity > 0:  # the neighbour just below does not reach it
            assert speedup(dense, narrow(shape, split.sparsity - 1e-9, rule)) < 1.4
    # More blocks removed leaves less latency to close by width.
    assert all(a.sparsity >= b.sparsity for a, b in itertools.pairwise(splits))


def test_the_ends_are_the_pure_plans(tiny_run) -> None:
    dense, plan = tiny_run
    steps = depth_steps(plan.trajectory)
    splits = candidate_splits(dense, steps, predict, 1.4, WidthRule())
    width_only, depth_only = splits[0], splits[-1]
    assert width_only.k == 0 and width_only.sparsity > 0
    assert depth_only.sparsity == 0.0 and depth_only.k > 0
    assert speedup(dense, remove_blocks(dense, depth_only.removed_blocks)) >= 1.4
    # ... and it is the smallest such k: one step fewer does not reach by depth alone.
    fewer = [b for step in steps[: depth_only.k - 1] for b in step.blocks]
    assert speedup(dense, remove_blocks(dense, fewer)) < 1.4
    assert depth_reaches(dense, predict, 1.4)(depth_only.removed_blocks)
    assert not depth_reaches(dense, predict, 1.4)(fewer)


def test_depth_blocks_bound_covers_any_removal_order(tiny_run) -> None:
    dense, plan = tiny_run
    splits = candidate_splits(dense, depth_steps(plan.trajectory), predict, 1.4, WidthRule())
    bound = depth_blocks_bound(dense, predict, 1.4)
    # Table: attention saves 52 us, MLP 106 us of 988; 1.4x needs 282.3 us: 6 attention blocks
    # in the worst order (5 save only 260), where BlockPruner's order needed 4 steps.
    assert bound == 6 >= splits[-1].k
    assert depth_blocks_bound(dense, predict, 1.4, kinds=("mlp",)) == 3
    assert depth_blocks_bound(dense, predict, 1.4, kinds=("attn",)) == 6
    assert depth_blocks_bound(dense, predict, 10.0, kinds=("attn",)) is None


def test_a_short_trajectory_has_no_depth_only_plan(tiny_run) -> None:
    dense, plan = tiny_run
    steps = depth_steps(plan.trajectory)[:1]
    result = search_speed_target(dense, steps, predict, 1.4, "decode", depth_loss(plan.trajectory))
    assert [s.k for s in result.candidates] == [0, 1]
    assert result.depth_only is None and result.width_only is result.candidates[0]
    record = speed_target_record(result)
    assert record["depth_only"] is None
    assert "| depth only | does not reach the target |" in speed_target_markdown(record)


def test_unreachable_target_names_the_best_reachable_speedup(tiny_run) -> None:
    dense, plan = tiny_run
    steps = depth_steps(plan.trajectory)
    rule = WidthRule(max_sparsity=0.5)
    removed, best = [], 0.0
    for k in range(len(steps) + 1):
        removed += steps[k - 1].blocks if k else ()
        best = max(best, speedup(dense, narrow(remove_blocks(dense, removed), 0.5, rule)))
    with pytest.raises(SettingsError) as info:
        candidate_splits(dense, steps, predict, best + 0.01, rule)
    message = str(info.value)
    assert "\n" not in message and "out of reach" in message and f"{best:.3f}x" in message
    assert candidate_splits(dense, steps, predict, best - 1e-6, rule)  # just below: reachable


@pytest.mark.parametrize("bad", [1.0, 0.5, float("nan")])
def test_target_must_be_above_one(tiny_run, bad: float) -> None:
    dense, plan = tiny_run
    with pytest.raises(SettingsError, match="must be > 1"):
        candidate_splits(dense, depth_steps(plan.trajectory), predict, bad, WidthRule())


def test_phase_and_rule_are_checked(tiny_run) -> None:
    dense, plan = tiny_run
    steps = depth_steps(plan.trajectory)
    with pytest.raises(SettingsError, match="--phase"):
        search_speed_target(dense, steps, predict, 1.4, "train", depth_loss(plan.trajectory))
    with pytest.raises(SettingsError, match="--targets"):
        WidthRule(targets=("qk",))


@pytest.mark.parametrize(("multiple_of", "values_narrow"), [(8, True), (32, False)])
def test_widths_respect_multiple_of(tiny_run, multiple_of: int, values_narrow: bool) -> None:
    dense, plan = tiny_run
    rule = WidthRule(multiple_of=multiple_of)
    splits = candidate_splits(dense, depth_steps(plan.trajectory), predict, 2.0, rule)
    narrowed = [s for s in splits if s.sparsity > 0]
    assert narrowed
    for split in narrowed:
        shape = narrow(remove_blocks(dense, split.removed_blocks), split.sparsity, rule)
        assert all(layer.mlp_width % multiple_of == 0 for layer in shape.layers if layer.has_mlp)
        values = {layer.v_head_dim for layer in shape.layers if layer.has_attn}
        # A 16-wide value head cannot be cut to a multiple of 32: it stays whole.
        assert values <= ({8, 16} if values_narrow else {16})
    if values_narrow:
        assert any(
            layer.v_head_dim == 8
            for s in narrowed
            for layer in narrow(remove_blocks(dense, s.removed_blocks), s.sparsity, rule).layers
        )


def test_mlp_only_target_leaves_values_whole(tiny_run) -> None:
    dense, plan = tiny_run
    rule = WidthRule(targets=("mlp",))
    splits = candidate_splits(dense, depth_steps(plan.trajectory), predict, 1.3, rule)
    for split in splits:
        shape = narrow(remove_blocks(dense, split.removed_blocks), split.sparsity, rule)
        assert all(layer.v_head_dim == 16 for layer in shape.layers)
    assert splits[0].sparsity > 0


def test_stride_prices_every_stride_th_k_and_the_depth_only_end(tiny_run) -> None:
    dense, plan = tiny_run
    steps = depth_steps(plan.trajectory)
    every = candidate_splits(dense, steps, predict, 1.4, WidthRule())
    strided = candidate_splits(dense, steps, predict, 1.4, WidthRule(), stride=3)
    end = every[-1].k
    assert [s.k for s in strided] == sorted({k for k in range(0, end, 3)} | {end})
    assert all(s in every for s in strided)


def _valley(n: int, bottom: int) -> tuple[list[Split], dict[int, float]]:
    splits = [Split(k, (), 0.5 - k / (2 * n), 1.5, 1.0) for k in range(n)]
    return splits, {k: 1.0 + abs(k - bottom) * 0.1 + (k > bottom) * 0.01 for k in range(n)}


@pytest.mark.parametrize("bottom", range(0, 30, 1))
def test_choose_finds_a_single_valley_with_few_evaluations(bottom: int) -> None:
    splits, table = _valley(30, bottom)
    calls = []

    def loss_of(split: Split) -> float:
        calls.append(split.k)
        return table[split.k]

    losses = choose(splits, loss_of, coarse=5, max_evaluations=12)
    assert min(losses, key=losses.get) == bottom
    assert 0 in losses and 29 in losses  # both pure plans always measured
    assert len(calls) == len(set(calls)) == len(losses) <= 12


def test_choose_is_deterministic_and_breaks_ties_to_fewer_blocks() -> None:
    splits = [Split(k, (), 0.1, 1.5, 1.0) for k in range(9)]
    first = choose(splits, lambda s: 2.0 if s.k in (0, 8) else 1.0)
    assert first == choose(splits, lambda s: 2.0 if s.k in (0, 8) else 1.0)
    assert min(first, key=lambda k: (first[k], k)) == min(k for k in first if first[k] == 1.0)
    nan = choose(splits, lambda s: float("nan") if s.k == 4 else 3.0 - 0.1 * (s.k == 8))
    assert nan[4] == math.inf and min(nan, key=nan.get) == 8


def test_equal_losses_choose_the_fewest_blocks(tiny_run) -> None:
    dense, plan = tiny_run
    steps = depth_steps(plan.trajectory)
    result = search_speed_target(dense, steps, predict, 1.4, "decode", lambda split: 1.0)
    assert result.chosen.k == 0 and len(result.candidates) > 1


def test_search_reports_chosen_split_beside_the_pure_plans(tiny_run) -> None:
    dense, plan = tiny_run
    steps = depth_steps(plan.trajectory)
    calls = []
    loss = depth_loss(plan.trajectory)

    def loss_of(split: Split) -> float:
        calls.append(split.k)
        return loss(split)

    result = search_speed_target(dense, steps, predict, 1.4, "decode", loss_of)
    again = search_speed_target(dense, steps, predict, 1.4, "decode", depth_loss(plan.trajectory))
    assert speed_target_record(result) == speed_target_record(again)
    every = {s.k: loss(s) for s in result.candidates}
    assert result.chosen.k == min(every, key=lambda k: (every[k], k))  # the valley is found
    assert len(calls) <= 12
    assert result.chosen.speedup >= 1.4
    record = json.loads(json.dumps(speed_target_record(result, measured_speedup=1.37)))
    assert record["predicted_speedup"] == pytest.approx(result.chosen.speedup)
    assert record["measured_speedup"] == 1.37
    assert record["chosen"]["k"] == result.chosen.k
    assert record["width_only"]["k"] == 0 and record["depth_only"]["sparsity"] == 0.0
    chosen_ppl = record["chosen"]["calib_ppl"]
    assert chosen_ppl <= record["depth_only"]["calib_ppl"]
    assert chosen_ppl <= record["width_only"]["calib_ppl"]
    assert len(record["candidates"]) == len(result.candidates)
    markdown = speed_target_markdown(record)
    assert "## Speed target" in markdown and "measured 1.370×" in markdown
    assert f"| chosen split | {result.chosen.k} (" in markdown


def test_layer_units_in_a_trajectory_remove_both_blocks() -> None:
    steps = depth_steps([{"blocks": ["3.attn", "3.mlp"], "calib_nll": 5.0}, {"block": "1.attn"}])
    assert steps == [DepthStep(("3.attn", "3.mlp"), 5.0), DepthStep(("1.attn",), None)]


def test_depth_prefix_losses_match_the_trajectory(tiny_run, calib) -> None:
    """A split built from the plan's first k steps measures the loss BlockPruner recorded."""
    _, plan = tiny_run
    loaded = tiny_dense()
    windows = settings_windows(loaded, CalibrationSettings(**calib))
    before = {name: p.clone() for name, p in loaded.model.named_parameters()}

    def build(candidate, split: Split) -> None:
        apply_plan(candidate, depth_prefix_plan(plan, split.k))

    loss_of = calibration_loss_fn(loaded, windows, build)
    for k in (1, 3, 8):
        split = Split(k, (), 0.0, 1.0, 1.0)
        assert math.exp(loss_of(split)) == pytest.approx(plan.trajectory[k - 1]["calib_ppl"])
    dense_loss = loss_of(Split(0, (), 0.0, 1.0, 1.0))
    assert math.exp(dense_loss) != pytest.approx(plan.trajectory[0]["calib_ppl"])
    assert all(torch.equal(p, before[name]) for name, p in loaded.model.named_parameters())
    prefix = depth_prefix_plan(plan, 3)
    assert prefix.removed_blocks == plan.removed_blocks[:3] and len(prefix.trajectory) == 3


def test_search_for_speed_runs_the_depth_search_to_the_bound(calib) -> None:
    """End to end up to the choice on a tiny model. The build replays the depth prefix only (the
    width stage on a depth-pruned model is the combined-plan code's), so each loss is the depth
    prefix's on the held-out windows: the chosen split is the measured one with the lowest."""
    loaded = tiny_dense()
    dense = dense_structure(loaded.model.config)
    settings = settings_for(SPEED_METHOD, **calib, candidates="attn")
    run = search_for_speed(loaded, settings, 1.2, "decode", dense, predict, depth_prefix_build)
    bound = depth_blocks_bound(dense, predict, 1.2, kinds=("attn",))
    assert len(run.depth_plan.trajectory) == bound
    assert all(b.endswith(".attn") for b in run.depth_plan.removed_blocks)
    result = run.result
    assert result.depth_only is not None and result.depth_only.k <= bound
    ppl = {k: math.exp(loss) for k, loss in result.losses.items()}
    held_out = held_out_settings_windows(loaded, settings)
    for k in ppl:
        prefix = tiny_dense()
        apply_plan(prefix, depth_prefix_plan(run.depth_plan, k))
        nll, count = windows_nll(prefix, held_out)
        assert ppl[k] == pytest.approx(math.exp(nll / count))
        if k:  # not the calibration windows' ppl, which the search recorded
            assert ppl[k] != pytest.approx(run.depth_plan.trajectory[k - 1]["calib_ppl"])
    assert result.chosen.k == min(ppl, key=lambda k: (ppl[k], k))
    assert tiny_dense().model.state_dict().keys() == loaded.model.state_dict().keys()
    with pytest.raises(SettingsError, match="single-block"):
        search_for_speed(
            loaded,
            settings_for(SPEED_METHOD, **calib, candidates="layers"),
            1.2,
            "decode",
            dense,
            predict,
            depth_prefix_build,
        )


def test_one_depth_search_serves_a_nearer_target(calib) -> None:
    """bench/speedtarget.py runs one depth search for every target and calls ``choose_split``
    per target: on a longer search's plan it makes the choice ``search_for_speed`` makes alone
    (the greedy search is prefix-consistent and the splits end at the depth-only one)."""
    loaded = tiny_dense()
    dense = dense_structure(loaded.model.config)
    settings = settings_for(SPEED_METHOD, **calib, candidates="attn")
    args = ("decode", dense, predict, depth_prefix_build)
    far = search_for_speed(loaded, settings, 1.25, *args)
    near = search_for_speed(loaded, settings, 1.1, *args)
    assert len(far.depth_plan.trajectory) > len(near.depth_plan.trajectory)
    reused = choose_split(loaded, settings, 1.1, *args, far.depth_plan)
    assert reused.chosen == near.result.chosen
    assert reused.candidates == near.result.candidates and reused.losses == near.result.losses


def depth_prefix_build(candidate, split: Split, depth_plan) -> None:
    """The depth stage of a split: the first k steps of the depth plan."""
    prefix = depth_prefix_plan(depth_plan, split.k)
    assert tuple(prefix.removed_blocks) == split.removed_blocks
    apply_plan(candidate, prefix)


def test_scoring_a_split_keeps_only_the_few_tokens_warning_quiet() -> None:
    """Each scored split runs FASP, whose few-tokens-per-column warning would repeat per split;
    other warnings still show."""
    loaded = tiny_dense()
    windows = torch.randint(0, loaded.model.config.vocab_size, (1, 16))

    def build(candidate, split: Split) -> None:
        warnings.warn("only 1.0 calibration tokens per restored column (< 10): ...", stacklevel=1)
        warnings.warn("something else", stacklevel=1)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        calibration_loss_fn(loaded, windows, build)(Split(0, (), 0.0, 1.0, 1.0))
    assert [str(w.message) for w in seen] == ["something else"]
