"""FASP's fast arithmetic against its fp64 / IEEE-fp32 reference (issue 13, FASP's own cost).

Two shortcuts, each checked where it applies and where it must not:
- Gram products of bf16 inputs on the low-precision units with fp32 accumulation: every product
  of two bf16 values is exact in fp32, so H must be as close to the fp64 XᵀX as the IEEE fp32
  product is (a per-window product rounded to bf16, 1e-3 off, fails here).
- The restoration system solved in fp32 where the damping bounds its condition number: the
  solution within κ·2⁻²⁴ of the fp64 one; without damping the bound is huge and the fp64 solve
  must take over (the fp32 one is then measurably wrong).
End to end on tiny bf16 models: the same kept channels and restored weights within a bf16 ulp.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from prunekit.engine import sequential
from prunekit.engine.sequential import InputStatistics
from prunekit.methods.catalogue import get_method
from prunekit.methods.width import restoration, uniform
from prunekit.methods.width.restoration import (
    FP32_SOLVE_MAX_CONDITION,
    _solve,
    condition_bound,
    restore_consumer,
)
from prunekit.models.loading import from_model
from prunekit.models.precision import PrecisionSettings, exact_input_settings
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from tests.unit.depth_helpers import one_thread  # noqa: F401
from tests.unit.width_helpers import width_settings


def _bf16_batches(width: int, count: int = 4, tokens: int = 64) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(width)
    scale = torch.rand(width, generator=generator) * 4  # unevenly scaled columns, as in LLMs
    return [
        (torch.randn(1, tokens, width, generator=generator) * scale).bfloat16()
        for _ in range(count)
    ]


def _normalized_error(gram: torch.Tensor, reference: torch.Tensor) -> float:
    """max |H_ij − R_ij| / sqrt(R_ii R_jj): the error relative to each entry's natural scale."""
    scale = reference.diagonal().sqrt()
    return float(((gram.double() - reference).abs() / scale.outer(scale)).max())


@pytest.mark.parametrize("width", [24, 576])
def test_bf16_gram_is_as_exact_as_the_ieee_fp32_product(width):
    batches = _bf16_batches(width)
    x = torch.cat(batches, dim=1).reshape(-1, width).double()
    reference = x.T @ x  # the bf16 inputs' exact Gram matrix
    results = {}
    for fast in (True, False):
        stats = InputStatistics(width, gram=True, fast_products=fast)
        for batch in batches:
            stats.add_batch(batch)
        results[fast] = _normalized_error(stats.gram, reference)
    assert results[False] < 1e-6
    # fp32 accumulation of exact products: rounding-level error, like IEEE fp32 (bf16-rounded
    # products would be off by ~2e-3).
    assert results[True] < 1e-6


def test_gram_leaves_the_callers_matmul_settings_alone():
    before = PrecisionSettings.current()
    torch.set_float32_matmul_precision("high")
    try:
        expected = PrecisionSettings.current()
        stats = InputStatistics(24, gram=True)
        stats.add_batch(_bf16_batches(24)[0])
        assert PrecisionSettings.current() == expected
    finally:
        before.apply()


def test_fast_mode_only_for_inputs_it_keeps_exact():
    cpu = torch.device("cpu")
    # fp32 and fp16 values do not fit in bf16: their Gram products stay in IEEE fp32.
    for dtype in (torch.float32, torch.float16):
        assert set(exact_input_settings(dtype, cpu).nodes.values()) == {"ieee"}
    fast = exact_input_settings(torch.bfloat16, cpu).nodes
    assert fast["mkldnn.matmul"] in ("bf16", "ieee")  # bf16 only where oneDNN supports it
    assert fast["cuda.matmul"] == "ieee"


