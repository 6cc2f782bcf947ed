"""Depth-search criteria (ppl, KL from the dense model, per parameter) and candidate sets."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from prunekit.api import prune
from prunekit.data import calibration_windows, tokenize_text
from prunekit.errors import PlanError, SettingsError
from prunekit.methods.depth import blockpruner as blockpruner_module
from prunekit.methods.depth.common import block_units, half_windows, layer_units, unit_parameters
from prunekit.methods.depth.criteria import CRITERIA
from prunekit.methods.depth.runner import DepthRunner
from prunekit.methods.depth.search import Target, greedy_search
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import from_model
from prunekit.models.tiny import _SAMPLE_TEXT, tiny_model, tiny_tokenizer
from prunekit.report.run_dir import PARTIAL_PLAN_FILE
from prunekit.surgery.depth import remove_blocks
from tests.unit.depth_helpers import one_thread  # noqa: F401

CANDIDATE_SETS = ("blocks", "layers", "blocks+layers")


def _loaded(family: str = "llama"):
    return from_model(tiny_model(family), tiny_tokenizer())


def _windows(loaded, n_windows: int = 3, seqlen: int = 24) -> torch.Tensor:
    bos = loaded.tokenizer.bos_token_id if loaded.adapter.bos_per_window else None
    ids = tokenize_text(loaded.tokenizer, _SAMPLE_TEXT)
    return calibration_windows(ids, n_windows, seqlen, 0, bos)


def _orders(runner, units, criterion: str, steps: int, **kwargs):
    params = unit_parameters(runner, units)
    state = greedy_search(
        runner, units, params, Target(None, steps, 10**6), criterion, desc=None, **kwargs
    )
    return [(s["removed"], s["search_loss"], s["calib_nll"]) for s in state.trajectory]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_kl_matches_a_direct_computation(family: str) -> None:
    """The runner's KL of a candidate = KL between the dense model's and the pruned model's own
    forward passes (surgery), computed with torch's kl_div over the whole vocabulary."""
    loaded = _loaded(family)
    windows = _windows(loaded)
    runner = DepthRunner(loaded, windows, "kl")
    removed = [BlockRef(1, "mlp"), BlockRef(2, "attn")]
    active = [b for b in runner.blocks() if b not in removed]
    kl = sum(runner.model_losses(active))

    pruned = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    remove_blocks(pruned, removed)
    skip = runner.skip_first
    with torch.no_grad():
        dense_logits = loaded.model(windows).logits[:, skip:-1].double()
        pruned_logits = pruned.model(windows).logits[:, skip:-1].double()
    direct = torch.nn.functional.kl_div(
        pruned_logits.log_softmax(-1),
        dense_logits.log_softmax(-1),
        log_target=True,
        reduction="sum",
    )
    assert kl > 0.01
    assert kl == pytest.approx(float(direct), rel=1e-3)
    # The dense model is at distance 0 from itself; the NLL it reports is the plain NLL.
    assert runner.model_losses(runner.blocks()) == pytest.approx([0.0] * 3, abs=1e-6)
    plain = DepthRunner(loaded, windows)
    assert runner.reported_nll(active, kl) == pytest.approx(sum(plain.model_nll(active)))
    assert sum(plain.model_losses(active)) == pytest.approx(sum(plain.model_nll(active)))


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_kl_bound_is_below_the_exact_kl(family: str) -> None:
    loaded = _loaded(family)
    runner = DepthRunner(loaded, _windows(loaded), "kl")
    blocks = runner.blocks()
    tight = 0
    for gone in blocks:
        active = [b for b in blocks if b != gone]
        for bound, exact in runner.model_losses(active, bounds=True):
            assert 0.0 <= bound <= exact
            tight += bound > 0.1 * exact  # 1/8 of a random tiny vocabulary: p(S) is small
    assert tight > len(blocks)  # a bound of 0 everywhere would be valid and useless


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("candidates", CANDIDATE_SETS)
def test_fast_search_equals_naive_for_every_criterion_and_set(
    family: str, criterion: str, candidates: str
) -> None:
    loaded = _loaded(family)
    runner = DepthRunner(loaded, _windows(loaded), criterion)
    units = block_units(runner, candidates, {0})
    fast = _orders(runner, units, criterion, 3)
    assert fast == _orders(runner, units, criterion, 3, naive=True)
    assert fast == _orders(runner, units, criterion, 3, exhaustive=True)


def test_blocks_and_layers_contain_sleb_step() -> None:
    loaded = _loaded()
    runner = DepthRunner(loaded, _windows(loaded))
    units = block_units(runner, "blocks+layers", set())
    layers = layer_units(runner, set())
    assert set(layers) <= set(units) and all(len(u) == 2 for u in layers)
    assert set(block_units(runner, "blocks", set())) | set(layers) == set(units)
    assert len(units) == len(set(units))
    # One step over the union is at least as good on calibration as SLEB's (layer-only) step.
    union = _orders(runner, units, "ppl", 1)[0][1]
    sleb = _orders(runner, layers, "ppl", 1)[0][1]
    assert union <= sleb
    # A layer costs its two blocks; once one of its blocks is gone it is no longer a candidate.
    params = unit_parameters(runner, units)
    layer = layers[1]
    assert params[layer] == params[(layer[0],)] + params[(layer[1],)]
    state = greedy_search(runner, units, params, Target(None, 3, 10**6), "ppl-per-param", desc=None)
    gone = [b for u in state.removed for b in u]
    assert len(gone) == len(set(gone))  # no block removed twice


