"""Depth methods end to end on tiny models: targets, baselines, resume, run directory, CLI."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from prunekit.api import prune
from prunekit.errors import PlanError, SettingsError
from prunekit.methods.depth import blockpruner as blockpruner_module
from prunekit.methods.depth.oneshot import cosine_influence, relative_magnitude
from prunekit.models.loading import count_parameters, from_model
from prunekit.models.tiny import _SAMPLE_TEXT, save_tiny, tiny_model, tiny_tokenizer
from prunekit.plan import PruningPlan
from prunekit.report.run_dir import PARTIAL_PLAN_FILE
from tests.unit.depth_helpers import one_thread  # noqa: F401


@pytest.fixture
def calib(tmp_path) -> dict:
    path = tmp_path / "calib.txt"
    path.write_text(_SAMPLE_TEXT * 3)
    return {"calib": str(path), "n_samples": 2, "seqlen": 24, "seed": 0}


def _tiny(family: str = "llama", **overrides):
    return from_model(tiny_model(family, **overrides), tiny_tokenizer(), spec=f"tiny-{family}")


def test_ratio_target_is_smallest_k_reaching_it(calib, tmp_path) -> None:
    loaded = _tiny(num_hidden_layers=6)
    result = prune(loaded, "blockpruner", out=tmp_path / "run", ratio=0.2, **calib)
    ratios = [s["ratio_total"] for s in result.plan.trajectory]
    assert ratios[-1] >= 0.2 and (len(ratios) == 1 or ratios[-2] < 0.2)
    assert result.report["params"]["ratio_total"] == pytest.approx(ratios[-1])
    assert len(result.plan.removed_blocks) == len(ratios)
    run = tmp_path / "run"
    for name in ("plan.json", "report.json", "report.md", "calib_ppl.png", "layer_map.png"):
        assert (run / name).is_file(), name
    assert not (run / PARTIAL_PLAN_FILE).exists()
    saved = PruningPlan.load(run / "plan.json")
    assert saved.removed_blocks == result.plan.removed_blocks
    assert saved.extra["kept_layers"] == result.model.config.prunekit_depth["kept_layers"]


@pytest.mark.parametrize(
    ("method", "unit_size"),
    [("shortgpt", 2), ("rm", 2), ("rm-block", 1), ("bi-block", 1), ("sleb", 2), ("layer-ppl", 2)],
)
def test_every_baseline_prunes_physically(calib, method: str, unit_size: int) -> None:
    loaded = _tiny()
    before = count_parameters(loaded.model)
    result = prune(loaded, method, blocks=2, **calib)
    assert len(result.plan.trajectory) == 2
    assert len(result.plan.removed_blocks) == 2 * unit_size
    assert count_parameters(result.model) < before
    with torch.inference_mode():
        assert torch.isfinite(result.model(torch.tensor([[5, 6, 7]])).logits).all()


def test_sleb_protects_first_and_last_layer_layer_ppl_does_not(calib) -> None:
    sleb = prune(_tiny(), "sleb", blocks=2, **calib)
    layers = {int(b.split(".")[0]) for b in sleb.plan.removed_blocks}
    assert layers == {1, 2}
    everything = prune(_tiny(), "layer-ppl", blocks=4, **calib)
    assert {int(b.split(".")[0]) for b in everything.plan.removed_blocks} == {0, 1, 2, 3}


def test_one_shot_scores_find_an_identity_layer(calib) -> None:
    loaded = _tiny()
    layer = loaded.adapter.layers(loaded.model)[2]
    with torch.no_grad():  # layer 2 becomes the identity: BI and RM are 0 there
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    x = torch.randn(5, 8)
    assert torch.allclose(cosine_influence(x, x), torch.zeros(5), atol=1e-6)
    assert torch.allclose(relative_magnitude(x, x), torch.zeros(5))
    for method in ("shortgpt", "rm"):
        result = prune(_copy_weights(loaded), method, blocks=1, **calib)
        assert result.plan.removed_blocks == ["2.attn", "2.mlp"], method
    result = prune(_copy_weights(loaded), "bi-block", blocks=2, **calib)
    assert sorted(result.plan.removed_blocks) == ["2.attn", "2.mlp"]


def _copy_weights(loaded):
    fresh = _tiny()
    fresh.model.load_state_dict(loaded.model.state_dict())
    return fresh


def test_bad_input_is_a_clear_error(calib) -> None:
    with pytest.raises(SettingsError, match="ratio"):
        prune(_tiny(), "blockpruner", ratio=1.5, **calib)
    with pytest.raises(SettingsError, match="cannot be met"):
        prune(_tiny(), "blockpruner", ratio=0.9, candidates="attn", **calib)
    with pytest.raises(SettingsError, match="exceeds"):
        prune(_tiny(), "blockpruner", blocks=9, **calib)
    with pytest.raises(SettingsError, match="exactly one target"):
        prune(_tiny(), "blockpruner", **calib)
    with pytest.raises(SettingsError, match="protect"):
        prune(_tiny(), "blockpruner", blocks=1, protect_layers=[7], **calib)


def test_resume_continues_to_the_same_plan(calib, tmp_path, monkeypatch) -> None:
    settings = {"blocks": 4, **calib}
    reference = prune(_tiny(), "blockpruner", **settings).plan

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
        prune(_tiny(), "blockpruner", out=run, **settings)
    monkeypatch.undo()
    partial = json.loads((run / PARTIAL_PLAN_FILE).read_text())
    assert len(partial["removed_blocks"]) == 2 and partial["complete"] is False

    with pytest.raises(PlanError, match="n_samples"):
        prune(_tiny(), "blockpruner", out=run, resume=True, **{**settings, "n_samples": 3})
    with pytest.raises(PlanError, match="another model"):
        prune(_tiny("qwen2"), "blockpruner", out=run, resume=True, **settings)
    resumed = prune(_tiny(), "blockpruner", out=run, resume=True, **settings).plan
    assert resumed.removed_blocks == reference.removed_blocks
    assert [s["calib_nll"] for s in resumed.trajectory] == [
        s["calib_nll"] for s in reference.trajectory
    ]
    with pytest.raises(PlanError, match="nothing to resume"):
        prune(_tiny(), "blockpruner", out=tmp_path / "empty", resume=True, **settings)


def test_cli_prune_and_one_line_errors(calib, tmp_path, monkeypatch, capsys) -> None:
    from prunekit import cli

    model_dir = save_tiny("llama", str(tmp_path / "model"))
    base = ["prunekit", "prune", "--method", "blockpruner", "--model", model_dir]
    base += ["--calib", calib["calib"], "--n-samples", "2", "--seqlen", "24"]
    monkeypatch.setattr(sys, "argv", [*base, "--blocks", "2", "--out", str(tmp_path / "run")])
    cli.main()
    assert PruningPlan.load(tmp_path / "run" / "plan.json").removed_blocks
    capsys.readouterr()
    for bad in (["--ratio", "1.5"], ["--blocks", "99"]):
        monkeypatch.setattr(sys, "argv", [*base, *bad])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err


def test_plots_are_skipped_without_matplotlib(tmp_path, monkeypatch, capsys) -> None:
    from prunekit.report.plots import write_depth_plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    plan = PruningPlan("blockpruner", {}, removed_blocks=["1.mlp"])
    plan.trajectory = [{"step": 1, "removed": "1.mlp", "blocks": ["1.mlp"], "calib_ppl": 9.0}]
    assert write_depth_plots(tmp_path, plan, num_layers=4) == []
    err = capsys.readouterr().err
    assert "plots skipped" in err and err.count("\n") == 1


def test_resume_refuses_a_different_dtype(calib, tmp_path, monkeypatch) -> None:
    """Scores of an fp32 search and a bf16 one are not comparable: no mixed trajectory."""
    real_checkpointer = blockpruner_module.checkpointer

    def interrupting_checkpointer(*args, **kwargs):
        save = real_checkpointer(*args, **kwargs)

        def save_then_crash(state):
            save(state)
            raise KeyboardInterrupt

        return save_then_crash

    monkeypatch.setattr(blockpruner_module, "checkpointer", interrupting_checkpointer)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        prune(_tiny(), "blockpruner", out=run, blocks=3, **calib)
    monkeypatch.undo()
    assert json.loads((run / PARTIAL_PLAN_FILE).read_text())["settings"]["dtype"] == "fp32"

    bf16 = from_model(tiny_model("llama").to(torch.bfloat16), tiny_tokenizer(), spec="tiny-llama")
    with pytest.raises(PlanError) as refused:
        prune(bf16, "blockpruner", out=run, resume=True, blocks=3, **calib)
    message = str(refused.value)
    assert "ran in fp32 and the model is loaded in bf16" in message and "\n" not in message
    resumed = prune(_tiny(), "blockpruner", out=run, resume=True, blocks=3, **calib).plan
    assert len(resumed.removed_blocks) == 3 and resumed.settings["dtype"] == "fp32"
