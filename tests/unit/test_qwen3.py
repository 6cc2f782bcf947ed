"""Qwen3 (per-head q/k RMS norms, explicit head_dim) end to end on a tiny random model.

Qwen3 is not in ``TINY_FAMILIES`` (the family-parametrized suite would cost it ~2 minutes);
this file runs each of its paths once: the record's parameter counts, the adapter's
block-by-block forward, every method with export and reload, the heterogeneous export through
the shim (plain transformers with ``trust_remote_code`` too), and GGUF in a real llama.cpp.

The tiny Qwen3's ``head_dim`` (24) is not hidden / heads (16), as in the released models, and
its norm weights are drawn around 1 (not all ones), so a dropped or misplaced q/k norm moves
the logits far beyond every tolerance used here (``test_query_key_norms_change_the_logits``).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit.errors import ExportError, UnsupportedArchitectureError
from prunekit.export.gguf import export_gguf
from prunekit.export.load import load_pruned
from prunekit.export.save import export_model
from prunekit.methods.catalogue import get_method
from prunekit.models.adapters import BlockRef
from prunekit.models.families import model_shapes
from prunekit.models.families.qwen3 import TINY_HEAD_DIM
from prunekit.models.loading import from_model
from prunekit.models.tiny import TINY_VOCAB, tiny_config, tiny_model, tiny_tokenizer
from prunekit.pipeline.apply import run_method
from prunekit.surgery.depth import remove_blocks
from prunekit.surgery.width import set_consumer, slice_heads, slice_mlp, slice_value_channels
from tests.unit.gguf_helpers import (
    LLAMA_F32_TOLERANCE,
    assert_runs_the_same,
    export_report,
    gguf_metadata,
    narrow_mlp,
    narrow_value_heads,
)
from tests.unit.settings_helpers import settings_for
from tests.unit.test_adapters import test_block_by_block_equals_the_stock_forward as block_by_block

IDS = torch.randint(0, TINY_VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
DEPTH = ("blockpruner", "sleb", "shortgpt")
WIDTH = ("fasp", "wanda-sp", "flap", "magnitude")
TEXT = (
    "The quick brown fox jumps over the lazy dog. A pruned model keeps what matters and drops "
    "the rest. Perplexity measures how surprised a language model is by text"
)


def fresh(seed: int = 0, **overrides):
    model = tiny_model("qwen3", seed=seed, **overrides)
    return from_model(model, tiny_tokenizer(), spec="tiny-qwen3")


def logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def query_key_norms(model) -> list[torch.Tensor]:
    return [
        torch.cat([layer.self_attn.q_norm.weight, layer.self_attn.k_norm.weight]).clone()
        for layer in model.model.layers
    ]


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    """A small calibration text: tokenizing a whole corpus would dominate these tests."""
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(" ".join(tiny_tokenizer().decode(list(range(3, TINY_VOCAB))) for _ in range(3)))
    return str(path)


def test_record_counts_and_block_by_block_forward():
    """The record's parameter counts equal the model's (tied and untied), with the explicit head
    size; the adapter's blocks reproduce the stock forward (q/k norms inside attention)."""
    for tied in (False, True):
        model = AutoModelForCausalLM.from_config(tiny_config("qwen3", tie_word_embeddings=tied))
        shapes = model_shapes(model.config)
        assert shapes.total_params == sum(p.numel() for p in model.parameters())
        layer = model.model.layers[0]
        assert shapes.layer_params == sum(p.numel() for p in layer.parameters())
        assert shapes.head_dim == TINY_HEAD_DIM != shapes.hidden_size // shapes.num_heads
    loaded = fresh()
    assert loaded.adapter.family == "qwen3"
    block_by_block(loaded)


def test_query_key_norms_change_the_logits():
    """Every comparison below would catch a lost or misapplied q/k norm."""
    model = fresh().model
    want = logits(model)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for layer in other.model.layers:
            layer.self_attn.q_norm.weight.fill_(1.0)
            layer.self_attn.k_norm.weight.fill_(1.0)
    assert (logits(other) - want).abs().max() > 10 * LLAMA_F32_TOLERANCE


@pytest.mark.parametrize("method", DEPTH + WIDTH)
def test_every_method_exports_and_reloads(method, calib, tmp_path):
    loaded = fresh()
    norms = query_key_norms(loaded.model)
    before = sum(p.numel() for p in loaded.model.parameters())
    values = dict(blocks=2, sparsity=0.4, n_samples=2, seqlen=32, calib=calib, seed=0)
    settings = settings_for(method, **values)
    plan = run_method(get_method(method), loaded, settings)  # the decision carried out
    assert sum(p.numel() for p in loaded.model.parameters()) < before
    if method in WIDTH:  # value channels and whole heads: the per-head norms stay as they were
        for was, now in zip(norms, query_key_norms(loaded.model), strict=True):
            assert torch.equal(was, now)
    expected = logits(loaded.model)
    result = export_model(loaded, tmp_path / "model", plan=plan)
    reloaded = load_pruned(tmp_path / "model", device="cpu")
    assert reloaded.adapter.family == "qwen3"
    torch.testing.assert_close(logits(reloaded.model), expected, atol=1e-5, rtol=1e-4)
    if result.format == "hf":
        config = json.loads((tmp_path / "model" / "config.json").read_text())
        assert config["model_type"] == "qwen3" and "auto_map" not in config


