"""Math modes for fp32 matmuls: full IEEE fp32 where it matters, the fast units where exact.

Two uses. :func:`full_fp32_matmul` pins full fp32 for the depth search's LM head, whatever the
user chose for speed (below). :func:`fp32_accumulated_matmul` does the opposite where it is
safe: FASP's Gram products XᵀX of a bf16 model's activations run on the bf16 units (AMX on CPUs;
TF32 tensor cores on CUDA, which also hold fp16 values exactly) with fp32 accumulation. Their
inputs are already bf16 values, so nothing is rounded but the fp32 sums, as in IEEE fp32.

The vocabulary-subset bound (nll_bound.py) stays below the exact NLL only if both are computed
with fp32 arithmetic: its ``SLACK`` covers fp32 rounding (~1e-6 of a logit), not reduced-precision
math modes that PyTorch applies to fp32 tensors on request. TF32 (10-bit mantissa; Ampere+ GPUs via
``torch.backends.cuda.matmul.allow_tf32``, ``set_float32_matmul_precision("high")`` or
``torch.backends.cuda.matmul.fp32_precision = "tf32"``) and oneDNN's bf16 math mode
(``set_float32_matmul_precision("medium")`` on AMX CPUs: logits of a 576-wide head off by 0.26
instead of 8e-5, measured) shift a logit by far more than the slack, so the bound could exceed the
exact NLL and drop the true winner. :func:`full_fp32_matmul` pins every such switch to full fp32
for the head, the bound and the exact NLL, and puts the user's settings back afterwards.

PyTorch >= 2.9 has two APIs for these switches (the legacy ``allow_tf32`` /
``float32_matmul_precision`` and the per-backend ``fp32_precision`` tree) and refuses to read a
legacy value when the two disagree, so both are set consistently and each is restored only if it
could be read.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

# Nodes of the per-backend fp32_precision tree (torch >= 2.9), parents before children so a
# restore sets every node to its own saved value.
PRECISION_NODES = (
    "",
    "cuda.matmul",
    "cudnn",
    "cudnn.conv",
    "cudnn.rnn",
    "mkldnn",
    "mkldnn.matmul",
    "mkldnn.conv",
    "mkldnn.rnn",
)

F = TypeVar("F", bound=Callable[..., Any])


def _node(name: str) -> Any | None:
    """``torch.backends.<name>`` if it has an ``fp32_precision`` switch in this torch."""
    node: Any = torch.backends
    for part in filter(None, name.split(".")):
        node = getattr(node, part, None)
        if node is None:
            return None
    try:
        node.fp32_precision  # noqa: B018 - probing: older torch raises AttributeError
    except (AttributeError, RuntimeError):
        return None
    return node


def _read(getter: Callable[[], Any]) -> Any | None:
    """A legacy setting, or None where torch refuses to read it (legacy and new API mixed)."""
    try:
        return getter()
    except RuntimeError:
        return None


@dataclass(frozen=True)
class PrecisionSettings:
    """Every switch that lets PyTorch compute an fp32 matmul or convolution in less precision."""

    float32_matmul: str | None
    cudnn_allow_tf32: bool | None
    nodes: dict[str, str]

    @classmethod
    def current(cls) -> PrecisionSettings:
        nodes = {name: node.fp32_precision for name in PRECISION_NODES if (node := _node(name))}
        return cls(
            _read(torch.get_float32_matmul_precision),
            _read(lambda: bool(torch.backends.cudnn.allow_tf32)),
            nodes,
        )

    def apply(self) -> None:
        """Set every readable switch back. The legacy switches go first: setting one of them also
        rewrites nodes of the new tree, which then get their own saved values."""
        if self.float32_matmul is not None:
            torch.set_float32_matmul_precision(self.float32_matmul)
        if self.cudnn_allow_tf32 is not None:
            torch.backends.cudnn.allow_tf32 = self.cudnn_allow_tf32
        for name, value in self.nodes.items():
            node = _node(name)
            if node is not None:
                node.fp32_precision = value


FULL_FP32 = PrecisionSettings(
    float32_matmul="highest",
    cudnn_allow_tf32=False,
    nodes=dict.fromkeys(PRECISION_NODES, "ieee"),
)


@contextmanager
def full_fp32_matmul() -> Iterator[None]:
    """Inside: fp32 matmuls (and convolutions) in full IEEE fp32 on every backend. On exit,
    also through an exception, the caller's settings are restored."""
    saved = PrecisionSettings.current()
    try:
        FULL_FP32.apply()
        yield
    finally:
        saved.apply()


def in_full_fp32(function: F) -> F:
    """Decorator form of :func:`full_fp32_matmul`."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with full_fp32_matmul():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _fast_nodes(source: torch.dtype, device: torch.device) -> dict[str, str] | None:
    """The per-backend switch under which an fp32 matmul of exact ``source`` values keeps every
    product exact and accumulates in fp32, or None where no such fast mode exists.

    oneDNN's bf16 mode rounds fp32 inputs to bf16 (a no-op for bf16 values) and multiplies on
    AMX / AVX512-BF16 with fp32 accumulation. CUDA's TF32 keeps 10 mantissa bits and 8 exponent
    bits, so bf16 and fp16 values pass unchanged, and tensor cores accumulate in fp32.
    """
    if device.type == "cpu" and source == torch.bfloat16:
        supported = torch.backends.mkldnn.is_available() and bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
        return {"mkldnn.matmul": "bf16"} if supported and _node("mkldnn.matmul") else None
    if device.type == "cuda" and source in (torch.bfloat16, torch.float16):
        return {"cuda.matmul": "tf32"} if _node("cuda.matmul") else None
    return None


def exact_input_settings(source: torch.dtype, device: torch.device) -> PrecisionSettings:
    """Settings for fp32 matmuls whose inputs are exact ``source`` values: the fast mode of
    :func:`_fast_nodes` where one exists (as exact as IEEE fp32 for such inputs, products and
    fp32 sums alike), full IEEE fp32 otherwise (fp32 inputs, fp16 on a CPU)."""
    fast = _fast_nodes(source, device)
    if fast is None:
        return FULL_FP32
    return dataclasses.replace(FULL_FP32, nodes={**FULL_FP32.nodes, **fast})


@contextmanager
def fp32_accumulated_matmul(source: torch.dtype, device: torch.device) -> Iterator[None]:
    """Inside: fp32 matmuls of tensors holding exact ``source`` values (upcast activations of a
    bf16 model) run on the low-precision units with fp32 accumulation where that loses nothing,
    in full IEEE fp32 otherwise. The caller's settings are restored on exit."""
    saved = PrecisionSettings.current()
    try:
        exact_input_settings(source, device).apply()
        yield
    finally:
        saved.apply()
