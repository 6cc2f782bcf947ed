"""Bad input to export/load: one clear line, a PrunekitError, a non-zero CLI exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prunekit.errors import ExportError, PlanError
from prunekit.export.from_run import export_run
from prunekit.export.load import load_pruned
from prunekit.export.save import export_model
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import from_model
from prunekit.models.tiny import save_tiny, tiny_model, tiny_tokenizer
from prunekit.plan import PruningPlan, write_json_atomic
from prunekit.surgery.depth import remove_blocks


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def exported(tmp_path):
    loaded = from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")
    remove_blocks(loaded, [BlockRef(1, "attn")])
    export_model(loaded, tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def run_dir(tmp_path):
    """A depth run directory whose plan names a tiny base model saved on disk."""
    base = save_tiny("llama", str(tmp_path / "base"))
    from prunekit.models.loading import load_model

    loaded = load_model(base, dtype="fp32", device="cpu")
    plan = PruningPlan(method="manual", model=loaded.identity(), removed_blocks=["1.attn"])
    (tmp_path / "run").mkdir()
    plan.save(tmp_path / "run" / "plan.json")
    write_json_atomic(tmp_path / "run" / "report.json", {"model": {"spec": base, "dtype": "fp32"}})
    return tmp_path / "run"


def test_truncated_weights(exported):
    weights = exported / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ExportError, match="corrupt or truncated"):
        load_pruned(exported, device="cpu")


def test_missing_config(exported):
    (exported / "config.json").unlink()
    with pytest.raises(ExportError, match="no config.json"):
        load_pruned(exported, device="cpu")


def test_missing_shard(tmp_path):
    loaded = from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")
    export_model(loaded, tmp_path / "m", max_shard_size=100_000)
    next(iter(sorted((tmp_path / "m").glob("model-*.safetensors")))).unlink()
    with pytest.raises(ExportError, match="missing weight shard"):
        load_pruned(tmp_path / "m", device="cpu")


def test_per_layer_config_disagrees_with_weights(exported):
    config = json.loads((exported / "config.json").read_text())
    config["per_layer_config"] = {"0": {"intermediate_size": 50}, **config["per_layer_config"]}
    (exported / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="does not describe the weights"):
        load_pruned(exported, device="cpu")


def test_plan_made_for_another_model(run_dir, tmp_path):
    other = save_tiny("llama", str(tmp_path / "other"), num_hidden_layers=3)
    with pytest.raises(PlanError, match="another model"):
        export_run(run_dir, tmp_path / "out", model=other, device="cpu")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(run_dir, tmp_path):
    export_run(run_dir, tmp_path / "out", device="cpu")
    with pytest.raises(ExportError, match="--overwrite"):
        export_run(run_dir, tmp_path / "out", device="cpu")
    export_run(run_dir, tmp_path / "out", device="cpu", overwrite=True)
    assert load_pruned(tmp_path / "out", device="cpu").model is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no leftovers


def test_failed_export_leaves_no_directory(tmp_path, monkeypatch):
    import prunekit.export.save as save

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(save.shutil, "copyfile", boom)
    loaded = from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")
    remove_blocks(loaded, [BlockRef(1, "attn")])  # heterogeneous: the shim file is copied
    with pytest.raises(OSError):
        export_model(loaded, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_line_with_nonzero_exit(run_dir, exported, tmp_path):
    (exported / "model.safetensors").write_bytes(b"not safetensors")
    cases = [
        ("export", str(run_dir), "--out", str(exported)),  # exists
        ("export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")),  # not a run dir
        ("bench-speed", str(exported), "--baseline", str(exported)),  # corrupt weights
    ]
    for args in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
