"""Run a decoder one layer (or one block) at a time, outside the model's own forward.

Both families of methods need this: the depth search re-runs only the blocks after a candidate,
and the width methods process layer l on the outputs of the already-pruned layers < l. Rather
than re-implementing each family's mask and rotary logic, we let the stock forward compute the
per-layer keyword arguments once (captured by a pre-hook on every layer) and replay them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.models.adapters import BLOCK_KINDS, Adapter, BlockKind, BlockRef


class CalibrationBlocks:
    """What a runner over calibration windows (``engine/executor.LayerExecutor``) tells the depth
    search. Subclasses set ``windows`` ([n, seqlen] token ids), ``skip_first`` (1 when a BOS
    starts every window), ``layers`` and ``adapter``."""

    windows: torch.Tensor
    skip_first: int
    layers: nn.ModuleList
    adapter: Adapter

    @property
    def num_windows(self) -> int:
        return self.windows.shape[0]

    @property
    def tokens(self) -> int:
        """Predicted tokens over all windows (the denominator of the calibration ppl)."""
        return self.num_windows * (self.windows.shape[1] - 1 - self.skip_first)

    def blocks(self) -> list[BlockRef]:
        """Every block of the model in execution order."""
        return [
            BlockRef(index, kind)
            for index, layer in enumerate(self.layers)
            for kind in BLOCK_KINDS
            if self.adapter.has_block(layer, kind)
        ]


class _StopForward(Exception):
    pass


@dataclass
class LayerContext:
    """Per-layer keyword arguments of the decoder's forward for one window length."""

    kwargs: list[dict]
    seqlen: int


def _clean_kwargs(kwargs: dict) -> dict:
    # No cache while calibrating or scoring: every window is an independent full sequence.
    return {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "use_cache")}


@torch.inference_mode()
def capture_layer_context(model: nn.Module, adapter: Adapter, sample: torch.Tensor) -> LayerContext:
    """Run ``sample`` ([1, T] token ids) through the model once, recording each layer's kwargs.

    The kwargs (masks, positions, rotary tables) are built before the decoder loop and never
    depend on the hidden states, so during the capture every layer passes its input through
    unchanged and the last one stops the forward: the capture costs an embedding, not a window.
    """
    layers = adapter.layers(model)
    captured: list[dict | None] = [None] * len(layers)

    def make_hook(index: int):
        def hook(_module, _args, kwargs):
            captured[index] = _clean_kwargs(kwargs)
            if index == len(layers) - 1:
                raise _StopForward

        return hook

    handles = [
        layer.register_forward_pre_hook(make_hook(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    # An instance-level ``forward`` may already be there (accelerate's offload hooks): put it back.
    previous = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        layer.forward = _pass_through
    try:
        model(input_ids=sample[:1].to(_device(model)), use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
        for layer, forward in zip(layers, previous, strict=True):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
    return LayerContext(kwargs=[c or {} for c in captured], seqlen=sample.shape[-1])


def _pass_through(*args, **kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@torch.inference_mode()
def embed(model: nn.Module, adapter: Adapter, input_ids: torch.Tensor) -> torch.Tensor:
    """Hidden states entering layer 0 (embeddings, positions, scaling: whatever the model does)."""
    layers = adapter.layers(model)
    box: dict[str, torch.Tensor] = {}

    def hook(_module, args, kwargs):
        box["h"] = args[0] if args else kwargs["hidden_states"]
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=input_ids.to(_device(model)), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return box["h"]


def run_block(
    adapter: Adapter,
    layer: nn.Module,
    kind: BlockKind,
    hidden: torch.Tensor,
    kwargs: dict,
) -> torch.Tensor:
    """h + f(h) for one block of one layer (the layer's own stock forward is not used)."""
    return hidden + adapter.branch(layer, kind, hidden, kwargs)


def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The layer's own forward with its captured kwargs (for whole-layer replays)."""
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def batches(windows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, windows.shape[0], batch_size):
        yield windows[start : start + batch_size]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
