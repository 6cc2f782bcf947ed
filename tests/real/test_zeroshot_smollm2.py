"""Zero-shot on the real SmolLM2-135M-Instruct through lm-eval, offline (ARC-Easy, 50 items)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.real


def test_arc_easy_accuracy_band(smollm2_fp32, data_dir):
    pytest.importorskip("lm_eval")
    from prunekit.evaluation.zeroshot import zeroshot

    result = zeroshot(smollm2_fp32, ["arc_easy"], limit=50, batch_size=16)
    arc = result.tasks["arc_easy"]
    assert arc.samples == 50 and result.source.startswith("local files")
    # Measured fp32, first 50 items: acc 0.46, acc_norm 0.40 (bf16 gives the same). 50 items
    # move in steps of 0.02; the band allows two items of kernel noise, and stays far above
    # chance (0.25 for four choices), so a broken prompt or scoring path fails it.
    assert 0.42 <= arc.acc <= 0.50
    assert 0.36 <= arc.acc_norm <= 0.44
    # Baselines of these 50 items, counted from the task file (no model): 4 choices each, the
    # most frequent gold letter is right 14 times.
    assert arc.chance == pytest.approx(0.25) and arc.majority == pytest.approx(0.28)
    assert arc.acc > arc.majority + 0.1
