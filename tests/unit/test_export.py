"""Export and reload: every method on every tiny family, logits and cached generation unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.errors import UnsupportedArchitectureError
from prunekit.export.load import load_pruned
from prunekit.export.save import export_model
from prunekit.export.shim import SHIMS
from prunekit.methods.catalogue import all_methods, get_method
from prunekit.models.loading import from_model
from prunekit.models.tiny import TINY_FAMILIES, TINY_VOCAB, tiny_model, tiny_tokenizer
from prunekit.pipeline.apply import run_method
from tests.unit.settings_helpers import settings_for

IDS = torch.randint(0, TINY_VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
METHODS = [m.name for m in all_methods()]
# Every method on every family; the shim family (llama) and a cheap method of each kind per family
# form the quick tier, the rest is marked slow (`pytest -m "not slow"` skips it).
QUICK = {"sleb", "rm-block", "magnitude", "fasp"}
MATRIX = [
    pytest.param(f, m, marks=() if f == "llama" or m in QUICK else pytest.mark.slow)
    for f in TINY_FAMILIES
    for m in METHODS
]


def fresh(family: str):
    return from_model(tiny_model(family), tiny_tokenizer(), spec=f"tiny-{family}")


@pytest.fixture(scope="module", autouse=True)
def calib_file(tmp_path_factory):
    """A small calibration text: tokenizing a whole corpus would dominate these tests."""
    global CALIB
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(" ".join(tiny_tokenizer().decode(list(range(3, TINY_VOCAB))) for _ in range(3)))
    CALIB = str(path)


CALIB = ""


def prune_fresh(family: str, method: str):
    loaded = fresh(family)
    values = dict(blocks=2, sparsity=0.4, n_samples=2, seqlen=32, calib=CALIB, seed=0)
    settings = settings_for(method, **values)
    settings.validate()
    plan = run_method(get_method(method), loaded, settings)  # the decision carried out
    return loaded, plan


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def greedy(model, ids: torch.Tensor, new_tokens: int, use_cache: bool) -> torch.Tensor:
    if use_cache:
        return model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    seq = ids
    for _ in range(new_tokens):
        nxt = logits(model, seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq


def weight_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


@pytest.fixture(scope="module")
def dense_bytes(tmp_path_factory) -> dict[str, int]:
    """Weight bytes of each family's unpruned export (the reference for the size check)."""
    root = tmp_path_factory.mktemp("dense")
    return {f: export_model(fresh(f), root / f).weight_bytes for f in TINY_FAMILIES}


@pytest.mark.parametrize(("family", "method"), MATRIX)
def test_every_method_reloads_with_equal_logits(family, method, tmp_path, dense_bytes):
    loaded, plan = prune_fresh(family, method)
    expected = logits(loaded.model)
    params = sum(p.numel() for p in loaded.model.parameters())
    out = tmp_path / "model"
    try:
        result = export_model(loaded, out, plan=plan)
    except UnsupportedArchitectureError as exc:
        # Families without a shim can only be exported when the layers stay uniform.
        assert family not in SHIMS and "hf" in str(exc)
        assert not out.exists()
        return
    reloaded = load_pruned(out, device="cpu")
    assert torch.allclose(logits(reloaded.model), expected, atol=1e-5, rtol=1e-4)

    prompt = IDS[:1, :6]
    cached = greedy(reloaded.model, prompt, 6, use_cache=True)
    assert torch.equal(cached, greedy(reloaded.model, prompt, 6, use_cache=False))

    # The directory shrinks with the parameters (fp32: 4 bytes each, headers aside).
    saved = weight_bytes(out)
    assert abs(saved - 4 * params) < 32_000
    dense_params = sum(p.numel() for p in tiny_model(family).parameters())
    removed = dense_params - params
    assert abs((dense_bytes[family] - saved) - 4 * removed) < 32_000
    report = json.loads((out / "report.json").read_text())
    assert report["export"]["format"] == result.format
    assert (out / "plan.json").is_file()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_whole_layer_removal_uses_stock_format(family, tmp_path):
    from transformers import AutoModelForCausalLM

    loaded, _ = prune_fresh(family, "sleb")
    result = export_model(loaded, tmp_path / "m")
    assert result.format == "hf"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "auto_map" not in config and "per_layer_config" not in config
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    assert torch.allclose(logits(plain), logits(loaded.model), atol=1e-5, rtol=1e-4)


def test_heterogeneous_export_records_per_layer_config(tmp_path):
    loaded, _ = prune_fresh("llama", "blockpruner")
    from prunekit.surgery.width import slice_mlp

    adapter = loaded.adapter
    layer = adapter.layers(loaded.model)[-1]
    if adapter.has_block(layer, "mlp"):
        slice_mlp(adapter.mlp_channels(layer), list(range(40)))
    result = export_model(loaded, tmp_path / "m", fmt="auto")
    assert result.format == "prunekit"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "prunekit_llama"
    assert config["base_model_type"] == "llama"
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_prunekit_llama.")
    assert config["per_layer_config"]  # sparse: only the layers that differ
    assert (tmp_path / "m" / "modeling_prunekit_llama.py").is_file()


def test_format_hf_refuses_heterogeneous_model(tmp_path):
    from prunekit.errors import ExportError

    loaded, _ = prune_fresh("llama", "fasp")
    with pytest.raises(ExportError, match="stock 'hf' format"):
        export_model(loaded, tmp_path / "m", fmt="hf")
    assert not (tmp_path / "m").exists()


def test_dtype_and_sharding(tmp_path):
    loaded, _ = prune_fresh("qwen2", "fasp")
    expected = logits(loaded.model)
    result = export_model(loaded, tmp_path / "m", dtype="bf16", max_shard_size=100_000)
    assert result.dtype == "bf16"
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "m").glob("*.safetensors"))) > 1
    reloaded = load_pruned(tmp_path / "m", device="cpu")
    assert reloaded.dtype == torch.bfloat16
    assert torch.allclose(logits(reloaded.model).float(), expected, atol=0.1)


def test_reloaded_model_can_be_pruned_and_exported_again(tmp_path):
    loaded, _ = prune_fresh("llama", "fasp")
    export_model(loaded, tmp_path / "a")
    again = load_pruned(tmp_path / "a", device="cpu")
    assert again.adapter.family == "llama"
    result = export_model(again, tmp_path / "b")
    assert result.format == "prunekit"
    assert torch.equal(logits(load_pruned(tmp_path / "b", device="cpu").model), logits(again.model))


def test_shim_follows_set_attn_implementation(tmp_path, monkeypatch):
    """A FASP export (value heads smaller than query heads) in the shim: switching the model to
    eager must reach every layer (no SDPA call is left) and keep the logits."""
    loaded, _ = prune_fresh("llama", "fasp")
    assert export_model(loaded, tmp_path / "m").format == "prunekit"
    model = load_pruned(tmp_path / "m", device="cpu").model
    assert type(model).__name__ == "PrunekitLlamaForCausalLM"
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    before = logits(model)
    assert calls  # loaded with SDPA
    calls.clear()
    model.set_attn_implementation("eager")
    torch.testing.assert_close(logits(model), before, rtol=1e-4, atol=1e-5)
    assert not calls
