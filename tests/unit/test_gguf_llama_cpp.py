"""GGUF export of tiny pruned models, run in a real llama.cpp: logits equal prunekit's.

Each structure the format cannot say directly is built by surgery on a tiny model and compared
in f32: whole layers removed (``llama``), attention removed in layer 0 and MLP removed under a
kept attention (``deci`` with zero blocks), per-layer MLP widths and narrowed value heads (``deci``
with padded value heads), and Qwen2's q/k/v biases. Tolerance: 2e-3 absolute on logits of
magnitude ~3 (llama.cpp's CPU kernels accumulate in a different order and round K/Q to f16
inside attention), far below the differences a wrong permutation or padding makes (~1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunekit.errors import ExportError, UnsupportedArchitectureError
from prunekit.export.gguf import export_gguf
from prunekit.export.gguf.tensors import rope_interleave
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import from_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.surgery.depth import remove_blocks
from tests.unit.gguf_helpers import (
    LLAMA_F32_TOLERANCE,
    assert_runs_the_same,
    export_report,
    llama_logits,
    llama_model,
    narrow_mlp,
    narrow_value_heads,
    torch_logits,
)

TEXT = "The quick brown fox jumps over the lazy dog. A pruned model keeps what matters"


def loaded(family: str, **overrides):
    return from_model(tiny_model(family, **overrides), tiny_tokenizer(), spec=f"tiny-{family}")


def prompt_ids() -> list[int]:
    return tiny_tokenizer()(TEXT)["input_ids"]


def check_runs_the_same(model_loaded, tmp_path, expect_arch: str) -> dict:
    path = tmp_path / "model.gguf"
    result = export_gguf(model_loaded, path, gguf_type="f32")
    assert result.arch == expect_arch
    assert_runs_the_same(model_loaded.model, path, prompt_ids(), LLAMA_F32_TOLERANCE)
    return export_report(result)


def test_dense_llama_untied_head(tmp_path):
    report = check_runs_the_same(loaded("llama"), tmp_path, "llama")
    assert report["padding"] == []


def test_dense_llama_tied_head(tmp_path):
    check_runs_the_same(loaded("llama", tie_word_embeddings=True), tmp_path, "llama")


def test_whole_layers_removed_is_llama(tmp_path):
    m = loaded("llama")
    remove_blocks(
        m, [BlockRef(1, "attn"), BlockRef(1, "mlp"), BlockRef(2, "attn"), BlockRef(2, "mlp")]
    )
    check_runs_the_same(m, tmp_path, "llama")


def test_blocks_removed_is_deci_with_zero_blocks(tmp_path):
    """Attention gone from layer 0 (kept as one zero head), an MLP gone under a kept attention
    (a zero MLP: deci would drop the attention output), an attention-free layer in the middle."""
    m = loaded("llama")
    remove_blocks(m, [BlockRef(0, "attn"), BlockRef(1, "mlp"), BlockRef(2, "attn")])
    report = check_runs_the_same(m, tmp_path, "deci")
    kinds = {(p["layer"], p["kind"]) for p in report["padding"]}
    assert kinds == {(0, "zero_attention"), (1, "zero_mlp")}
    assert [g["n_head"] for g in report["layers"]] == [1, 4, 0, 4]


def test_widths_and_value_heads_are_deci_with_padding(tmp_path):
    m = loaded("llama")
    narrow_mlp(m, 0, 40)
    narrow_mlp(m, 2, 72)
    narrow_value_heads(m, 1, 10)
    report = check_runs_the_same(m, tmp_path, "deci")
    assert [g["n_ff"] for g in report["layers"]] == [40, 96, 72, 96]
    assert [(p["layer"], p["kind"]) for p in report["padding"]] == [(1, "value_heads")]


def test_qwen2_biases(tmp_path):
    m = loaded("qwen2")
    narrow_value_heads(m, 0, 12)  # the v bias is padded with the rows
    remove_blocks(m, [BlockRef(3, "mlp")])
    check_runs_the_same(m, tmp_path, "deci")


def test_q8_0_within_quantization_error_and_fallback(tmp_path):
    m = loaded("llama")
    narrow_mlp(m, 0, 40)  # a row of 40 is not whole q8_0 blocks: stored f16
    path = tmp_path / "q8.gguf"
    result = export_gguf(m, path, gguf_type="q8_0")
    report = export_report(result)
    assert report["type_fallbacks"] == [{"tensor": "blk.0.ffn_down.weight", "stored": "f16"}]
    ids = prompt_ids()
    want = torch_logits(m.model, ids)
    with llama_model(path) as llm:
        error = np.abs(llama_logits(llm, ids) - want).max()
    assert LLAMA_F32_TOLERANCE < error < 0.1  # quantized, so not f32-exact, but close


def test_rope_interleave_is_pairwise():
    rows = torch.arange(8.0).reshape(8, 1)  # one head of size 8: halves [0..3], [4..7]
    assert rope_interleave(rows, 1).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_refusals_are_one_line(tmp_path):
    with pytest.raises(UnsupportedArchitectureError, match="sliding-window"):
        export_gguf(loaded("mistral"), tmp_path / "m.gguf")
    with pytest.raises(UnsupportedArchitectureError, match="not 'opt'"):
        export_gguf(loaded("opt"), tmp_path / "o.gguf")
    with pytest.raises(ExportError, match="must end in .gguf"):
        export_gguf(loaded("llama"), tmp_path / "model.bin")
    (tmp_path / "x.gguf").write_bytes(b"keep")
    with pytest.raises(ExportError, match="--overwrite"):
        export_gguf(loaded("llama"), tmp_path / "x.gguf")
    assert (tmp_path / "x.gguf").read_bytes() == b"keep"
    assert [p.name for p in tmp_path.iterdir()] == ["x.gguf"]  # no partial file left


def test_tokenizer_ids_match_hf(tmp_path):
    path = tmp_path / "t.gguf"
    export_gguf(loaded("llama"), path)
    probe = "Perplexity measures how surprised a language model is,  by text it has not seen."
    want = tiny_tokenizer()(probe, add_special_tokens=False)["input_ids"]
    with llama_model(path) as llm:
        assert llm.tokenize(probe.encode(), add_bos=False, special=False) == want
