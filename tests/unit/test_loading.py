"""Model specs resolve to models, or to one clear error."""

from __future__ import annotations

import pytest
import torch

from prunekit import load_model
from prunekit.errors import ModelNotFoundError, PrunekitError, SettingsError
from prunekit.models import dtype as dtype_module
from prunekit.models.dtype import resolve_dtype
from prunekit.models.tiny import save_tiny


def test_load_local_directory(tmp_path):
    save_tiny("qwen2", str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"), dtype="fp32", device="cpu")
    assert loaded.adapter.family == "qwen2"
    assert loaded.dtype == torch.float32
    assert loaded.identity()["num_hidden_layers"] == 4
    assert loaded.tokenizer("the fox").input_ids


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-such-model", "unknown model 'no-such-model'"),
        ("./missing/dir", "model directory not found"),
        ("/nowhere/model.gguf", "GGUF file not found"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ModelNotFoundError, match=message):
        load_model(spec, device="cpu")


def test_corrupt_gguf_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(PrunekitError, match="cannot read GGUF file"):
        load_model(str(bad), device="cpu")
    assert not list((tmp_path / "cache").rglob("config.json"))  # nothing half-cached


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="cannot load model"):
        load_model(str(tmp_path / "empty"), device="cpu")


def test_default_dtype_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(dtype_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(dtype_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("fp16") == torch.float16
    with pytest.raises(SettingsError, match="unknown dtype"):
        resolve_dtype("int3")
