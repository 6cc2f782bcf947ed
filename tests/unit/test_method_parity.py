"""Every depth method and the combined methods plan the same in memory and streamed, on a tiny
model of every family (width methods: test_width_parity.py).

Streamed runs call the method as the pipeline does, on a lazy skeleton whose weights stay in
small shards. Depth methods run without an export sink (the surgery reshapes the skeleton, no
layer is written), so the families whose export refuses per-layer shapes are compared too; the
combined methods write to a real shard writer, so each layer reaches it once, in its final
shape after both stages, and is compared with the in-memory pruned model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import prunekit
from prunekit.api import lazy_loaded
from prunekit.engine.residency import Streamed
from prunekit.errors import SettingsError
from prunekit.export.load import load_pruned
from prunekit.export.shards import ShardWriter
from prunekit.export.streamed import PartWriter
from prunekit.methods.catalogue import all_methods, get_method
from prunekit.methods.settings import MethodSettings
from prunekit.models.lazy import LazyModel
from prunekit.models.loading import load_model
from prunekit.pipeline.apply import run_method
from prunekit.pipeline.streamed_stages import run_streamed_method
from prunekit.plan import PruningPlan
from tests.unit.cli_helpers import run_main
from tests.unit.test_streamed_depth import save_small_shards
from tests.unit.test_streamed_width import TOLERANCE
from tests.unit.width_helpers import logits

pytestmark = pytest.mark.usefixtures("data_dir")

CALIB = dict(n_samples=2, seqlen=24, calib="wikitext2", seed=0)
# Every registered depth method, BlockPruner also in the paper's setting.
DEPTH = {
    "blockpruner": ("blockpruner", {}),
    "blockpruner-paper": ("blockpruner", dict(criterion="ppl", candidates="blocks")),
    "sleb": ("sleb", {}),
    "layer-ppl": ("layer-ppl", {}),
    "shortgpt": ("shortgpt", {}),
    "rm": ("rm", {}),
    "rm-block": ("rm-block", {}),
    "bi-block": ("bi-block", {}),
}
COMBINED = ("blockpruner+fasp", "fasp+blockpruner")


def test_every_depth_method_is_compared():
    registered = {m.name for m in all_methods() if m.family == "depth"}
    assert registered == {method for method, _ in DEPTH.values()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Each family's sharded dense checkpoint, saved once for the module."""
    root = tmp_path_factory.mktemp("method-parity")
    saved: dict[str, Path] = {}

    def source(family: str) -> Path:
        if family not in saved:
            saved[family] = save_small_shards(family, root / family)
        return saved[family]

    return source


def depth_settings(variant: str) -> tuple[str, MethodSettings]:
    method, extra = DEPTH[variant]
    return method, get_method(method).make_settings(blocks=2, **CALIB, **extra)


def streamed_loaded(source: Path, sink=None):
    lazy = LazyModel.open(str(source), dtype="fp32", device="cpu")
    loaded = lazy_loaded(lazy, str(source))
    loaded.residency = Streamed(lazy, sink)
    return loaded


def assert_same_depth_plan(got: PruningPlan, expected: PruningPlan) -> None:
    assert got.removed_blocks == expected.removed_blocks
    assert len(got.removed_blocks) >= 2  # something was removed
    assert got.extra["kept_layers"] == expected.extra["kept_layers"]
    assert got.extra["layer_blocks"] == expected.extra["layer_blocks"]


@pytest.mark.parametrize("variant", list(DEPTH))
def test_depth_plan_streamed_equals_in_memory(family, variant, sources):
    method, settings = depth_settings(variant)
    memory = load_model(str(sources(family)), dtype="fp32", device="cpu")
    expected = run_method(get_method(method), memory, settings)
    loaded = streamed_loaded(sources(family))
    got = run_method(get_method(method), loaded, depth_settings(variant)[1])
    assert_same_depth_plan(got, expected)
    assert got.model == expected.model  # the fingerprint read from the shards
    assert loaded.residency.lazy.onloaded_bytes() == 0


def combined_settings(method: str) -> MethodSettings:
    return get_method(method).make_settings(ratio=0.3, **CALIB)


