"""The sequential layer-by-layer calibration loop shared by every width method (SparseGPT-style).

Layer-0 inputs of the calibration windows are captured once; then each decoder layer is
processed block by block (attention, then MLP): forward pre-hooks on the modules a method
watches accumulate running statistics of their inputs (``InputStatistics``), the method decides
(and prunes the block in place), and the *pruned* block's outputs become the next block's inputs.
Only the windows' hidden states are kept between blocks; activations inside a block are reduced
to statistics as they stream past, never stored.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from prunekit.engine.layerwise import batches, capture_layer_context, embed, run_block
from prunekit.errors import NumericalError
from prunekit.models.adapters import BLOCK_KINDS, BlockKind
from prunekit.models.loading import LoadedModel
from prunekit.progress import progress


class InputStatistics:
    """Running statistics of one module's input columns over every calibration token.

    ``sum`` and ``sum_sq`` (fp64) give means, variances and column norms; ``gram`` = XᵀX (fp32)
    is accumulated only when a method needs it (least-squares restoration), since it costs as
    much as the module's own matmul.
    """

    def __init__(self, width: int, gram: bool, device: torch.device | str = "cpu"):
        self.width = width
        self.count = 0
        self.sum = torch.zeros(width, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(width, dtype=torch.float64, device=device)
        self.gram = torch.zeros(width, width, device=device) if gram else None

    def add_batch(self, inputs: torch.Tensor) -> None:
        x = inputs.reshape(-1, self.width).float()
        self.count += x.shape[0]
        self.sum += x.sum(dim=0, dtype=torch.float64)
        self.sum_sq += x.square().sum(dim=0, dtype=torch.float64)
        if self.gram is not None:
            self.gram.addmm_(x.T, x)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased per-column variance over tokens."""
        n = max(self.count, 2)
        return ((self.sum_sq - self.sum.square() / n) / (n - 1)).clamp_min(0.0)

    @property
    def norm(self) -> torch.Tensor:
        """‖X_j‖₂ per column."""
        return self.sum_sq.sqrt()

    def check_finite(self, name: str) -> None:
        tensors = [self.sum_sq] + ([self.gram] if self.gram is not None else [])
        if not all(torch.isfinite(t).all() for t in tensors):
            raise NumericalError(
                f"the calibration inputs of {name} contain NaN or Inf; try --dtype fp32 or "
                "other calibration text"
            )


class SequentialMethod(Protocol):
    """What a width method plugs into the loop: its statistic and its decision."""

    needs_gram: bool

    def watched(self, layer: nn.Module, kind: BlockKind) -> dict[str, nn.Module]:
        """Modules of this block whose inputs to record, by name ({} = skip the block)."""
        ...

    def decide(
        self, index: int, layer: nn.Module, kind: BlockKind, stats: dict[str, InputStatistics]
    ) -> bool:
        """Prune the block in place (or only record). True when the block's outputs changed."""
        ...


@torch.no_grad()  # not inference_mode: the sliced weights must stay ordinary parameters
def sequential_pass(
    loaded: LoadedModel, windows: torch.Tensor, method: SequentialMethod, batch_size: int = 1
) -> int:
    """Run the calibration windows through the model block by block, letting ``method`` prune.

    Returns the number of calibration tokens each statistic saw. Blocks the method leaves
    unchanged reuse the outputs of the statistics pass, so a method that only records (FLAP)
    costs one calibration pass.
    """
    model, adapter = loaded.model, loaded.adapter
    context = capture_layer_context(model, adapter, windows[:1])
    hidden = [embed(model, adapter, batch) for batch in batches(windows, batch_size)]
    layers = adapter.layers(model)
    for index in progress(range(len(layers)), desc="calibrate+prune", unit="layer"):
        layer, kwargs = layers[index], context.kwargs[index]
        for kind in BLOCK_KINDS:
            if not adapter.has_block(layer, kind):
                continue
            watched = method.watched(layer, kind)
            stats = {
                name: InputStatistics(
                    module.weight.shape[1], method.needs_gram, module.weight.device
                )
                for name, module in watched.items()
            }
            handles = [
                module.register_forward_pre_hook(_recorder(stats[name]))
                for name, module in watched.items()
            ]
            try:
                outputs = [run_block(adapter, layer, kind, h, kwargs) for h in hidden]
            finally:
                for handle in handles:
                    handle.remove()
            for name, stat in stats.items():
                stat.check_finite(f"layer {index} {name}")
            if watched and method.decide(index, layer, kind, stats):
                outputs = [run_block(adapter, layer, kind, h, kwargs) for h in hidden]
            hidden = outputs
    return windows.numel()


@torch.no_grad()
def prune_without_data(loaded: LoadedModel, method: SequentialMethod) -> None:
    """The same per-block decisions for methods that need no statistics (magnitude)."""
    adapter = loaded.adapter
    for index, layer in enumerate(adapter.layers(loaded.model)):
        for kind in BLOCK_KINDS:
            if adapter.has_block(layer, kind) and method.watched(layer, kind):
                method.decide(index, layer, kind, {})


def _recorder(stat: InputStatistics):
    def hook(_module: nn.Module, args: tuple) -> None:
        stat.add_batch(args[0])

    return hook
