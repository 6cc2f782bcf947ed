"""FASP's least-squares restoration of a consumer matrix after some input columns are removed.

W' = (W·H[:, S] + λ·W[:, S]) · (H[S, S] + λI)⁻¹ solves min ‖W X − W' X_S‖² + λ‖W' − W[:, S]‖²:
damped toward the *original* kept weights, not toward 0 (docs/algorithms.md, "FASP (width)"; the
textbook ridge shrinks the weights and overfits small calibration sets). Solved by Cholesky;
NaN/Inf or a matrix that is not positive definite fail loudly.

Solve precision: the damping bounds the condition number, κ(H[S, S] + λI) ≤ ‖H[S, S] + λI‖_F / λ
(H is positive semi-definite, so λ is the smallest eigenvalue at worst). Where that bound is at
most ``FP32_SOLVE_MAX_CONDITION`` the system is solved in fp32: its error, about κ·2⁻²⁴, is the
order of the one the right-hand side already carries from the fp32 product W·H[:, S] and H from
its fp32 sum (measured on SmolLM2 at the default damping: κ 100–3,700, fp32 and fp64 solutions
1e-6–2e-4 apart, the solve ~1.8× faster). Otherwise (small damping, degenerate inputs) the
right-hand side and the solve run in fp64, as they do when the fp32 factorization fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from prunekit.errors import NumericalError

# κ·2⁻²⁴ ≤ 6e-4: an fp32 solution within a small fraction of a bf16 weight's half-ulp (2e-3).
FP32_SOLVE_MAX_CONDITION = 1e4

SolvePrecision = Literal["auto", "fp64"]


@dataclass
class Restoration:
    weight: torch.Tensor  # out × |S|, in the dtype the system was solved in
    damping: float  # λ actually used
    error_sliced: float  # ‖W X − W[:, S] X_S‖² / ‖W X‖²
    error_restored: float  # ‖W X − W' X_S‖² / ‖W X‖²
    condition_bound: float  # upper bound on κ(H[S, S] + λI); inf without damping
    solve_dtype: torch.dtype  # float32 where the bound allowed it, float64 otherwise


def restore_consumer(
    weight: torch.Tensor,
    gram: torch.Tensor,
    kept: list[int],
    damping: float,
    name: str,
    precision: SolvePrecision = "auto",
) -> Restoration:
    """Least-squares weights for the kept columns ``kept`` of ``weight`` given H = XᵀX.

    The products with H run in fp32 (H itself is an fp32 sum); the |S|×|S| system is solved in
    fp32 where its condition bound allows (module docstring), in fp64 otherwise or with
    ``precision="fp64"``. The two error traces reuse W·H, so the diagnostics cost one product more.
    """
    if not torch.isfinite(gram.diagonal()).all():  # |H_ij| <= sqrt(H_ii H_jj)
        raise NumericalError(f"{name}: the input statistics contain NaN or Inf")
    w = weight.detach().float()
    h = gram.float()
    index = torch.as_tensor(kept, dtype=torch.long, device=h.device)
    w_h = w @ h  # out × in
    h_ss = h.index_select(0, index).index_select(1, index)  # H[S, S] (fp32)
    lam = damping * h_ss.diagonal().mean(dtype=torch.float64).item()
    bound = condition_bound(h_ss, lam)
    use_fp32 = precision == "auto" and bound <= FP32_SOLVE_MAX_CONDITION
    w_s = w.index_select(1, index)
    rhs = w_h.index_select(1, index) + lam * w_s
    restored = _solve(h_ss, lam, rhs, torch.float32) if use_fp32 else None
    if restored is None:  # an ill-conditioned bound, or the fp32 factorization failed
        # κ·2⁻²⁴ is too large for fp32 anywhere on the way: the fp32 product W·H[:, S] alone
        # would perturb the solution by as much as an fp32 solve, so both run in fp64.
        rhs = w.double() @ h.index_select(1, index).double() + lam * w_s.double()
        restored = _solve(h_ss, lam, rhs, torch.float64)
    if restored is None:
        raise NumericalError(
            f"{name}: H[S, S] + λI is not positive definite (λ = {lam:.3g}); the kept inputs are "
            "degenerate on the calibration data: raise --damping or use more calibration text"
        )
    if not torch.isfinite(restored).all():
        raise NumericalError(f"{name}: restoration produced NaN or Inf; raise --damping")
    output_sq = _trace(w_h, w)  # ‖W X‖² = tr(W H Wᵀ): the errors' denominator
    return Restoration(
        weight=restored,
        damping=lam,
        error_sliced=_sliced_error(w, h, index) / max(output_sq, 1e-30),
        error_restored=_restored_error(output_sq, w_h, rhs, lam, restored, index)
        / max(output_sq, 1e-30),
        condition_bound=bound,
        solve_dtype=restored.dtype,
    )


def condition_bound(h_ss: torch.Tensor, lam: float) -> float:
    """κ₂(H[S, S] + λI) ≤ ‖H[S, S] + λI‖_F / λ: the Frobenius norm bounds the largest
    eigenvalue and, H being positive semi-definite, λ the smallest. Costs |S|², not |S|³."""
    if lam <= 0:
        return float("inf")
    # ‖H_SS + λI‖² = ‖H_SS‖² + 2λ tr H_SS + |S|λ², without forming H_SS + λI
    square = float(torch.linalg.vector_norm(h_ss, dtype=torch.float64)) ** 2
    trace = float(h_ss.diagonal().sum(dtype=torch.float64))
    return (square + 2 * lam * trace + h_ss.shape[0] * lam**2) ** 0.5 / lam


def _solve(
    h_ss: torch.Tensor, lam: float, rhs: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | None:
    """W' with W' (H[S, S] + λI) = rhs by Cholesky in ``dtype`` (λ added in ``dtype``: below
    fp32's resolution of H's diagonal only where the bound sends the solve to fp64 anyway);
    None when the system is not positive definite."""
    system = h_ss.to(dtype=dtype, copy=True)
    system.diagonal().add_(lam)
    factor, info = torch.linalg.cholesky_ex(system)
    if info.item() != 0:
        return None
    return torch.cholesky_solve(rhs.to(dtype).T, factor).T


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
    solved, rhs = restored.double(), rhs.double()
    own = float(((rhs - lam * solved) * solved).sum())
    return max(output_sq - 2 * cross + own, 0.0)
