"""FASP's least-squares restoration of a consumer matrix after some input columns are removed.

W' = (W·H[:, S] + λ·W[:, S]) · (H[S, S] + λI)⁻¹ solves min ‖W X − W' X_S‖² + λ‖W' − W[:, S]‖²:
damped toward the *original* kept weights, not toward 0 (ALGORITHMS.md measures why: the
textbook ridge shrinks the weights and overfits small calibration sets). Solved by Cholesky
in fp64; NaN/Inf or a matrix that is not positive definite fail loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.errors import NumericalError


@dataclass
class Restoration:
    weight: torch.Tensor  # out × |S|, fp64
    damping: float  # λ actually used
    error_sliced: float  # ‖W X − W[:, S] X_S‖² / ‖W X‖²
    error_restored: float  # ‖W X − W' X_S‖² / ‖W X‖²


def restore_consumer(
    weight: torch.Tensor, gram: torch.Tensor, kept: list[int], damping: float, name: str
) -> Restoration:
    """Least-squares weights for the kept columns ``kept`` of ``weight`` given H = XᵀX.

    The products with H run in fp32 (H itself is an fp32 sum); only the |S|×|S| system is
    solved in fp64. The two error traces reuse W·H, so the diagnostics cost one product more.
    """
    if not torch.isfinite(gram.diagonal()).all():  # |H_ij| <= sqrt(H_ii H_jj)
        raise NumericalError(f"{name}: the input statistics contain NaN or Inf")
    w = weight.detach().float()
    h = gram.float()
    index = torch.as_tensor(kept, dtype=torch.long, device=h.device)
    w_h = w @ h  # out × in
    system = h.index_select(0, index).index_select(1, index).double()  # H[S, S], then + λI
    lam = damping * system.diagonal().mean().item()
    system.diagonal().add_(lam)
    w_s = w.index_select(1, index)
    rhs = (w_h.index_select(1, index) + lam * w_s).double()
    factor, info = torch.linalg.cholesky_ex(system)
    if info.item() != 0:
        raise NumericalError(
            f"{name}: H[S, S] + λI is not positive definite (λ = {lam:.3g}); the kept inputs are "
            "degenerate on the calibration data: raise --damping or use more calibration text"
        )
    restored = torch.cholesky_solve(rhs.T, factor).T
    if not torch.isfinite(restored).all():
        raise NumericalError(f"{name}: restoration produced NaN or Inf; raise --damping")
    output_sq = _trace(w_h, w)  # ‖W X‖² = tr(W H Wᵀ): the errors' denominator
    return Restoration(
        weight=restored,
        damping=lam,
        error_sliced=_sliced_error(w, h, index) / max(output_sq, 1e-30),
        error_restored=_restored_error(output_sq, w_h, rhs, lam, restored, index)
        / max(output_sq, 1e-30),
    )


def _trace(a: torch.Tensor, b: torch.Tensor) -> float:
    """tr(a bᵀ) = Σ a∘b, summed in fp64."""
    return float((a.float() * b.float()).sum(dtype=torch.float64))


def _sliced_error(w: torch.Tensor, h: torch.Tensor, kept: torch.Tensor) -> float:
    """‖W X − W[:, S] X_S‖² = tr(W_P H_PP W_Pᵀ), P the pruned columns."""
    pruned = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
    pruned[kept] = False
    w_p = w[:, pruned]
    h_pp = h[pruned][:, pruned]
    return _trace(w_p @ h_pp, w_p)


def _restored_error(
    output_sq: float,
    w_h: torch.Tensor,
    rhs: torch.Tensor,
    lam: float,
    restored: torch.Tensor,
    kept: torch.Tensor,
) -> float:
    """‖W X − W' X_S‖² = tr(WHWᵀ) − 2 tr(W' (WH)[:, S]ᵀ) + tr(W' H_SS W'ᵀ).

    W' solves W' (H_SS + λI) = rhs, so W' H_SS = rhs − λW': the last trace needs no product.
    """
    cross = _trace(restored, w_h.index_select(1, kept))
    own = float(((rhs - lam * restored) * restored).sum())
    return max(output_sq - 2 * cross + own, 0.0)
