"""GGUF export of tiny Gemma 3 models (llama.cpp's ``gemma3``), run in a real llama.cpp.

The tiny Gemma 3 alternates sliding-window (window 8) and global layers and the prompt is three
windows long, so the per-layer pattern, the local/global RoPE bases and the window itself all
change the logits (checked below); its ``query_pre_attn_scalar`` (256) is not the head size (16),
so the query scale folded into ``attn_q_norm`` is exercised too. Each plan is built by surgery,
exported f32 and compared with the in-memory pruned model: logits on the prompt, and greedy
tokens through llama.cpp's KV cache.

Tolerance: 1e-2 absolute on logits of magnitude ~3, looser than the Llama tests' 2e-3: llama.cpp's
CPU GELU reads a table indexed by the f16-rounded input, on top of the f16 K/Q rounding those
tests see. A missing norm shift, a wrong query scale, RoPE base or window moves the logits by
more than ten times that (``test_the_prompt_exercises_what_is_written``).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from prunekit.errors import ExportError, UnsupportedArchitectureError
from prunekit.export.gguf import export_gguf
from prunekit.export.gguf.gemma3 import llama_cpp_query_scale
from prunekit.export.load import load_pruned
from prunekit.export.save import export_model
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import from_model
from prunekit.models.tiny import TINY_SLIDING_WINDOW, tiny_model, tiny_tokenizer
from prunekit.surgery.depth import remove_blocks
from prunekit.surgery.width import slice_heads, slice_mlp, slice_value_channels
from tests.unit.gguf_helpers import assert_runs_the_same, export_report, gguf_metadata, torch_logits

TOLERANCE = 1e-2
TEXT = (
    "The quick brown fox jumps over the lazy dog. A pruned model keeps what matters and drops "
    "the rest. Perplexity measures how surprised a language model is by text"
)


def loaded(seed: int = 0, **overrides):
    model = tiny_model("gemma3", seed=seed, **overrides)
    return from_model(model, tiny_tokenizer(), spec="tiny-gemma3")


def prompt_ids() -> list[int]:
    """BOS first, as prunekit feeds Gemma every window; longer than three windows."""
    tokenizer = tiny_tokenizer()
    ids = [tokenizer.bos_token_id] + tokenizer(TEXT)["input_ids"]
    assert len(ids) > 3 * TINY_SLIDING_WINDOW
    return ids


def rope(local_base: float = 10_000.0, **global_rope) -> dict:
    """Gemma 3's RoPE parameters: ``global_rope`` on full-attention layers, ``local_base`` (and
    no scaling) on sliding ones."""
    full = {"rope_type": "default", "rope_theta": 1_000_000.0, **global_rope}
    return {
        "full_attention": full,
        "sliding_attention": {"rope_type": "default", "rope_theta": local_base},
    }


def check_runs_the_same(m, tmp_path) -> tuple[dict, dict]:
    """Export f32, run in llama.cpp; returns the report's export section and the file's keys."""
    path = tmp_path / "model.gguf"
    result = export_gguf(m, path, gguf_type="f32")
    assert result.arch == "gemma3"
    assert_runs_the_same(m.model, path, prompt_ids(), TOLERANCE)
    return export_report(result), gguf_metadata(path)


def pattern(metadata: dict) -> list[bool] | None:
    return metadata.get("gemma3.attention.sliding_window_pattern")


def test_dense(tmp_path):
    report, metadata = check_runs_the_same(loaded(), tmp_path)
    assert pattern(metadata) == [True, False, True, False]
    assert metadata["gemma3.attention.sliding_window"] == TINY_SLIDING_WINDOW
    assert metadata["tokenizer.ggml.add_bos_token"] is True  # Gemma needs BOS
    assert report["padding"] == []
    assert [a["kind"] for a in report["adjustments"]] == ["query_scale"]


def test_tied_head_softcap_and_linear_rope(tmp_path):
    """Gemma 3's tied head; a final soft-cap that bites (logits ~3, cap 2); linear RoPE scaling on
    the global layers only (Gemma 3 4B and up), the sliding layers unscaled."""
    linear = rope(rope_type="linear", factor=8.0)
    m = loaded(tie_word_embeddings=True, final_logit_softcapping=2.0, rope_parameters=linear)
    _, metadata = check_runs_the_same(m, tmp_path)
    assert metadata["gemma3.final_logit_softcapping"] == 2.0
    assert metadata["gemma3.rope.scaling.factor"] == 8.0


def test_whole_layers_removed_keep_their_kinds(tmp_path):
    """Layer 1 (global) removed: sliding, sliding, global — not the every-6th pattern llama.cpp
    assumes without the per-layer array."""
    m = loaded()
    remove_blocks(m, [BlockRef(1, "attn"), BlockRef(1, "mlp")])
    report, metadata = check_runs_the_same(m, tmp_path)
    assert pattern(metadata) == [True, True, False]
    assert [g["sliding"] for g in report["layers"]] == [True, True, False]
    every_6th = copy.deepcopy(m.model)  # what llama.cpp would run without the array
    every_6th.config.layer_types = ["sliding_attention"] * 3
    ids = prompt_ids()
    moved = np.abs(torch_logits(every_6th, ids) - torch_logits(m.model, ids)).max()
    assert moved > 10 * TOLERANCE


def test_reloaded_run_exports_the_same(tmp_path):
    """The path of ``prunekit export run --format gguf``: saved, reloaded by ``load_pruned``
    (layer kinds from the saved ``layer_types``), exported; compared with the in-memory model."""
    m = loaded(seed=4)
    remove_blocks(m, [BlockRef(2, "attn"), BlockRef(2, "mlp")])
    export_model(m, tmp_path / "model")
    reloaded = load_pruned(tmp_path / "model", device="cpu")
    path = tmp_path / "reloaded.gguf"
    export_gguf(reloaded, path, gguf_type="f32")
    assert_runs_the_same(m.model, path, prompt_ids(), TOLERANCE)
    assert pattern(gguf_metadata(path)) == [True, False, False]


def test_local_rope_base_is_read(tmp_path):
    """llama.cpp reads ``gemma3.rope.freq_base_swa`` for the sliding layers (its default is
    10000, every Gemma 3's local base): a model with local base 1000 runs the same. 1000, not a
    base nearer 10000 or the global one: over an 8-token window it moves the logits well past
    the tolerance (checked here)."""
    m = loaded(seed=5, rope_parameters=rope(local_base=1000.0))
    _, metadata = check_runs_the_same(m, tmp_path)
    assert metadata["gemma3.rope.freq_base_swa"] == 1000.0
    ids = prompt_ids()
    default = loaded(seed=5, rope_parameters=rope()).model  # the same weights, base 10000
    moved = np.abs(torch_logits(default, ids) - torch_logits(m.model, ids)).max()
    assert moved > 10 * TOLERANCE


def test_no_global_layer_left(tmp_path):
    m = loaded(seed=1)
    remove_blocks(m, [BlockRef(i, k) for i in (1, 3) for k in ("attn", "mlp")])
    _, metadata = check_runs_the_same(m, tmp_path)
    assert pattern(metadata) == [True, True]


def test_no_sliding_layer_left_writes_no_window(tmp_path):
    m = loaded(seed=2)
    remove_blocks(m, [BlockRef(i, k) for i in (0, 2) for k in ("attn", "mlp")])
    _, metadata = check_runs_the_same(m, tmp_path)
    assert pattern(metadata) is None and "gemma3.attention.sliding_window" not in metadata


def test_uniform_widths_and_heads(tmp_path):
    """FASP-style uniform widths: every MLP 64 wide, every value head 12 of 16 (zero-padded in
    the file), and one KV group of two removed in every layer (FLAP-style, but uniform)."""
    m = loaded(seed=3)
    adapter, model = m.adapter, m.model
    for layer in adapter.layers(model):
        slice_mlp(adapter.mlp_channels(layer), range(64))
        slice_heads(adapter.attention_channels(layer, model.config), [1], adapter)
        channels = adapter.attention_channels(layer, model.config)
        slice_value_channels(channels, [list(range(12))] * channels.num_kv_heads, adapter)
    report, _ = check_runs_the_same(m, tmp_path)
    assert {(g["n_head"], g["n_head_kv"], g["n_ff"]) for g in report["layers"]} == {(2, 1, 64)}
    assert [p["kind"] for p in report["padding"]] == ["value_heads"] * 4


def test_the_prompt_exercises_what_is_written():
    """Without the window, with all layers on one RoPE base, with llama.cpp's own query scale or
    norms by w instead of 1 + w, the reference logits move far beyond the tolerance: the
    comparisons above check each."""
    m = loaded()
    ids = prompt_ids()
    want = torch_logits(m.model, ids)

    def moved(change) -> float:
        other = copy.deepcopy(m.model)
        change(other)
        return float(np.abs(torch_logits(other, ids) - want).max())

    def no_window(model):
        model.config.sliding_window = 10_000

    def one_base(model):
        rope = model.model.rotary_emb
        rope.sliding_attention_inv_freq.copy_(rope.full_attention_inv_freq)

    def head_scale(model):
        for layer in model.model.layers:
            layer.self_attn.scaling = 16**-0.5

    def no_shift(model):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param -= 1.0

    for change in (no_window, one_base, head_scale, no_shift):
        assert moved(change) > 10 * TOLERANCE, change.__name__


def test_llama_cpp_query_scale_rule():
    """llama.cpp takes a 62-layer gemma3 for Gemma 3 27B (queries by 1/sqrt(hidden / heads));
    a pruned 27B has fewer layers, so the model's own scale is folded into attn_q_norm."""
    assert llama_cpp_query_scale(62, 5376, 32, 128) == 1 / math.sqrt(168)
    assert llama_cpp_query_scale(40, 5376, 32, 128) == 1 / math.sqrt(128)


@pytest.mark.parametrize(
    ("prune", "error", "message"),
    [
        ("attn", ExportError, r"cannot skip single blocks \(layer 2 lost its attention\)"),
        ("mlp", ExportError, r"cannot skip single blocks \(layer 2 lost its MLP\)"),
        ("widths", ExportError, r"per-layer MLP widths \[40, 96, 96, 96\]"),
        ("softcap", UnsupportedArchitectureError, "no attention logit soft-capping"),
    ],
)
def test_refusals_are_one_line(prune, error, message, tmp_path):
    m = loaded(attn_logit_softcapping=50.0) if prune == "softcap" else loaded()
    if prune in ("attn", "mlp"):
        remove_blocks(m, [BlockRef(2, prune)])
    if prune == "widths":
        slice_mlp(m.adapter.mlp_channels(m.adapter.layers(m.model)[0]), range(40))
    with pytest.raises(error, match=message) as caught:
        export_gguf(m, tmp_path / "g.gguf")
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # refused before anything is written
