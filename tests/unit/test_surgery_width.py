"""apply_width_plan replays a saved run on a fresh model, restored/compensated weights included."""

from __future__ import annotations

import pytest
import torch

from prunekit.api import prune
from prunekit.errors import PlanError
from prunekit.plan import PruningPlan
from prunekit.surgery import apply_plan
from tests.unit.width_helpers import logits, tiny_loaded

pytestmark = pytest.mark.usefixtures("data_dir")


@pytest.mark.parametrize(
    ("family", "method"),
    [("llama", "fasp"), ("opt", "fasp"), ("qwen2", "flap"), ("gemma3", "wanda-sp")],
)
def test_replayed_plan_reproduces_the_pruned_model(tmp_path, family, method):
    result = prune(
        tiny_loaded(family),
        method,
        out=tmp_path,
        sparsity=0.3,
        n_samples=4,
        seqlen=32,
        calib="wikitext2",
    )
    plan = PruningPlan.load(tmp_path / "plan.json")
    fresh = tiny_loaded(family)
    apply_plan(fresh, plan, run_dir=tmp_path)
    torch.testing.assert_close(logits(fresh.model), logits(result.model), rtol=1e-5, atol=1e-5)
    assert result.report["params"]["ratio_total"] > 0.05


def test_missing_restored_weights_is_a_plan_error(tmp_path):
    prune(
        tiny_loaded("llama"),
        "fasp",
        out=tmp_path,
        sparsity=0.3,
        n_samples=4,
        seqlen=32,
        calib="wikitext2",
    )
    plan = PruningPlan.load(tmp_path / "plan.json")
    with pytest.raises(PlanError, match="run directory"):
        apply_plan(tiny_loaded("llama"), plan)
    (tmp_path / "restored.safetensors").unlink()
    with pytest.raises(PlanError, match="missing"):
        apply_plan(tiny_loaded("llama"), plan, run_dir=tmp_path)
