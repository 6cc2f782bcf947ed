"""Combined plans (depth then width): the split, the routing, replay, export, GGUF, refusals."""

from __future__ import annotations

import json
import re
import warnings

import gguf
import pytest
import torch

import prunekit
from prunekit.errors import PlanError, SettingsError
from prunekit.export.from_run import export_run
from prunekit.export.load import load_pruned
from prunekit.methods.catalogue import get_method
from prunekit.methods.combined import prune_combined
from prunekit.methods.width.selection import kept_count
from prunekit.methods.width.structure import layer_units
from prunekit.models.loading import from_model
from prunekit.models.tiny import TINY_VOCAB, save_tiny, tiny_model, tiny_tokenizer
from prunekit.pipeline.apply import run_stage
from prunekit.plan import PLAN_VERSION, STAGED_PLAN_VERSION, PruningPlan
from prunekit.runs import load_for_eval
from prunekit.surgery import apply_plan
from tests.unit.cli_helpers import run_main

IDS = torch.randint(0, TINY_VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
RATIO = 0.3
SHARE = 0.4


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, use_cache=False).logits


def fresh():
    return from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return save_tiny("llama", str(tmp_path_factory.mktemp("tiny") / "llama"))


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(" ".join(tiny_tokenizer().decode(list(range(3, TINY_VOCAB))) for _ in range(3)))
    return str(path)


@pytest.fixture(scope="module")
def run(tiny_dir, calib, tmp_path_factory):
    """blockpruner+fasp at --ratio 0.3, --depth-share 0.4, one setting of each stage given."""
    out = tmp_path_factory.mktemp("combined") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few tokens per restored column on a tiny run
        result = prunekit.prune(
            tiny_dir,
            "blockpruner+fasp",
            ratio=RATIO,
            depth_share=SHARE,
            criterion="ppl-per-param",  # BlockPruner's
            multiple_of=2,  # FASP's
            calib=calib,
            n_samples=2,
            seqlen=32,
            out=out,
            device="cpu",
            dtype="float32",
        )
    return result, out


def test_the_split_routes_settings_and_reaches_the_ratio(run):
    _result, out = run
    report = json.loads((out / "report.json").read_text())
    assert report["family"] == "combined" and report["split"] == {
        "ratio": RATIO,
        "depth_share": SHARE,
    }
    depth, width = report["stages"]
    assert (depth["method"], width["method"]) == ("blockpruner", "fasp")
    assert (
        depth["settings"]["criterion"] == "ppl-per-param" and "multiple_of" not in depth["settings"]
    )
    assert width["settings"]["multiple_of"] == 2 and "criterion" not in width["settings"]
    assert depth["settings"]["calib"] == width["settings"]["calib"]  # calibration: both stages
    # Settings left to the methods name what they chose, not None.
    assert depth["settings"]["candidates"] == "blocks+layers"
    assert width["settings"]["allocation"] == "cost"
    assert depth["target"] == {"ratio": pytest.approx(SHARE * RATIO)}
    # The width stage's own ratio comes from what the depth stage really removed.
    dense = depth["params_before"]
    assert width["params_before"] == depth["params_after"] < dense
    assert width["target"]["ratio"] == pytest.approx(
        (RATIO * dense - depth["removed_params"]) / depth["params_after"]
    )
    # ratio_total reaches R, overshooting by less than one channel of every group of every layer.
    granularity = (
        sum(2 * (u.mlp_unit_params + u.num_kv_heads * u.value_unit_params) for u in units()) / dense
    )
    achieved = report["params"]["ratio_total"]
    assert RATIO <= achieved < RATIO + granularity
    assert width["ratio_total_after"] == pytest.approx(achieved)
    assert "## Stages" in (out / "report.md").read_text()


def units():
    return layer_units(fresh())


def test_the_plan_is_one_file_with_ordered_stages_in_the_depth_pruned_numbering(run):
    result, out = run
    plan = PruningPlan.load(out / "plan.json")
    assert plan.version == STAGED_PLAN_VERSION and plan.method == "blockpruner+fasp"
    depth, width = plan.stage_plans()
    assert depth.removed_blocks and not depth.kept_channels
    assert width.kept_channels and not width.removed_blocks
    # The width stage was made on the depth-pruned model: its indices are the surviving layers'.
    survivors = len(depth.extra["kept_layers"])
    assert width.model["num_hidden_layers"] == survivors
    removed_by_depth = result.report["stages"][0]["removed_params"]
    assert width.model["num_parameters"] == plan.model["num_parameters"] - removed_by_depth
    assert max(int(k) for k in width.kept_channels) < survivors
    assert plan.all_removed_blocks() == depth.removed_blocks
    assert width.extra["restored_weights"] and (out / width.extra["restored_weights"]).is_file()
    # Each stage carried out by the pipeline: the depth stage's plots, no partial plan left.
    assert {p.name for p in out.glob("*.png")} == {"calib_ppl.png", "layer_map.png"}
    assert not (out / "plan.partial.json").exists()