def test_uniform_export_loads_in_plain_transformers(calib, tmp_path):
    loaded = fresh(seed=1)
    for layer in loaded.adapter.layers(loaded.model):
        slice_mlp(loaded.adapter.mlp_channels(layer), range(48))
    remove_blocks(loaded, [BlockRef(1, "attn"), BlockRef(1, "mlp")])
    result = export_model(loaded, tmp_path / "m")
    assert result.format == "hf"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    assert type(plain).__name__ == "Qwen3ForCausalLM"
    torch.testing.assert_close(logits(plain), logits(loaded.model), atol=1e-5, rtol=1e-4)


def test_heterogeneous_export_builds_the_query_key_norms(tmp_path):
    """Single blocks removed, per-layer MLP and value widths, a FLAP-style o_proj bias: the
    prunekit format, whose shim builds q/k norms from ``qk_norm``; prunekit and plain
    transformers (trust_remote_code) reload it with equal logits and cached generation."""
    loaded = fresh(seed=2)
    remove_blocks(loaded, [BlockRef(0, "attn"), BlockRef(2, "mlp")])
    narrow_mlp(loaded, 1, 40)
    narrow_value_heads(loaded, 3, 16)
    channels = loaded.adapter.attention_channels(
        loaded.adapter.layers(loaded.model)[3], loaded.model.config
    )
    o_proj = channels.o_proj
    set_consumer(o_proj, o_proj.weight.data, torch.full((o_proj.out_features,), 0.05))
    expected = logits(loaded.model)
    out = tmp_path / "m"
    assert export_model(loaded, out).format == "prunekit"
    config = json.loads((out / "config.json").read_text())
    assert (config["qk_norm"], config["base_model_type"]) == (True, "qwen3")
    assert config["head_dim"] == TINY_HEAD_DIM
    reloaded = load_pruned(out, device="cpu")
    torch.testing.assert_close(logits(reloaded.model), expected, atol=1e-5, rtol=1e-4)
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    torch.testing.assert_close(logits(remote), expected, atol=1e-5, rtol=1e-4)
    prompt = IDS[:1, :6]
    cached = remote.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    seq = prompt
    for _ in range(6):
        seq = torch.cat([seq, logits(remote, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq)


# ---- GGUF: llama.cpp's qwen3 --------------------------------------------------------------
def prompt_ids() -> list[int]:
    return tiny_tokenizer()(TEXT)["input_ids"]


def check_runs_the_same(m, tmp_path) -> tuple[dict, dict]:
    """Export f32, run in llama.cpp; the report's export section and the file's keys."""
    path = tmp_path / "model.gguf"
    result = export_gguf(m, path, gguf_type="f32")
    assert result.arch == "qwen3"
    assert_runs_the_same(m.model, path, prompt_ids(), LLAMA_F32_TOLERANCE)
    return export_report(result), gguf_metadata(path)


def test_gguf_dense_with_tied_head(tmp_path):
    report, metadata = check_runs_the_same(fresh(seed=3, tie_word_embeddings=True), tmp_path)
    assert metadata["qwen3.attention.key_length"] == TINY_HEAD_DIM
    assert report["padding"] == [] and report["adjustments"] == []


def test_gguf_whole_layer_removed_and_uniform_widths(tmp_path):
    """Layer 1 removed; every MLP 64 wide, one KV group of two removed and every value head 16
    of 24 (zero-padded in the file) in every layer."""
    m = fresh(seed=4)
    remove_blocks(m, [BlockRef(1, "attn"), BlockRef(1, "mlp")])
    adapter, model = m.adapter, m.model
    for layer in adapter.layers(model):
        slice_mlp(adapter.mlp_channels(layer), range(64))
        slice_heads(adapter.attention_channels(layer, model.config), [1], adapter)
        channels = adapter.attention_channels(layer, model.config)
        slice_value_channels(channels, [list(range(16))] * channels.num_kv_heads, adapter)
    report, _ = check_runs_the_same(m, tmp_path)
    assert {(g["n_head"], g["n_head_kv"], g["n_ff"]) for g in report["layers"]} == {(2, 1, 64)}
    assert [p["kind"] for p in report["padding"]] == ["value_heads"] * 3


@pytest.mark.parametrize(
    ("prune", "error", "message"),
    [
        ("attn", ExportError, r"cannot skip single blocks \(layer 2 lost its attention\)"),
        ("widths", ExportError, r"per-layer MLP widths \[40, 96, 96, 96\]"),
        ("bias", UnsupportedArchitectureError, r"no biases \(layer 0 has\)"),
        ("sliding", UnsupportedArchitectureError, r"no sliding-window attention \(layer 2\)"),
    ],
)
def test_gguf_refusals_are_one_line(prune, error, message, tmp_path):
    sliding = ["full_attention"] * 2 + ["sliding_attention"] * 2  # max_window_layers 2
    m = fresh(sliding_window=8, layer_types=sliding) if prune == "sliding" else fresh()
    layer = m.adapter.layers(m.model)[0]
    if prune == "attn":
        remove_blocks(m, [BlockRef(2, "attn")])
    if prune == "widths":
        slice_mlp(m.adapter.mlp_channels(layer), range(40))
    if prune == "bias":
        down = m.adapter.mlp_channels(layer).consumer
        set_consumer(down, down.weight.data, torch.zeros(down.out_features))
    with pytest.raises(error, match=message) as caught:
        export_gguf(m, tmp_path / "g.gguf")
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # refused before anything is written
