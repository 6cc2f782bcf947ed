"""The width engine's running statistics: the triangular Gram update equals XᵀX."""

from __future__ import annotations

import pytest
import torch

from prunekit.engine.sequential import InputStatistics


@pytest.mark.parametrize("width", [7, 576, 1536])
def test_gram_from_upper_blocks_equals_full_product(width: int) -> None:
    generator = torch.Generator().manual_seed(width)
    batches = [torch.randn(1, 33, width, generator=generator) for _ in range(3)]
    stats = InputStatistics(width, gram=True)
    for batch in batches:
        stats.add_batch(batch)
    x = torch.cat(batches, dim=1).reshape(-1, width).double()
    expected = x.T @ x
    torch.testing.assert_close(stats.gram.double(), expected, rtol=1e-5, atol=1e-3)
    assert torch.equal(stats.gram, stats.gram.T)
    torch.testing.assert_close(stats.norm, expected.diagonal().sqrt(), rtol=1e-5, atol=1e-4)
    assert stats.count == 99


def test_without_gram_means_and_variances() -> None:
    x = torch.randn(2, 50, 9, generator=torch.Generator().manual_seed(0))
    stats = InputStatistics(9, gram=False)
    stats.add_batch(x)
    flat = x.reshape(-1, 9).double()
    torch.testing.assert_close(stats.mean, flat.mean(dim=0))
    torch.testing.assert_close(stats.variance, flat.var(dim=0))
    assert stats.gram is None
    with pytest.raises(ValueError, match="Gram"):
        _ = InputStatistics(9, gram=True).mean
