"""Least-squares restoration against a direct fp64 computation on explicit activations."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import NumericalError
from prunekit.methods.width.restoration import restore_consumer


def _problem(seed: int = 0, tokens: int = 400, width: int = 48, out: int = 20):
    generator = torch.Generator().manual_seed(seed)
    # Correlated, unevenly scaled columns: the case where restoration matters.
    mixing = torch.randn(width, width, generator=generator) / width**0.5
    x = (torch.randn(tokens, width, generator=generator) @ mixing) * torch.rand(
        width, generator=generator
    )
    w = torch.randn(out, width, generator=generator)
    kept = sorted(torch.randperm(width, generator=generator)[: width * 3 // 4].tolist())
    return x.double(), w, kept


def _relative_error(w, x, w_kept, kept):
    target = x @ w.double().T
    return float((target - x[:, kept] @ w_kept.double().T).square().sum() / target.square().sum())


def test_weights_and_errors_match_a_direct_solve():
    x, w, kept = _problem()
    damping = 0.01
    result = restore_consumer(w, (x.T @ x).float(), kept, damping, name="test")

    h = x.T @ x
    h_ss = h[kept][:, kept]
    lam = damping * h_ss.diagonal().mean()
    expected = torch.linalg.solve(
        h_ss + lam * torch.eye(len(kept), dtype=torch.float64),
        (w.double() @ h[:, kept] + lam * w.double()[:, kept]).T,
    ).T
    assert result.solve_dtype == torch.float32  # damped well enough for the fast solve
    torch.testing.assert_close(result.weight.double(), expected, rtol=1e-4, atol=1e-5)
    assert result.damping == pytest.approx(float(lam), rel=1e-5)
    assert result.error_sliced == pytest.approx(_relative_error(w, x, w[:, kept], kept), rel=1e-4)
    assert result.error_restored == pytest.approx(
        _relative_error(w, x, result.weight, kept), rel=1e-3, abs=1e-7
    )
    assert result.error_restored < result.error_sliced


def test_non_finite_statistics_fail_loudly():
    x, w, kept = _problem()
    gram = (x.T @ x).float()
    gram[3, 3] = float("nan")
    with pytest.raises(NumericalError, match="NaN or Inf"):
        restore_consumer(w, gram, kept, 0.01, name="layer 0 mlp")
