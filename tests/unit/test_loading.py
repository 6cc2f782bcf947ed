"""Model specs resolve to models, or to one clear error."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from prunekit import load_model
from prunekit.errors import ModelNotFoundError, PrunekitError, SettingsError
from prunekit.models import dtype as dtype_module
from prunekit.models import loading
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


def test_a_gguf_missing_from_the_cache_is_dequantized_once_by_concurrent_loaders(
    tmp_path, monkeypatch
):
    """Two loaders (test workers, CLI runs) missing the cache at once: the second waits for the
    first's copy instead of dequantizing again and renaming over it."""
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def slow_dequantize(source, target):
        calls.append(source)
        time.sleep(0.3)  # long enough that the other thread arrives while this one works
        target.mkdir()
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_dequantize_into", slow_dequantize)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(loading.dequantized_gguf_dir(gguf)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [gguf]
    assert results == [loading.gguf_cache_path(gguf)] * 2


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
