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
    """Least-squares weights for the kept columns ``kept`` of ``weight`` given H = XᵀX."""
    w = weight.detach().double()
    h = gram.double()
    if not torch.isfinite(h).all():
        raise NumericalError(f"{name}: the input statistics contain NaN or Inf")
    index = torch.as_tensor(kept, dtype=torch.long, device=h.device)
    h_ss = h.index_select(0, index).index_select(1, index)
    lam = damping * h_ss.diagonal().mean().item()
    system = h_ss + lam * torch.eye(len(kept), dtype=h.dtype, device=h.device)
    rhs = w @ h.index_select(1, index) + lam * w.index_select(1, index)
    factor, info = torch.linalg.cholesky_ex(system)
    if info.item() != 0:
        raise NumericalError(
            f"{name}: H[S, S] + λI is not positive definite (λ = {lam:.3g}); the kept inputs are "
            "degenerate on the calibration data: raise --damping or use more calibration text"
        )
    restored = torch.cholesky_solve(rhs.T, factor).T
    if not torch.isfinite(restored).all():
        raise NumericalError(f"{name}: restoration produced NaN or Inf; raise --damping")
    full = torch.zeros_like(w)
    full[:, index] = restored
    sliced = w.clone()
    sliced[:, index] = 0.0
    return Restoration(
        weight=restored,
        damping=lam,
        error_sliced=_relative_error(sliced, h, w),
        error_restored=_relative_error(w - full, h, w),
    )


def _relative_error(delta: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> float:
    """tr(Δ H Δᵀ) / tr(W H Wᵀ): the output error on the calibration inputs, relative."""
    reference = ((w @ h) * w).sum().item()
    return ((delta @ h) * delta).sum().item() / max(reference, 1e-30)
