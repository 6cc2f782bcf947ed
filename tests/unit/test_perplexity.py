"""Perplexity equals exp(mean token NLL), computed in fp32 even for bf16 models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prunekit.evaluation.nll import Fp32LmHead, eval_logits_fn
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


def bf16_windows() -> torch.Tensor:
    return torch.randint(0, TINY_VOCAB, (2, 48), generator=torch.Generator().manual_seed(0))


def upcast_head_nll(
    model: torch.nn.Module, windows: torch.Tensor, cap: float | None, skip: int = 0
) -> float:
    """Reference: the bf16 decoder's final states times the bf16 head weights, upcast to fp32."""
    with torch.inference_mode():
        hidden = model.model(windows).last_hidden_state.float()
        head = model.lm_head
        bias = None if head.bias is None else head.bias.float()
        logits = F.linear(hidden, head.weight.float(), bias).double()
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(
        logits[:, skip:-1].reshape(-1, TINY_VOCAB),
        windows[:, skip + 1 :].reshape(-1),
        reduction="sum",
    ).item()


def bf16_logits_nll(model: torch.nn.Module, windows: torch.Tensor) -> float:
    """The old way: the model's own bf16 logits, log-softmax in fp32."""
    with torch.inference_mode():
        logits = model(windows).logits.float()
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, TINY_VOCAB), windows[:, 1:].reshape(-1), reduction="sum"
    ).item()


def scaled_up_head(model: torch.nn.Module, bias: bool = False) -> torch.nn.Module:
    """Logits of a few units (like a trained model's) so that bf16 rounding of them shows."""
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=bias)
    with torch.no_grad():
        head.weight.copy_(old.weight * 40)
        if bias:
            head.bias.uniform_(-3, 3)
    model.lm_head = head
    return model


@pytest.mark.parametrize("bias", [False, True])
def test_bf16_model_gets_an_fp32_head(bias):
    """ppl of a bf16 model uses its bf16 weights in an fp32 matmul, not bf16-rounded logits."""
    model = scaled_up_head(tiny_model("llama"), bias=bias).to(torch.bfloat16)
    loaded = from_model(model, tiny_tokenizer())
    windows = bf16_windows()
    nll, _ = windows_nll(loaded, windows)
    reference = upcast_head_nll(model, windows, cap=None)
    assert math.isclose(nll, reference, rel_tol=2e-6)
    # The bf16-logits path is measurably different: the test sees which head ran.
    assert abs(nll - bf16_logits_nll(model, windows)) > 100 * abs(nll - reference)


def test_fp32_head_keeps_the_logit_softcapping():
    """Gemma 3 caps its logits (final_logit_softcapping); the fp32 head caps them too."""
    model = scaled_up_head(tiny_model("gemma3", final_logit_softcapping=5.0)).to(torch.bfloat16)
    loaded = from_model(model, tiny_tokenizer())
    windows = bf16_windows()
    nll, _ = windows_nll(loaded, windows)
    # Gemma 3 puts a BOS in every window and predicts nothing from it (skip=1).
    assert math.isclose(nll, upcast_head_nll(model, windows, cap=5.0, skip=1), rel_tol=2e-6)
    uncapped = upcast_head_nll(model, windows, cap=None, skip=1)
    assert abs(nll - uncapped) > 0.01 * nll


def test_adapter_with_its_own_head_keeps_the_model_logits():
    """An adapter that overrides head_logits (a head prunekit cannot rebuild) is used as is."""
    model = tiny_model("llama")
    loaded = from_model(model, tiny_tokenizer())

    class DoubledHead(type(loaded.adapter)):
        def head_logits(self, model, final_hidden):
            return 2 * model.lm_head(final_hidden)

    adapter = DoubledHead()
    logits_fn, kind = eval_logits_fn(model, adapter)
    assert kind == "model"
    assert Fp32LmHead.for_model(model, adapter) is None
    hidden = torch.randn(1, 4, model.config.hidden_size)
    torch.testing.assert_close(logits_fn(hidden), 2 * model.lm_head(hidden))
    assert eval_logits_fn(model, loaded.adapter)[1] == "fp32"


def test_fp32_head_runs_in_ieee_fp32_whatever_the_users_matmul_precision(monkeypatch):
    """TF32 (GPUs) or oneDNN's bf16 math mode (AMX CPUs) would round the "fp32" head: perplexity
    forces full precision for the head and gives the user's setting back."""
    import prunekit.evaluation.nll as nll

    seen = []
    real_linear = F.linear

    def recording_linear(*args, **kwargs):
        seen.append(torch.get_float32_matmul_precision())
        return real_linear(*args, **kwargs)

    loaded = from_model(tiny_model("llama"), tiny_tokenizer())
    head, kind = eval_logits_fn(loaded.model, loaded.adapter)
    assert kind == "fp32"
    monkeypatch.setattr(nll.F, "linear", recording_linear)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        head(torch.randn(1, 4, loaded.model.config.hidden_size))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen == ["highest"]
