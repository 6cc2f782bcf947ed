"""Where the model's weights are while the engine runs it: all resident, or streamed part by part.

The engine (``prunekit.engine.sequential``) asks for a part before it runs it (``onloaded``) and
says when a part is final (``finished``: pruned, nothing will change it again). For a model in
memory both are no-ops. For a lazily loaded model (``prunekit.models.lazy.LazyModel``) a part is
read from the shards on entry, handed to a sink when finished (the streamed export writes it to
the output shards) and released on exit, so memory holds about one layer at a time
(DESIGN.md principle 7). Parts are the lazy model's: a layer index, EMBEDDINGS, REST, HEAD.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from prunekit.models.lazy import EMBEDDINGS, HEAD, REST, LazyModel, Part

# What a streamed run writes once a part is final: (part, the part's module).
PartSink = Callable[[Part, nn.Module], None]


class Resident:
    """Every weight is already in memory: nothing to onload, nothing to release."""

    streamed = False

    @contextmanager
    def onloaded(self, *parts: Part) -> Iterator[None]:
        yield

    def finished(self, part: Part, module: nn.Module) -> None:
        pass


class Streamed:
    """Weights read from the checkpoint's shards part by part and released after use.

    A released layer keeps meta tensors of its *pruned* shapes, so at the end the skeleton
    describes the pruned model (what the export's config and shape checks read) while holding
    no weight memory.
    """

    streamed = True

    def __init__(self, lazy: LazyModel, sink: PartSink | None = None):
        self.lazy = lazy
        self.sink = sink
        self.done: set[Part] = set()

    @contextmanager
    def onloaded(self, *parts: Part) -> Iterator[None]:
        todo = [p for p in parts if p not in self.done]
        self.lazy.onload(*todo)
        shapes = {}
        try:
            yield
        finally:
            for part in todo:
                if part in self.done and isinstance(part, int):  # layers are what gets pruned
                    shapes[part] = _meta_copies(self.lazy.module(part))
            self.lazy.release(*todo)
            for part, meta in shapes.items():
                _install_meta(self.lazy.module(part), meta)

    def finished(self, part: Part, module: nn.Module) -> None:
        """Hand the final part to the sink once (it stays in its pruned shape, on meta)."""
        if part in self.done:
            return
        if self.sink is not None:
            self.sink(part, module)
        self.done.add(part)

    def finish_outside_layers(self) -> None:
        """Write the parts the width engine never changes: what is left beside the layers."""
        for part in (EMBEDDINGS, REST, HEAD):
            if part not in self.done:
                with self.onloaded(part):
                    self.finished(part, self.lazy.module(part))


def _meta_copies(module: nn.Module) -> dict[str, tuple[torch.Tensor, bool]]:
    """Meta stand-ins of a module's parameters in their current (pruned) shapes."""
    return {
        name: (torch.empty(p.shape, dtype=p.dtype, device="meta"), p.requires_grad)
        for name, p in module.named_parameters()
    }


def _install_meta(module: nn.Module, meta: dict[str, Any]) -> None:
    for name, (tensor, requires_grad) in meta.items():
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        owner._parameters[attr] = nn.Parameter(tensor, requires_grad=requires_grad)


Residency = Resident | Streamed
