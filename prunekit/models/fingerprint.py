"""A weight fingerprint: which checkpoint a plan was made for, whatever dtype or device it ran in.

Shapes and counts cannot tell a base model from its instruct variant; a plan made on one (and
its restored weights) must not replay silently on the other. The fingerprint looks at a few fixed
tensors (the input embedding and every matrix of the first and last decoder layers), each capped
at ``SAMPLE_ELEMENTS`` by a fixed element stride, so it costs milliseconds even at 70B.

Dtype independence. The sampled values are rounded to bf16 on the CPU before hashing. Loading an
fp32 or bf16 checkpoint in fp32 or bf16 gives the same bf16 values (bf16(bf16(x)) = bf16(x)), so
the SHA-256 matches exactly across those loads and devices, and any weight change that survives
bf16 rounding changes it. A load in fp16 is different: fp32 -> fp16 -> bf16 double-rounds, and
no exact hash can be invariant to both bf16 and fp16 loading (the two rounding grids interleave).
For that case the fingerprint carries a sketch: for 16 chunks of the samples, the dot product with
a fixed random ±1 vector, and the chunk's norm. Double rounding moves each value by at most one
bf16 ulp (≤ 2^-7·|x|, plus 2^-24 absolute below fp16's normal range), so the sketch moves by a
random-sign sum with standard deviation ≤ 2^-7·‖chunk‖; a comparison involving exactly one fp16
load accepts sketches within 8 of those standard deviations. It still catches checkpoints whose
sampled weights differ by more than ~6 % in norm; loads not in fp16 use the exact hash.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.models.adapters import Adapter

SAMPLE_ELEMENTS = 1 << 18  # per tensor: a 70B embedding (1 G values) is sampled every 4096th
SKETCH_CHUNKS = 16
SKETCH_SEED = 0
# Tolerance of the fp16 comparison, in units of the double-rounding bound (see the docstring).
SKETCH_SIGMAS = 8.0
BF16_ULP = 2.0**-7  # relative spacing of bf16 values: the most one double rounding can move one
FP16_SUBNORMAL = 2.0**-24  # absolute precision of fp16 below its normal range


def fingerprint_tensors(model: nn.Module, adapter: Adapter) -> list[tuple[str, torch.Tensor]]:
    """The fixed tensors the fingerprint reads: embedding, first and last layers' matrices."""
    picks = [("embed", model.get_input_embeddings().weight)]
    layers = adapter.layers(model)
    for position in sorted({0, len(layers) - 1}):
        for name, param in layers[position].named_parameters():
            if param.ndim == 2:
                picks.append((f"layers.{position}.{name}", param))
    return picks


def canonical_sample(tensor: torch.Tensor) -> torch.Tensor:
    """At most SAMPLE_ELEMENTS values at a fixed stride, rounded to bf16, on the CPU."""
    flat = tensor.detach().reshape(-1)
    stride = sample_stride(flat.numel())
    # Move before rounding: the cast then happens in one place, round-to-nearest-even on CPU.
    return flat[::stride].to("cpu").to(torch.bfloat16)


def sample_stride(numel: int) -> int:
    return max(1, math.ceil(numel / SAMPLE_ELEMENTS))


def sample_of_row_slices(
    shape: tuple[int, ...], row_slices: Iterable[tuple[int, torch.Tensor]]
) -> torch.Tensor:
    """``canonical_sample`` of a tensor read in row slices (first row, rows): the same values,
    with only one slice of the tensor in memory at a time."""
    row_size = math.prod(shape[1:])
    stride = sample_stride(math.prod(shape))
    pieces = []
    for first_row, rows in row_slices:
        offset = first_row * row_size  # flat index of the slice's first value
        start = (-offset) % stride  # the first multiple of the stride inside the slice
        pieces.append(canonical_piece(rows.detach().reshape(-1)[start::stride]))
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.bfloat16)


def canonical_piece(values: torch.Tensor) -> torch.Tensor:
    return values.to("cpu").to(torch.bfloat16)