def test_replay_eval_and_prunekit_export_give_equal_logits(run, tmp_path):
    result, out = run
    expected = logits(result.model)
    replayed = fresh()
    apply_plan(replayed, PruningPlan.load(out / "plan.json"), out)
    assert torch.equal(logits(replayed.model), expected)
    evaluated = load_for_eval(str(out), device="cpu", dtype="float32")  # `prunekit eval RUN`
    assert evaluated.kind == "run" and torch.equal(logits(evaluated.loaded.model), expected)
    exported = export_run(out, tmp_path / "model", fmt="prunekit")
    reloaded = load_pruned(exported.path, device="cpu")
    assert torch.allclose(logits(reloaded.model), expected, atol=1e-5, rtol=1e-4)
    card = (exported.path / "README.md").read_text()
    assert "Removed (original layer indices)" in card and "what each remaining layer kept" in card


def test_gguf_export_of_the_run_reads_back(run, tmp_path):
    result, out = run
    path = tmp_path / "model.gguf"
    export_run(out, path, fmt="gguf", gguf_type="f32")
    reader = gguf.GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    assert arch == "deci"
    layers = result.loaded.adapter.layers(result.model)
    assert reader.fields["deci.block_count"].parts[-1][0] == len(layers)
    names = {t.name: t for t in reader.tensors}
    for index, layer in enumerate(layers):
        if result.loaded.adapter.has_block(layer, "mlp"):
            width = result.loaded.adapter.mlp_channels(layer).width
            assert list(names[f"blk.{index}.ffn_down.weight"].shape) == [width, 64]


def test_prune_combined_takes_each_stages_own_target(calib):
    loaded = fresh()
    depth = get_method("blockpruner").make_settings(blocks=2, calib=calib, n_samples=2, seqlen=32)
    width = get_method("magnitude").make_settings(sparsity=0.5)
    # Any pair; each stage carried out by the pipeline's stage runner.
    plan = prune_combined(loaded, "blockpruner", "magnitude", depth, width, run_stage=run_stage)
    first, second = plan.stage_plans()
    assert len(first.removed_blocks) == 2
    for key, entry in second.kept_channels.items():
        layer = loaded.adapter.layers(loaded.model)[int(key)]
        if "mlp" in entry:
            assert len(entry["mlp"]) == kept_count(96, 0.5) == layer.mlp.down_proj.in_features
    replayed = fresh()
    apply_plan(replayed, PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict()))))
    assert torch.equal(logits(replayed.model), logits(loaded.model))


def test_a_depth_stage_that_leaves_no_layer_is_refused_in_one_line(calib):
    """Every block of the 4 layers removed: the width stage would get an empty model."""
    blockpruner, fasp = get_method("blockpruner"), get_method("fasp")
    depth = blockpruner.make_settings(blocks=8, calib=calib, n_samples=2, seqlen=32)
    width = fasp.make_settings(sparsity=0.2)
    with pytest.raises(SettingsError, match=r"stage 1 \(blockpruner\) removed every layer"):
        prune_combined(fresh(), "blockpruner", "fasp", depth, width, run_stage=run_stage)
    # Negative control: one block fewer leaves a layer part for FASP to narrow.
    depth = blockpruner.make_settings(blocks=7, calib=calib, n_samples=2, seqlen=32)
    width = get_method("magnitude").make_settings(sparsity=0.2)
    prune_combined(fresh(), "blockpruner", "magnitude", depth, width, run_stage=run_stage)


def test_whole_layers_then_uniform_widths_export_in_the_stock_format(calib, tmp_path):
    from prunekit.export.save import export_model

    loaded = fresh()
    settings = {"calib": calib, "n_samples": 2, "seqlen": 32, "restore": False}
    result = prunekit.prune(
        loaded,
        "sleb+fasp",
        blocks=1,
        sparsity=0.25,
        targets=["mlp"],
        allocation="uniform",
        **settings,
    )
    exported = export_model(result.loaded, tmp_path / "m", plan=result.plan, report=result.report)
    assert exported.format == "hf"  # every layer has both blocks and the same widths
    reloaded = load_pruned(tmp_path / "m", device="cpu")
    assert len(reloaded.adapter.layers(reloaded.model)) == 3
    assert torch.allclose(logits(reloaded.model), logits(result.model), atol=1e-5, rtol=1e-4)


