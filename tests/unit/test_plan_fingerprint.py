"""Plans record a weight fingerprint and refuse other weights of the same architecture (issue 12.2).

The fingerprint must not depend on the dtype or device the checkpoint was loaded in (a plan made
in fp32 is routinely evaluated in bf16), must change when one weight changes, and a mismatch is a
one-line PlanError naming both models unless forced; forcing is recorded.
"""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
import torch

from prunekit.errors import ExportError, PlanError
from prunekit.export.from_run import export_run
from prunekit.models.fingerprint import fingerprints_match, weight_fingerprint
from prunekit.models.loading import from_model, load_model
from prunekit.models.tiny import save_tiny, tiny_model, tiny_tokenizer
from prunekit.plan import PruningPlan, write_json_atomic
from prunekit.runs import load_for_eval, load_run
from prunekit.surgery import apply_plan
from tests.unit.cli_helpers import run_main


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny("llama", str(tmp_path_factory.mktemp("fp") / "base"))


def perturbed_copy(base: str, directory: str, scale: float = 0.0, one: float = 0.0) -> str:
    """The base checkpoint with one embedding weight moved by ``one`` and every weight scaled
    noise of relative size ``scale`` (a stand-in for a fine-tuned variant)."""
    loaded = load_model(base, dtype="fp32", device="cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in loaded.model.parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.add_(scale * param.abs().mean() * noise)
        loaded.model.get_input_embeddings().weight[3, 5] += one
    loaded.model.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    return directory


def identity(spec: str, dtype: str = "fp32") -> dict:
    return load_model(spec, dtype=dtype, device="cpu").identity()


def depth_run(base: str, directory) -> str:
    plan = PruningPlan(method="manual", model=identity(base), removed_blocks=["1.attn"])
    directory.mkdir()
    plan.save(directory / "plan.json")
    write_json_atomic(directory / "report.json", {"model": {"spec": base, "dtype": "fp32"}})
    return directory


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_fingerprint_is_the_same_in_every_dtype(base_dir, dtype):
    fp32 = identity(base_dir)["fingerprint"]
    other = identity(base_dir, dtype)["fingerprint"]
    assert other["dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[dtype]
    if dtype == "bf16":  # fp32 and bf16 loads round to the same bf16 values: the hash itself
        assert other["sha256"] == fp32["sha256"]
    assert fingerprints_match(fp32, other) and fingerprints_match(other, fp32)


def test_a_bf16_checkpoint_has_one_hash_in_fp32_and_bf16(base_dir, tmp_path):
    loaded = load_model(base_dir, dtype="bf16", device="cpu")
    loaded.model.save_pretrained(tmp_path / "bf16")
    loaded.tokenizer.save_pretrained(tmp_path / "bf16")
    hashes = {
        identity(str(tmp_path / "bf16"), d)["fingerprint"]["sha256"] for d in ("fp32", "bf16")
    }
    assert hashes == {loaded.identity()["fingerprint"]["sha256"]}


def test_one_changed_weight_changes_the_fingerprint(base_dir, tmp_path):
    changed = perturbed_copy(base_dir, str(tmp_path / "changed"), one=0.25)
    before, after = identity(base_dir)["fingerprint"], identity(changed)["fingerprint"]
    assert before["sha256"] != after["sha256"]
    assert not fingerprints_match(before, after)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_a_fine_tuned_variant_is_refused_in_every_dtype(base_dir, tmp_path, dtype):
    # 20 % noise: the fp16 comparison (a sketch with a double-rounding tolerance) catches it too.
    variant = perturbed_copy(base_dir, str(tmp_path / "variant"), scale=0.2)
    plan = PruningPlan(method="manual", model=identity(base_dir), removed_blocks=["1.attn"])
    with pytest.raises(PlanError) as info:
        plan.check_model(identity(variant, dtype))
    message = str(info.value)
    assert "\n" not in message and "other weights" in message and "--force" in message
    assert repr(base_dir) in message and repr(variant) in message  # names both models
    plan.check_model(identity(base_dir, dtype))  # the plan's own checkpoint in that dtype is fine


def test_fingerprint_ignores_the_device_of_the_weights(base_dir):
    loaded = load_model(base_dir, dtype="fp32", device="cpu")
    expected = loaded.identity()["fingerprint"]
    device = "cuda" if torch.cuda.is_available() else "meta"
    if device == "meta":
        # Lazily loaded weights have no values: no fingerprint, and no crash.
        meta = from_model(tiny_model("llama").to("meta"), tiny_tokenizer())
        assert meta.identity()["fingerprint"] is None
        plan = PruningPlan(method="manual", model=loaded.identity())
        plan.check_model(meta.identity())  # nothing to compare: structure only
    else:
        loaded.model.to(device)
        assert weight_fingerprint(loaded.model, loaded.adapter)["sha256"] == expected["sha256"]


def test_an_old_plan_without_fingerprint_still_applies(base_dir):
    recorded = identity(base_dir)
    del recorded["fingerprint"]
    plan = PruningPlan(method="manual", model=recorded, removed_blocks=["1.attn"])
    loaded = load_model(base_dir, dtype="fp32", device="cpu")
    assert apply_plan(loaded, plan) is None
    assert loaded.model.config.num_hidden_layers == 4  # one block gone, the layer stays


def test_force_applies_and_returns_the_mismatch(base_dir, tmp_path, caplog):
    variant = perturbed_copy(base_dir, str(tmp_path / "variant"), one=0.25)
    plan = PruningPlan(method="manual", model=identity(base_dir), removed_blocks=["1.attn"])
    loaded = load_model(variant, dtype="fp32", device="cpu")
    with caplog.at_level(logging.WARNING, logger="prunekit.plan"):
        mismatch = apply_plan(loaded, plan, force=True)
    assert mismatch["plan_model"]["spec"] == base_dir
    assert mismatch["loaded_model"]["spec"] == variant
    assert mismatch["plan_model"]["fingerprint"] != mismatch["loaded_model"]["fingerprint"]
    assert loaded.forced_model_mismatch == mismatch
    assert [r.message for r in caplog.records if "applied anyway" in r.message]


def test_run_replay_refuses_other_weights_unless_forced(base_dir, tmp_path):
    run_dir = depth_run(base_dir, tmp_path / "run")
    variant = perturbed_copy(base_dir, str(tmp_path / "variant"), one=0.25)
    with pytest.raises(PlanError, match="other weights"):
        load_run(run_dir, base=variant, dtype="fp32", device="cpu")
    assert load_run(run_dir, base=variant, device="cpu", force=True).forced_model_mismatch
    target = load_for_eval(str(run_dir), base=variant, device="cpu", force=True)
    assert target.describe()["forced_model_mismatch"]["loaded_model"]["spec"] == variant
    # The run's own base model in bf16 is not a mismatch.
    same = load_for_eval(str(run_dir), dtype="bf16", device="cpu")
    assert "forced_model_mismatch" not in same.describe()


def test_export_refuses_other_weights_and_records_force(base_dir, tmp_path):
    run_dir = depth_run(base_dir, tmp_path / "run")
    variant = perturbed_copy(base_dir, str(tmp_path / "variant"), one=0.25)
    with pytest.raises(PlanError, match="other weights"):
        export_run(run_dir, tmp_path / "out", model=variant, device="cpu")
    assert not (tmp_path / "out").exists()
    export_run(run_dir, tmp_path / "out", model=variant, device="cpu", force=True)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["forced_model_mismatch"]["plan_model"]["spec"] == base_dir
    # --force is not --overwrite: an existing output still needs overwrite=True.
    with pytest.raises(ExportError, match="pass --overwrite to replace it"):
        export_run(run_dir, tmp_path / "out", device="cpu", force=True)
    export_run(run_dir, tmp_path / "out", device="cpu", overwrite=True)
    assert "forced_model_mismatch" not in json.loads((tmp_path / "out" / "report.json").read_text())


def test_cli_force_and_overwrite(base_dir, tmp_path, monkeypatch, capsys):
    def run_cli(*args: str) -> subprocess.CompletedProcess:
        """The CLI's entry point in-process (a subprocess per call cost ~4 s of imports)."""
        code, out, err = run_main(monkeypatch, capsys, list(args))
        return subprocess.CompletedProcess(args, code or 0, out, err)

    run_dir = depth_run(base_dir, tmp_path / "run")
    variant = perturbed_copy(base_dir, str(tmp_path / "variant"), one=0.25)
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    evaluate = ["eval", str(run_dir), "--model", variant, "--ppl", str(text), "--seqlen", "16"]
    evaluate += ["--max-windows", "1", "--device", "cpu", "--json", str(tmp_path / "e.json")]
    refused = run_cli(*evaluate)
    assert refused.returncode == 2 and "other weights" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    forced = run_cli(*evaluate, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "applied anyway (--force)" in forced.stderr  # the warning line
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["forced_model_mismatch"]["loaded_model"]["spec"] == variant

    out = str(tmp_path / "out")
    assert run_cli("export", str(run_dir), "--out", out, "--device", "cpu").returncode == 0
    again = run_cli("export", str(run_dir), "--out", out, "--device", "cpu", "--force")
    assert again.returncode == 2 and "pass --overwrite to replace it" in again.stderr
    replaced = run_cli(
        "export", str(run_dir), "--out", out, "--model", variant, "--overwrite", "--force"
    )
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["forced_model_mismatch"]