def weight_fingerprint(model: nn.Module, adapter: Adapter) -> dict[str, Any] | None:
    """{"sha256", "dtype", "sketch", "norms"}; None when the weights are not materialised (meta)."""
    tensors = fingerprint_tensors(model, adapter)
    if any(t.is_meta for _, t in tensors):
        return None
    samples = ((name, tuple(t.shape), canonical_sample(t)) for name, t in tensors)
    return fingerprint_of_samples(samples, tensors[0][1].dtype)


def fingerprint_of_samples(
    samples: Iterable[tuple[str, tuple[int, ...], torch.Tensor]], dtype: torch.dtype
) -> dict[str, Any]:
    """The fingerprint of (name, shape, canonical sample) triples, consumed one at a time (a
    streamed model reads each tensor only while its sample is taken); ``dtype``: the dtype the
    weights were read in."""
    digest = hashlib.sha256()
    kept = []
    for name, shape, sample in samples:
        digest.update(f"{name}:{shape};".encode())
        digest.update(sample.view(torch.int16).numpy().tobytes())
        kept.append(sample)
    dots, norms = sketch(torch.cat(kept))
    return {
        "sha256": digest.hexdigest()[:32],
        "dtype": str(dtype).removeprefix("torch."),
        "sketch": dots,
        "norms": norms,
    }


def sketch(values: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per chunk: the dot product with a fixed ±1 vector, and the norm.

    ``values`` may be bf16 samples: each chunk is widened to fp32 on its own, so the whole
    vector is never held in fp32 (the samples of a big model are ~4 M values).
    """
    generator = torch.Generator().manual_seed(SKETCH_SEED)
    signs = torch.randint(0, 2, (values.numel(),), generator=generator, dtype=torch.int8)
    dots, norms = [], []
    for chunk, sign in zip(
        values.tensor_split(SKETCH_CHUNKS), signs.tensor_split(SKETCH_CHUNKS), strict=True
    ):
        chunk, sign = chunk.float(), sign.float() * 2 - 1
        # fp32 sums are enough: the sketch is only compared within a tolerance of ~2^-4 relative.
        dots.append(float((chunk * sign).sum(dtype=torch.float64)))
        norms.append(float(chunk.norm(dtype=torch.float64)))
    return dots, norms


def fingerprints_match(recorded: dict, loaded: dict) -> bool:
    """Whether two fingerprints are of the same checkpoint (see the module docstring)."""
    if recorded.get("sha256") == loaded.get("sha256"):
        return True
    dtypes = {recorded.get("dtype"), loaded.get("dtype")}
    if "float16" not in dtypes or len(dtypes) == 1:
        return False  # no double rounding between these loads: the exact hash decides
    return sketches_close(recorded, loaded)


def sketches_close(a: dict, b: dict) -> bool:
    """Sketches within the double-rounding tolerance of one fp16 load, chunk by chunk."""
    keys = ("sketch", "norms")
    if any(
        len(a.get(k) or []) != SKETCH_CHUNKS or len(b.get(k) or []) != SKETCH_CHUNKS for k in keys
    ):
        return False
    pairs = zip(a["sketch"], b["sketch"], a["norms"], b["norms"], strict=True)
    for dot_a, dot_b, norm_a, norm_b in pairs:
        # The absolute (fp16 subnormal) term assumes about SAMPLE_ELEMENTS values per chunk; it is
        # negligible next to the relative term for any real weight matrix.
        sigma = BF16_ULP * max(norm_a, norm_b) + FP16_SUBNORMAL * math.sqrt(SAMPLE_ELEMENTS)
        if not (abs(dot_a - dot_b) <= SKETCH_SIGMAS * sigma and abs(norm_a - norm_b) <= sigma):
            return False
    return True


def describe(fingerprint: dict | None) -> str:
    if not fingerprint:
        return "no fingerprint"
    return f"fingerprint {fingerprint.get('sha256', '?')[:12]} ({fingerprint.get('dtype', '?')})"
