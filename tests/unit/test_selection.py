"""Channel selection by (score, index): ties resolved the same way on every device (issue 12.6),
and FLAP's global selection vectorised (issue 12.5)."""

from __future__ import annotations

import time

import pytest
import torch

from prunekit.methods.width.flap import ModuleScores, complement, global_selection
from prunekit.methods.width.selection import ranking, top_indices, top_indices_per_row


def test_all_zero_scores_keep_the_lowest_indices():
    # Dead channels score exactly 0; torch.topk on CPU returns e.g. [4, 5, 6] of 8 zeros.
    for width in (8, 100, 5000):
        assert top_indices(torch.zeros(width), 3) == [0, 1, 2]


def test_repeated_values_break_ties_by_lower_index():
    scores = torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    assert top_indices(scores, 2) == [1, 2]
    assert top_indices(scores, 4) == [1, 2, 4, 5]
    assert ranking(scores).tolist() == [1, 2, 4, 5, 6, 7, 8, 0, 3]


def test_negative_zero_ties_with_zero_and_nan_ranks_last():
    assert top_indices(torch.tensor([-0.0, 0.0, -1.0]), 1) == [0]
    assert top_indices(torch.tensor([0.0, -0.0, -1.0]), 1) == [0]
    assert top_indices(torch.tensor([float("nan"), 0.0, 1.0]), 2) == [1, 2]
    assert ranking(torch.tensor([float("nan"), -float("inf"), 2.0])).tolist() == [2, 1, 0]


def test_rows_are_selected_independently_with_the_same_rule():
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 2.0, 2.0]])
    assert top_indices_per_row(scores, 2) == [[0, 1], [1, 2]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_selection_does_not_depend_on_dtype_or_device(dtype):
    # Small integers are exact in every dtype: many ties, the same answer from every input.
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (2000,), generator=generator).to(dtype)
    expected = top_indices(scores.double(), 700)
    assert top_indices(scores, 700) == expected
    assert expected == sorted(sorted(range(2000), key=lambda i: (-int(scores[i]), i))[:700])
    if torch.cuda.is_available():
        assert top_indices(scores.cuda(), 700) == expected


def reference_global_selection(modules: list[ModuleScores], target: int) -> list[list[int]]:
    """The straightforward loop FLAP's selection replaced, with the (score, index) tie rule:
    lowest score first, and among equal scores the later (module, index) first."""
    units = sorted(
        (float(score), -m, -i)
        for m, module in enumerate(modules)
        for i, score in enumerate(module.zscores.tolist())
    )
    removed: list[list[int]] = [[] for _ in modules]
    total = 0
    for _score, minus_m, minus_i in units:
        m, i = -minus_m, -minus_i
        if total >= target:
            break
        if len(removed[m]) + 1 >= modules[m].zscores.numel():
            continue
        removed[m].append(i)
        total += modules[m].unit_params
    return [sorted(r) for r in removed]


def synthetic_modules(sizes: list[int], params: list[int], levels: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [
        ModuleScores(
            index, "mlp", torch.randint(0, levels, (size,), generator=generator).float(), p, None
        )
        for index, (size, p) in enumerate(zip(sizes, params, strict=True))
    ]


@pytest.mark.parametrize("levels", [1, 3, 1000])
def test_flap_global_selection_equals_the_reference_loop(levels):
    # levels=1: every score ties (all dead); 3: heavy ties across modules; 1000: few ties.
    modules = synthetic_modules([300, 5, 2, 1, 700], [7, 3, 11, 5, 2], levels)
    total = sum(m.zscores.numel() * m.unit_params for m in modules)
    for target in (0, 1, 500, total // 3, total - 20, 10 * total):
        assert global_selection(modules, target) == reference_global_selection(modules, target)


def test_flap_ties_keep_the_lower_indices():
    # All-zero (dead) scores: the last module's highest indices go first, as top_indices would.
    modules = synthetic_modules([4, 4], [1, 1], levels=1)
    assert global_selection(modules, 5) == [[2, 3], [1, 2, 3]]
    modules[0].zscores[1] = float("nan")  # a NaN score is removed before everything else
    assert global_selection(modules, 2) == [[1], [3]]


def test_flap_selection_scales_to_a_70b_mlp():
    # 80 layers' worth would be slow to build here; 4 modules of 28672 x 32 = 3.7 M channels is
    # the count the old quadratic loop could not finish (it rebuilt set(dropped) per channel).
    width = 28672 * 32
    modules = synthetic_modules([width] * 4, [3 * 8192] * 4, levels=50)
    target = 2 * width * 3 * 8192
    started = time.perf_counter()
    removed = global_selection(modules, target)
    kept = [complement(dropped, width) for dropped in removed]
    seconds = time.perf_counter() - started
    assert sum(len(r) for r in removed) == 2 * width  # exactly the target: whole units
    for dropped, keep in zip(removed, kept, strict=True):
        assert len(dropped) + len(keep) == width and set(dropped).isdisjoint(keep)
    assert seconds < 60, f"selection of {4 * width} channels took {seconds:.1f} s"


def test_complement_is_the_ascending_rest():
    assert complement([4, 0, 2], 6) == [1, 3, 5]
    assert complement([], 3) == [0, 1, 2]