def _problem(tokens: int, width: int):
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(width, width, generator=generator, dtype=torch.float64) / width**0.5
    x = torch.randn(tokens, width, generator=generator, dtype=torch.float64) @ mixing
    w = torch.randn(16, width, generator=generator)
    kept = sorted(torch.randperm(width, generator=generator)[: width * 3 // 4].tolist())
    return x, w, kept


def _direct_solve(w, h, kept, lam):
    h_ss = h[kept][:, kept] + lam * torch.eye(len(kept), dtype=torch.float64)
    return torch.linalg.solve(h_ss, (w.double() @ h[:, kept] + lam * w.double()[:, kept]).T).T


def test_damped_system_is_solved_in_fp32_within_its_condition_bound():
    x, w, kept = _problem(tokens=300, width=64)
    gram = (x.T @ x).float()
    fast = restore_consumer(w, gram, kept, 0.1, name="test")
    exact = restore_consumer(w, gram, kept, 0.1, name="test", precision="fp64")
    assert fast.solve_dtype == torch.float32 and exact.solve_dtype == torch.float64
    assert fast.condition_bound <= FP32_SOLVE_MAX_CONDITION
    # The bound really bounds κ (measured here, not assumed).
    system = gram.double()[kept][:, kept] + fast.damping * torch.eye(len(kept), dtype=torch.float64)
    eigenvalues = torch.linalg.eigvalsh(system)
    assert float(eigenvalues[-1] / eigenvalues[0]) <= fast.condition_bound
    difference = (fast.weight.double() - exact.weight).norm() / exact.weight.norm()
    assert difference < fast.condition_bound * 2**-24
    assert fast.error_restored == pytest.approx(exact.error_restored, rel=1e-4, abs=1e-9)


def _integer_low_rank(tokens: int, width: int, rank: int):
    """Rank-``rank`` integer inputs: their Gram matrix is exact in fp32 (entries < 2^24), so H
    is exactly positive semi-definite and only the solve's precision is under test."""
    generator = torch.Generator().manual_seed(1)
    basis = torch.randint(-3, 4, (rank, width), generator=generator, dtype=torch.float64)
    x = torch.randint(-3, 4, (tokens, rank), generator=generator, dtype=torch.float64) @ basis
    w = torch.randn(16, width, generator=generator)
    kept = sorted(torch.randperm(width, generator=generator)[: width * 3 // 4].tolist())
    return x, w, kept


def test_ill_conditioned_system_falls_back_to_fp64():
    # Rank 12 inputs over 48 columns and a damping of 1e-9: κ ~ 1e9, beyond fp32's 2^24.
    x, w, kept = _integer_low_rank(tokens=400, width=48, rank=12)
    h = x.T @ x
    assert torch.equal(h.float().double(), h)
    damping = 1e-9
    result = restore_consumer(w, h.float(), kept, damping, name="test")
    assert result.condition_bound > FP32_SOLVE_MAX_CONDITION
    assert result.solve_dtype == torch.float64
    expected = _direct_solve(w, h.float().double(), kept, result.damping)
    torch.testing.assert_close(result.weight, expected, rtol=1e-5, atol=1e-5)

    # What the fallback avoids: the same system in fp32 is far off, or not even factorizable.
    rhs = w.double() @ h[:, kept] + result.damping * w.double()[:, kept]
    in_fp32 = _solve(h[kept][:, kept], result.damping, rhs, torch.float32)
    if in_fp32 is not None:
        assert (in_fp32.double() - expected).norm() / expected.norm() > 1e-2


def test_condition_bound_without_damping_is_infinite():
    assert condition_bound(torch.eye(3), 0.0) == float("inf")
    # The closed form of ‖H + λI‖_F / λ against the norm of the explicit matrix.
    h = torch.tensor([[4.0, 1.0], [1.0, 2.0]])
    explicit = torch.linalg.matrix_norm(h + 0.5 * torch.eye(2)) / 0.5
    assert condition_bound(h, 0.5) == pytest.approx(float(explicit), rel=1e-6)


def _tiny_in(dtype: torch.dtype):
    return from_model(tiny_model("llama").to(dtype), tiny_tokenizer(), spec="tiny-llama")


def _recording_restore(monkeypatch, precision: str) -> list[torch.dtype]:
    """Route FASP's restoration through ``precision`` and record each solve's dtype."""
    used: list[torch.dtype] = []
    real_restore = restoration.restore_consumer

    def restore(*args, **kwargs):
        result = real_restore(*args, **kwargs, precision=precision)
        used.append(result.solve_dtype)
        return result

    monkeypatch.setattr(uniform, "restore_consumer", restore)
    return used


# Per-tensor ‖fast − reference‖ / ‖reference‖ of the pruned weights. fp32: the solve's own error
# (measured ≤ 5e-6 here). bf16: a restored weight one rounding step away changes the next block's
# bf16 activations by rounding steps too, so later Gram matrices differ by ~4e-4 whatever the
# solve (with the fp64 solve and only the fast Gram the first MLP's weights already differ by
# 7e-5), and the drift grows with depth: measured up to 3.7e-3 in the last layers. A wrong solve
# or a dropped damping is off by O(1).
WEIGHT_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2**-6}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fasp_matches_the_fp64_reference(monkeypatch, one_thread, dtype):  # noqa: F811
    settings = width_settings(sparsity=0.3, n_samples=8, seqlen=64)
    base = _tiny_in(dtype)
    fast = from_model(copy.deepcopy(base.model), base.tokenizer, spec=base.spec)
    fast_solves = _recording_restore(monkeypatch, "auto")
    fast_plan = get_method("fasp").prune(fast, settings)

    monkeypatch.setattr(
        sequential, "InputStatistics", functools.partial(InputStatistics, fast_products=False)
    )
    reference_solves = _recording_restore(monkeypatch, "fp64")
    reference = from_model(copy.deepcopy(base.model), base.tokenizer, spec=base.spec)
    reference_plan = get_method("fasp").prune(reference, settings)

    assert fast_solves and set(fast_solves) == {torch.float32}  # the fast path really ran
    assert reference_solves and set(reference_solves) == {torch.float64}
    assert fast_plan.kept_channels == reference_plan.kept_channels
    fast_params = dict(fast.model.named_parameters())
    for name, expected in reference.model.named_parameters():
        got = fast_params[name].detach().float()
        assert got.shape == expected.shape, name
        difference = (got - expected.detach().float()).norm() / expected.detach().float().norm()
        assert difference < WEIGHT_TOLERANCE[dtype], (name, float(difference))
