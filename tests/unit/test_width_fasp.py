"""FASP on tiny models of every family: slicing == masking, restoration lowers the error."""

from __future__ import annotations

import functools

import pytest
import torch

from prunekit.data import calibration_windows, corpus_tokens
from prunekit.methods.width.selection import kept_count
from prunekit.models.tiny import TINY_FAMILIES
from prunekit.report.accounting import parameter_counts
from tests.unit.width_helpers import logits, masked_reference, prune_tiny, width_settings

pytestmark = pytest.mark.usefixtures("data_dir")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_sliced_model_equals_masked_reference(family, attn):
    pruned, dense, plan = prune_tiny(family, "fasp", attn=attn, restore=False)
    torch.testing.assert_close(
        logits(pruned.model), logits(masked_reference(dense, plan)), rtol=1e-4, atol=1e-4
    )
    shapes = plan.extra["shapes"]["0"]
    assert shapes["intermediate_size"] == kept_count(96, 0.3)
    assert shapes["v_head_dim"] == kept_count(16, 0.3) < shapes["head_dim"]
    assert parameter_counts(pruned.model, pruned.adapter).total < sum(
        p.numel() for p in dense.model.parameters()
    )


def test_every_kv_head_keeps_the_same_count(tiny_llama):
    _, _, plan = prune_tiny("llama", "fasp", sparsity=0.25)
    for entry in plan.kept_channels.values():
        assert len({len(kept) for kept in entry["attn_v"]}) == 1
        assert len(entry["attn_v"]) == 2  # GQA: 2 kv heads


def test_multiple_of_rounds_kept_counts_up(family):
    _, _, plan = prune_tiny(family, "fasp", sparsity=0.3, multiple_of=8, restore=False)
    for entry in plan.kept_channels.values():
        assert len(entry["mlp"]) % 8 == 0
        assert len(entry["attn_v"][0]) % 8 == 0


def _calibration_error(family: str, restore: bool) -> float:
    """‖final hidden (pruned) − final hidden (dense)‖² on the calibration windows."""
    pruned, dense, _ = prune_tiny(family, "fasp", restore=restore, n_samples=16)
    settings = width_settings(n_samples=16)
    windows = calibration_windows(
        corpus_tokens(pruned.tokenizer, "wikitext2"), 16, settings.seqlen, settings.seed
    )
    with torch.no_grad():
        ours = pruned.model.model(input_ids=windows).last_hidden_state
        reference = dense.model.model(input_ids=windows).last_hidden_state
    return (ours - reference).square().sum().item()


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_restoration_lowers_the_calibration_error(family):
    assert _calibration_error(family, restore=True) < _calibration_error(family, restore=False)


def test_restoration_never_worse_per_consumer(family):
    _, _, plan = prune_tiny(family, "fasp", n_samples=16)
    for layer in plan.extra["layers"].values():
        for group in layer.values():
            assert group["error_restored"] <= group["error_sliced"] + 1e-9
            assert group["tokens_per_column"] > 10
    assert plan.extra["restored_weights"] == "restored.safetensors"


def test_few_tokens_per_column_warn():
    with pytest.warns(UserWarning, match="tokens per restored column"):
        _, _, plan = prune_tiny("llama", "fasp", n_samples=1, seqlen=32)
    assert plan.extra["min_tokens_per_restored_column"] < 10


def test_targets_mlp_only_leaves_attention_alone():
    _pruned, _, plan = prune_tiny("llama", "fasp", targets=["mlp"])
    assert all(set(entry) == {"mlp"} for entry in plan.kept_channels.values())
    assert plan.extra["shapes"]["0"]["v_head_dim"] == 16


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("method", ["fasp", "wanda-sp"])
def test_replaying_attention_from_o_proj_inputs_equals_rerunning(family, method, monkeypatch):
    """The engine replays a block changed only through o_proj from o_proj's recorded inputs;
    rerunning the whole attention block instead must give the same pruned model."""
    import prunekit.methods.width.common as width_common
    from prunekit.engine import sequential

    replayed, _, replayed_plan = prune_tiny(family, method)
    rerun_pass = functools.partial(sequential.sequential_pass, replay_consumers=False)
    monkeypatch.setattr(width_common, "sequential_pass", rerun_pass)
    rerun, _, rerun_plan = prune_tiny(family, method)
    assert replayed_plan.kept_channels == rerun_plan.kept_channels
    for (name, a), (_, b) in zip(
        replayed.model.state_dict().items(), rerun.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