def test_width_then_depth_is_the_reverse_order(calib):
    loaded = fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = prunekit.prune(
            loaded, "fasp+blockpruner", ratio=RATIO, calib=calib, n_samples=2, seqlen=32
        )
    width, depth = result.report["stages"]
    assert (width["family"], depth["family"]) == ("width", "depth")
    assert width["target"]["ratio"] == pytest.approx(0.5 * RATIO)  # default share 0.5
    assert result.report["params"]["ratio_total"] >= RATIO
    replayed = fresh()
    # No run directory: the restored weights were not saved; replay without restoration fails.
    with pytest.raises(PlanError, match="pass the run directory"):
        apply_plan(replayed, result.plan)


def test_a_stage_is_never_applied_to_a_model_it_does_not_describe(run):
    _result, out = run
    plan = PruningPlan.load(out / "plan.json")
    plan.stages.reverse()  # the width stage's indices are the depth-pruned model's
    with pytest.raises(PlanError, match=r"stage 1 \(fasp\) does not fit .*num_parameters"):
        apply_plan(fresh(), plan, out)


def test_the_combined_model_runs_the_same_in_llama_cpp(run, tmp_path):
    from tests.unit.test_gguf_llama_cpp import check_runs_the_same

    result, _ = run
    report = check_runs_the_same(result.loaded, tmp_path, "deci")
    assert len(report["layers"]) == len(result.loaded.adapter.layers(result.model))


def test_single_stage_plans_still_load_at_version_1(tmp_path):
    old = {"method": "sleb", "model": {}, "removed_blocks": ["1.attn", "1.mlp"], "version": 1}
    (tmp_path / "plan.json").write_text(json.dumps(old))
    plan = PruningPlan.load(tmp_path / "plan.json")
    assert plan.stages == [] and plan.version == PLAN_VERSION == 1
    with pytest.raises(PlanError, match="plan version 3"):
        PruningPlan.from_dict({**old, "version": 3})


@pytest.mark.parametrize(
    ("method", "settings", "message"),
    [
        ("blockpruner+fasp", {"ratio": 0.3, "depth_share": 1.0}, "--depth-share must be in (0, 1)"),
        ("blockpruner+fasp", {"ratio": 0.3, "depth_share": 0.0}, "--depth-share must be in (0, 1)"),
        ("blockpruner+nope", {"ratio": 0.3}, "unknown method 'nope' in 'blockpruner+nope'"),
        ("blockpruner+sleb", {"ratio": 0.3}, "combines two depth methods"),
        ("fasp+flap", {"ratio": 0.3}, "combines two width methods"),
        ("blockpruner+fasp+sleb", {"ratio": 0.3}, "two methods joined by '+'"),
        ("blockpruner+fasp", {"ratio": 0.3, "angular": True}, "angular is not a setting of"),
        ("fasp", {"ratio": 0.3, "depth_share": 0.5}, "depth_share is a setting of combined"),
    ],
)
def test_bad_combinations_are_refused_before_loading(method, settings, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        prunekit.prune("no-such-model-is-loaded", method, **settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ratio": 0.3, "blocks": 1}, "not both"),
        ({"blocks": 1}, "needs --ratio R"),
        ({"blocks": 1, "sparsity": 0.2, "depth_share": 0.5}, "--depth-share splits --ratio"),
    ],
)
def test_targets_must_be_a_ratio_or_one_per_stage(settings, message, calib):
    with pytest.raises(SettingsError, match=message):
        prunekit.prune(fresh(), "blockpruner+fasp", calib=calib, n_samples=2, seqlen=32, **settings)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--depth-share", "1.5"], "error: --depth-share must be in (0, 1), got 1.5"),
        (["--stream"], "error: --stream needs --save DIR"),
        (["--angular"], "error: --angular is not a setting of blockpruner+fasp"),
    ],
)
def test_cli_refusals_are_one_line(monkeypatch, capsys, tiny_dir, tmp_path, extra, message):
    extra = [str(tmp_path / "save") if a == "SAVE" else a for a in extra]
    args = ["prune", "--model", tiny_dir, "--method", "blockpruner+fasp", "--ratio", "0.3"]
    code, _, err = run_main(monkeypatch, capsys, [*args, "--out", str(tmp_path / "o"), *extra])
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