def test_one_shot_methods_refuse_overlapping_candidates(tmp_path) -> None:
    path = tmp_path / "calib.txt"
    path.write_text(_SAMPLE_TEXT * 3)
    calib = {"calib": str(path), "n_samples": 2, "seqlen": 24, "seed": 0}
    with pytest.raises(SettingsError, match="greedy"):
        prune(_loaded(), "bi-block", blocks=1, candidates="blocks+layers", **calib)
    with pytest.raises(SettingsError, match="--candidates must be one of"):
        prune(_loaded(), "blockpruner", blocks=1, candidates="heads", **calib)
    with pytest.raises(SettingsError, match="--criterion must be one of"):
        prune(_loaded(), "blockpruner", blocks=1, criterion="js", **calib)
    # "both" (the old spelling) and "blocks" are the same set.
    both = prune(_loaded(), "blockpruner", blocks=2, candidates="both", **calib).plan
    blocks = prune(_loaded(), "blockpruner", blocks=2, candidates="blocks", **calib).plan
    assert both.removed_blocks == blocks.removed_blocks


def test_half_windows() -> None:
    windows = torch.arange(12).reshape(4, 3)
    assert half_windows(windows, None) is windows
    assert half_windows(windows, "first-half").tolist() == windows[:2].tolist()
    assert half_windows(windows, "second-half").tolist() == windows[2:].tolist()
    with pytest.raises(SettingsError):
        half_windows(windows, "middle")


def test_resume_with_kl_and_blocks_and_layers(tmp_path, monkeypatch) -> None:
    path = tmp_path / "calib.txt"
    path.write_text(_SAMPLE_TEXT * 3)
    settings = {
        "blocks": 4,
        "calib": str(path),
        "n_samples": 2,
        "seqlen": 24,
        "seed": 0,
        "criterion": "kl-per-param",
        "candidates": "blocks+layers",
    }
    reference = prune(_loaded(), "blockpruner", **settings).plan
    real_checkpointer = blockpruner_module.checkpointer

    def interrupting_checkpointer(*args, **kwargs):
        save = real_checkpointer(*args, **kwargs)

        def save_then_crash(state):
            save(state)
            if len(state.removed) == 2:
                raise KeyboardInterrupt

        return save_then_crash

    monkeypatch.setattr(blockpruner_module, "checkpointer", interrupting_checkpointer)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        prune(_loaded(), "blockpruner", out=run, **settings)
    monkeypatch.undo()
    assert len(json.loads((run / PARTIAL_PLAN_FILE).read_text())["trajectory"]) == 2
    with pytest.raises(PlanError, match="criterion"):
        prune(_loaded(), "blockpruner", out=run, resume=True, **{**settings, "criterion": "kl"})
    resumed = prune(_loaded(), "blockpruner", out=run, resume=True, **settings).plan
    assert resumed.removed_blocks == reference.removed_blocks
    keys = ("removed", "search_loss", "calib_nll", "score")
    assert [[s[k] for k in keys] for s in resumed.trajectory] == [
        [s[k] for k in keys] for s in reference.trajectory
    ]


def test_overlapping_candidates_are_counted_once_in_the_target_check(tmp_path) -> None:
    path = tmp_path / "calib.txt"
    path.write_text(_SAMPLE_TEXT * 3)
    calib = {"calib": str(path), "n_samples": 2, "seqlen": 24, "seed": 0}
    blocks = len(DepthRunner(_loaded(), _windows(_loaded())).blocks())
    with pytest.raises(SettingsError, match=f"exceeds the {blocks} candidate"):
        prune(_loaded(), "blockpruner", blocks=blocks + 1, candidates="blocks+layers", **calib)
    # Removing every block reaches ratio_total < 1 (embeddings stay): 0.99 cannot be met, although
    # the units' parameters summed (a layer counted beside its blocks) would exceed it.
    with pytest.raises(SettingsError, match="cannot be met"):
        prune(_loaded(), "blockpruner", ratio=0.99, candidates="blocks+layers", **calib)


def test_blocks_target_counts_blocks_when_whole_layers_are_candidates(tmp_path) -> None:
    """--blocks K removes K blocks: a whole-layer candidate counts as two, and does not fit when
    one block is left to remove."""
    path = tmp_path / "calib.txt"
    path.write_text(_SAMPLE_TEXT * 3)
    calib = {"calib": str(path), "n_samples": 2, "seqlen": 24, "seed": 0}
    settings = {"candidates": "blocks+layers", "criterion": "ppl-per-param", **calib}
    plans = {k: prune(_loaded(), "blockpruner", blocks=k, **settings).plan for k in (1, 2, 3)}
    for k, plan in plans.items():
        assert len(plan.removed_blocks) == k
    # The search does take whole layers here (else the test would not test the count).
    assert any(len(step["blocks"]) == 2 for plan in plans.values() for step in plan.trajectory)


def test_default_is_kl_per_param_over_blocks_and_layers(tmp_path) -> None:
    path = tmp_path / "calib.txt"
    path.write_text(_SAMPLE_TEXT * 3)
    calib = {"calib": str(path), "n_samples": 2, "seqlen": 24, "seed": 0}
    default = prune(_loaded(), "blockpruner", blocks=3, **calib).plan
    named = prune(
        _loaded(),
        "blockpruner",
        blocks=3,
        criterion="kl-per-param",
        candidates="blocks+layers",
        **calib,
    ).plan
    assert default.removed_blocks == named.removed_blocks
    assert (default.settings["criterion"], default.settings["candidates"]) == (
        "kl-per-param",
        "blocks+layers",
    )
