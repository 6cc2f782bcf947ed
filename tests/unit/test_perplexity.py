"""Perplexity equals exp(mean token NLL), computed in fp32 even for bf16 models."""

from __future__ import annotations

import math

import torch

from prunekit.evaluation.perplexity import windows_nll
from prunekit.models.loading import from_model
from prunekit.models.tiny import TINY_VOCAB, tiny_model, tiny_tokenizer


def test_ppl_matches_transformers_loss(tiny):
    windows = torch.randint(0, TINY_VOCAB, (3, 32), generator=torch.Generator().manual_seed(0))
    nll, count = windows_nll(tiny, windows, batch_size=2)
    skip = 1 if tiny.adapter.bos_per_window else 0
    assert count == 3 * (31 - skip)
    if not skip:
        with torch.inference_mode():
            loss = tiny.model(windows, labels=windows).loss.item()
        assert math.isclose(nll / count, loss, rel_tol=1e-5)


def test_batching_does_not_change_the_result(tiny_llama):
    windows = torch.randint(0, TINY_VOCAB, (4, 16), generator=torch.Generator().manual_seed(5))
    one, _ = windows_nll(tiny_llama, windows, batch_size=1)
    four, _ = windows_nll(tiny_llama, windows, batch_size=4)
    assert math.isclose(one, four, rel_tol=1e-5)


def test_bf16_model_gets_fp32_nll():
    model = tiny_model("llama").to(torch.bfloat16)
    loaded = from_model(model, tiny_tokenizer())
    windows = torch.randint(0, TINY_VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    nll, _ = windows_nll(loaded, windows)
    with torch.inference_mode():
        logits = model(windows).logits.float()
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, TINY_VOCAB), windows[:, 1:].reshape(-1), reduction="sum"
    )
    assert math.isclose(nll, reference.item(), rel_tol=1e-4)