@pytest.mark.parametrize("method", COMBINED)
def test_combined_plan_streamed_equals_in_memory(family, method, sources, tmp_path):
    memory = load_model(str(sources(family)), dtype="fp32", device="cpu")
    expected = run_method(get_method(method), memory, combined_settings(method))

    lazy = LazyModel.open(str(sources(family)), dtype="fp32", device="cpu")
    loaded = lazy_loaded(lazy, str(sources(family)))
    (tmp_path / "out").mkdir()
    with ShardWriter(tmp_path / "out", max_shard_size="40KB") as writer:
        loaded.residency = Streamed(lazy, PartWriter(lazy, writer))
        got = run_streamed_method(get_method(method), loaded, combined_settings(method))
        loaded.residency.finish_outside_layers()
    assert [s["method"] for s in got.stages] == [s["method"] for s in expected.stages]
    for stage, want in zip(got.stages, expected.stages, strict=True):
        assert stage.get("removed_blocks") == want.get("removed_blocks")
        assert stage.get("kept_channels") == want.get("kept_channels")
    assert got.stages[0]["model"] == expected.stages[0]["model"]
    if method.startswith("blockpruner"):  # the depth stage changes no weight: exact fingerprint
        assert got.stages[1]["model"] == expected.stages[1]["model"]
    assert got.extra["stages"][1]["params_after"] == expected.extra["stages"][1]["params_after"]
    assert got.model == expected.model

    # Each layer reached the export once (the writer refuses a name twice), in its final shape.
    written: dict[str, torch.Tensor] = {}
    for shard in sorted((tmp_path / "out").glob("*.safetensors")):
        written.update(load_file(str(shard)))
    state = memory.model.state_dict()
    saved = set(PartWriter(lazy, writer).saved_names)  # tied duplicates dropped
    assert set(written) == {name for name in state if name in saved}
    for name, tensor in written.items():
        torch.testing.assert_close(tensor, state[name], **TOLERANCE, msg=name)
    assert lazy.onloaded_bytes() == 0
    assert not list(tmp_path.glob(".prunekit-stage-*"))  # the width stage's spill is removed


@pytest.mark.parametrize(
    ("family", "method"), [("llama", "blockpruner+fasp"), ("qwen2", "fasp+blockpruner")]
)
def test_streamed_combined_export_reloads_to_the_in_memory_model(family, method, sources, tmp_path):
    settings = dict(ratio=0.3, **CALIB)
    memory = prunekit.prune(
        load_model(str(sources(family)), dtype="fp32", device="cpu"), method, **settings
    )
    streamed = prunekit.prune(
        str(sources(family)),
        method,
        stream=True,
        dtype="fp32",
        device="cpu",
        save=tmp_path / "pruned",
        out=tmp_path / "run",
        **settings,
    )
    assert streamed.report["stages"] == memory.report["stages"]
    assert streamed.report["params"] == memory.report["params"]
    reloaded = load_pruned(tmp_path / "pruned", dtype="fp32", device="cpu")
    assert reloaded.model.state_dict().keys() == memory.model.state_dict().keys()
    torch.testing.assert_close(logits(reloaded.model), logits(memory.model), **TOLERANCE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned", "run"]  # no spill left


@pytest.mark.parametrize(
    ("method", "settings", "reason"),
    [
        ("fasp", {}, "its cost allocation"),
        ("fasp", {"allocation": "uniform"}, "its value channels leave the value heads narrower"),
        ("flap", {}, "its global threshold gives each layer its own widths"),
        ("blockpruner+fasp", {"allocation": "cost"}, "its fasp stage: its cost allocation"),
    ],
)
def test_streamed_non_stock_shapes_are_refused_before_any_weight(
    method, settings, reason, sources, tmp_path, monkeypatch
):
    """OPT's export holds stock shapes only: refused in one line before a weight is read."""

    def no_weights(*args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(LazyModel, "open", no_weights)
    monkeypatch.setattr("prunekit.pipeline.streamed.evaluate_from_files", no_weights)
    with pytest.raises(
        SettingsError,
        match=f"{re.escape(method)} cannot be exported streamed for OPT: {reason}",
    ):
        prunekit.prune(
            str(sources("opt")),
            method,
            stream=True,
            save=tmp_path / "pruned",
            ratio=0.2,
            eval_datasets=["wikitext2"],
            **CALIB,
            **settings,
        )
    assert not (tmp_path / "pruned").exists()


def test_cli_refuses_streamed_per_layer_widths_in_one_line(sources, tmp_path, monkeypatch, capsys):
    args = ["prune", "--model", str(sources("gemma3")), "--method", "flap", "--ratio", "0.2"]
    args += ["--stream", "--save", str(tmp_path / "pruned"), "--out", str(tmp_path / "run")]
    code, _, err = run_main(monkeypatch, capsys, args)
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "flap cannot be exported streamed for Gemma 3" in err
    assert not (tmp_path / "pruned").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("streamed", [False, True])
def test_memory_model_of_a_combined_method_is_its_larger_stage(streamed):
    from prunekit.memory import MemorySettings, plan_memory
    from prunekit.models.tiny import tiny_config

    config = tiny_config("llama")

    def peak(method: str) -> int:
        settings = MemorySettings(method=method, streamed=streamed, n_samples=4, seqlen=32)
        return plan_memory(config, settings).peak("host")

    stages = max(peak("blockpruner"), peak("fasp"))
    assert peak("blockpruner+fasp") == peak("fasp+blockpruner") == stages
    plan = plan_memory(config, MemorySettings(method="fasp+blockpruner", streamed=streamed))
    assert plan.settings.method == "fasp+blockpruner"
