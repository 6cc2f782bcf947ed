"""Layer-major evaluation of many block subsets of a streamed model: each layer onloaded once.

The depth search scores every candidate (the current model minus one unit) on every calibration
window. In memory that is candidate-major (``methods/depth/calibration.BlockRunner``: one running
state per window, each candidate's suffix run from it). With the weights in their shards, that
order would read every layer once per candidate; here the order is turned around. For a *chunk*
of windows, the layers are onloaded one after the other and each layer's blocks are applied to
every live *branch*: a trunk (the current model) carries the windows from the embeddings, and a
branch (the trunk minus some blocks) is spawned from the trunk at its first skipped block, so the
prefix is shared for free. At the end of the chunk the final norm and the LM head are onloaded
once and score every branch's windows (the caller's ``score`` function).

Every window stays its own [1, T, d] tensor and every block is the same ``run_block`` call on the
same input as in the candidate-major runner, so each branch's final states are bit-identical to
``BlockRunner``'s (which the removal-order equality of the streamed search relies on).

Memory: one decoder layer onloaded at a time, plus (branches + 1) states per window of the chunk;
``chunk_windows`` sizes the chunk from a byte budget.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import groupby

import torch

from prunekit.engine.layerwise import (
    CalibrationBlocks,
    LayerContext,
    capture_layer_context,
    embed,
    run_block,
)
from prunekit.engine.residency import Streamed
from prunekit.models.adapters import BlockRef
from prunekit.models.lazy import EMBEDDINGS, HEAD, REST
from prunekit.models.loading import LoadedModel

# States kept at once when no budget is given.
DEFAULT_STATE_BYTES = 1 << 30

# A branch: its key and the blocks of the trunk it skips (non-empty).
Branches = Mapping[Hashable, frozenset[BlockRef]]
# Called at the end of a chunk, with the head onloaded: (window indices, branch key -> finals).
ChunkScorer = Callable[[Sequence[int], dict[Hashable, list[torch.Tensor]]], None]


class LayerMajorRunner(CalibrationBlocks):
    """Runs a streamed model (``loaded.residency`` a ``Streamed``) over calibration windows,
    layer-major; the same surface as ``BlockRunner`` where the greedy search reads it."""

    def __init__(
        self, loaded: LoadedModel, windows: torch.Tensor, max_memory: int | None = None
    ) -> None:
        if not isinstance(loaded.residency, Streamed):
            raise TypeError("LayerMajorRunner runs a streamed model (loaded.residency)")
        self.loaded = loaded
        self.model = loaded.model
        self.adapter = loaded.adapter
        self.residency: Streamed = loaded.residency
        self.lazy = self.residency.lazy
        self.device = self.lazy.device
        self.windows = windows.to(self.device)
        self.skip_first = 1 if self.adapter.bos_per_window else 0
        self.layers = self.adapter.layers(self.model)
        self.max_memory = max_memory
        with self.residency.onloaded(EMBEDDINGS, REST):
            self.context: LayerContext = capture_layer_context(
                self.model, self.adapter, self.windows[:1]
            )
        self.passes = 0  # layer-major passes over the weights (each onloads every layer once)

    # ---- what the greedy search reads --------------------------------------------------------
    @property
    def window_state_bytes(self) -> int:
        """Bytes of one window's hidden state."""
        length, width = self.windows.shape[1], self.model.config.hidden_size
        return length * width * self.lazy.dtype.itemsize

    @property
    def state_bytes(self) -> int:
        return self.num_windows * self.window_state_bytes

    # ---- chunks --------------------------------------------------------------------------------
    def resident_bytes(self) -> int:
        """Memory besides the states: the largest layer, the final norm and the LM head (and its
        fp32 copy when the model is not fp32), one layer's activations of one window."""
        largest = max(self.lazy.part_bytes(i) for i in range(len(self.layers)))
        head = self.lazy.part_bytes(REST, HEAD)
        vocab, width = self.model.config.vocab_size, self.model.config.hidden_size
        fp32_head = 0 if self.lazy.dtype == torch.float32 else vocab * width * 4
        config = self.model.config
        widest = max(width, getattr(config, "intermediate_size", 0) or 0, 4 * width)
        activations = 4 * self.windows.shape[1] * widest * 4 + 3 * 128 * vocab * 4
        return largest + head + fp32_head + activations

    def chunk_windows(self, branches: int) -> int:
        """Windows per chunk so that (branches + 2) states per window fit the state budget
        (``max_memory`` minus what is resident; 1 GiB of states without a budget). At least 1."""
        if self.max_memory is None:
            budget = DEFAULT_STATE_BYTES
        else:
            budget = self.max_memory - self.resident_bytes()
        per_window = (branches + 2) * self.window_state_bytes
        return max(1, min(self.num_windows, budget // max(per_window, 1)))

    def chunks(self, branches: int, windows: Sequence[int] | None = None) -> Iterator[list[int]]:
        windows = list(range(self.num_windows)) if windows is None else list(windows)
        size = self.chunk_windows(branches)
        for start in range(0, len(windows), size):
            yield windows[start : start + size]

    # ---- running -------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_windows(self, windows: Sequence[int]) -> list[torch.Tensor]:
        with self.residency.onloaded(EMBEDDINGS, REST):
            return [embed(self.model, self.adapter, self.windows[w : w + 1]) for w in windows]

    @torch.inference_mode()
    def run_chunk(
        self,
        trunk_blocks: Sequence[BlockRef],
        branches: Branches,
        windows: Sequence[int],
        keep_trunk: bool = False,
        on_block: Callable[[BlockRef, list, list], None] | None = None,
    ) -> dict[Hashable, list[torch.Tensor]]:
        """Every branch's last-layer states on ``windows`` (and the trunk's under key ``None``
        when ``keep_trunk``); each layer onloaded once. ``on_block(block, inputs, outputs)`` sees
        the trunk's states around each block (the one-shot statistics)."""
        position = {block: i for i, block in enumerate(trunk_blocks)}
        spawn: dict[int, list[Hashable]] = {}
        for key, skipped in branches.items():
            spawn.setdefault(min(position[b] for b in skipped), []).append(key)
        last_spawn = max(spawn, default=-1)
        # The trunk runs up to the last branch's spawn (the state before it), or to the end.
        trunk_needed_until = len(trunk_blocks) if keep_trunk or on_block else last_spawn
        trunk = self.embed_windows(windows)
        live: dict[Hashable, list[torch.Tensor]] = {}
        self.passes += 1
        for layer_index, blocks in groupby(trunk_blocks, key=lambda b: b.layer):
            blocks = list(blocks)
            first = position[blocks[0]]
            if not live and first > last_spawn and first >= trunk_needed_until:
                break  # no branch left to run or to spawn, and the trunk is not needed
            with self.residency.onloaded(layer_index):
                for block in blocks:
                    at = position[block]
                    for key in spawn.get(at, ()):
                        live[key] = list(trunk)  # the same tensors: blocks never write in place
                    for key, states in live.items():
                        if block not in branches[key]:
                            live[key] = [self.run_block(block, s) for s in states]
                    if at < trunk_needed_until:
                        outputs = [self.run_block(block, s) for s in trunk]
                        if on_block is not None:
                            on_block(block, trunk, outputs)
                        trunk = outputs
        if keep_trunk:
            live[None] = trunk
        return live

    def run_block(self, block: BlockRef, hidden: torch.Tensor) -> torch.Tensor:
        layer = self.layers[block.layer]
        return run_block(self.adapter, layer, block.kind, hidden, self.context.kwargs[block.layer])

    @contextmanager
    def head(self) -> Iterator[None]:
        """The final norm and the LM head onloaded (the caller builds its fp32 head inside and
        drops it before leaving, so the weights are released)."""
        with self.residency.onloaded(REST, HEAD):
            yield

    @torch.inference_mode()
    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.adapter.final_hidden(self.model, hidden)

    def window_ids(self, window: int) -> torch.Tensor:
        return self.windows[window : window + 1]
