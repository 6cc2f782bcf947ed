"""The layer executor: runs many block subsets of one model over calibration windows, layer-major.

Every depth method asks the same question: what are the hidden states at the end (or at block
boundaries) of the model with some blocks skipped? The executor answers it for a model in
memory and for a streamed one alike (``engine/residency.py``): for a *chunk* of windows the
layers are taken one after the other (onloaded once each when streamed) and each layer's blocks
are applied to every live *branch*. A trunk (the current model) carries the windows from the
embeddings; a branch (the trunk minus some blocks) is spawned from the trunk at its first skipped
block, so every branch pays only for the blocks after its spawn point (prefix reuse). At the end
of the chunk the caller gets every branch's final states.

Windows run in fixed *batches* of ``batch_size`` windows ([b, T, d] states): one batch is one
call to each block, so a GPU sees fewer, larger kernels. The batches are the same for the whole
run (window i always sits at the same place of the same batch), so a branch's states do not
depend on when or beside which other branches they were computed: the fast search and the naive
oracle see bit-identical numbers within one run. Across batch sizes sums round differently
(docs/algorithms.md, "Batched windows").

Memory: one decoder layer onloaded at a time when streamed, plus (branches + 2) states per
window of the chunk; ``chunk_windows`` sizes the chunk from a byte budget.
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
from prunekit.engine.residency import Residency, Resident, Streamed
from prunekit.models.adapters import BlockRef
from prunekit.models.lazy import EMBEDDINGS, HEAD, REST
from prunekit.models.loading import LoadedModel

# States kept at once when no budget is given.
DEFAULT_STATE_BYTES = 1 << 30
# Windows per block call on a GPU when --batch-size is not given: one window of a small model is
# a few kernel launches of little work each, so a step is launch-bound (docs/results/
# gpu_check.md: 3.4-12.4 s per BlockPruner step on an H200 at batch 1).
GPU_BATCH_SIZE = 8


def default_batch_size(device: str | torch.device, windows: int) -> int:
    """The batch size a run gets when none is given: 1 on a CPU (one window's matmuls already
    fill the cores, and batch 1 keeps the fewest states), ``GPU_BATCH_SIZE`` on a GPU, at most
    the number of windows."""
    on_gpu = torch.device(device).type != "cpu"
    return max(1, min(windows, GPU_BATCH_SIZE if on_gpu else 1))


# A branch: its key and the blocks of the trunk it skips (non-empty).
Branches = Mapping[Hashable, frozenset[BlockRef]]
# Sees the trunk's states (one tensor per batch) before and after each block.
BlockObserver = Callable[[BlockRef, list[torch.Tensor], list[torch.Tensor]], None]


class LayerExecutor(CalibrationBlocks):
    """Runs ``loaded`` (in memory, or streamed when ``loaded.residency`` is ``Streamed``) over
    ``windows`` ([n, T] token ids) in batches of ``batch_size``.

    ``max_memory``: the byte budget the chunks of a streamed run fit in (what is resident is
    subtracted); ``state_bytes``: the budget for states alone (default: 1 GiB in memory, or
    what ``max_memory`` leaves).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        windows: torch.Tensor,
        batch_size: int = 1,
        max_memory: int | None = None,
        state_bytes: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.loaded = loaded
        self.model = loaded.model
        self.adapter = loaded.adapter
        self.residency: Residency = loaded.residency or Resident()
        self.streamed = isinstance(self.residency, Streamed)
        if self.streamed:
            self.lazy = self.residency.lazy
            self.device = self.lazy.device
            self.dtype = self.lazy.dtype
        else:
            weight = next(self.model.parameters())
            self.device, self.dtype = weight.device, weight.dtype
        self.windows = windows.to(self.device)
        self.batch_size = batch_size
        self.skip_first = 1 if self.adapter.bos_per_window else 0
        self.layers = self.adapter.layers(self.model)
        self.max_memory = max_memory
        self.state_budget = state_bytes
        with self.residency.onloaded(EMBEDDINGS, REST):
            self.context: LayerContext = capture_layer_context(
                self.model, self.adapter, self.windows[:1]
            )
        self.passes = 0  # layer-major passes over the weights (each runs every layer once)
        self.largest_chunk = 0

    # ---- sizes ----------------------------------------------------------------------------------
    @property
    def window_state_bytes(self) -> int:
        """Bytes of one window's hidden state."""
        length, width = self.windows.shape[1], self.model.config.hidden_size
        return length * width * self.dtype.itemsize

    @property
    def state_bytes(self) -> int:
        """Bytes of one branch's states over all windows."""
        return self.num_windows * self.window_state_bytes

    def resident_bytes(self) -> int:
        """Memory besides the states in a streamed run: the largest layer, the final norm and the
        LM head (and its fp32 copy when the model is not fp32), one layer's activations of one
        batch."""
        largest = max(self.lazy.part_bytes(i) for i in range(len(self.layers)))
        head = self.lazy.part_bytes(REST, HEAD)
        vocab, width = self.model.config.vocab_size, self.model.config.hidden_size
        fp32_head = 0 if self.dtype == torch.float32 else vocab * width * 4
        config = self.model.config
        widest = max(width, getattr(config, "intermediate_size", 0) or 0, 4 * width)
        tokens = self.batch_size * self.windows.shape[1]
        activations = 4 * tokens * widest * 4 + 3 * 128 * vocab * 4
        return largest + head + fp32_head + activations

    def chunk_windows(self, branches: int) -> int:
        """Windows per chunk so that (branches + 2) states per window fit the state budget; a
        whole number of batches, at least one."""
        if self.state_budget is not None:
            budget = self.state_budget
        elif self.max_memory is not None and self.streamed:
            budget = self.max_memory - self.resident_bytes()
        else:
            budget = DEFAULT_STATE_BYTES
        per_batch = (branches + 2) * self.window_state_bytes * self.batch_size
        batches = max(1, budget // max(per_batch, 1))
        return min(self.num_windows, batches * self.batch_size)

    def chunks(self, branches: int, windows: Sequence[int] | None = None) -> Iterator[list[int]]:
        """Consecutive windows, whole batches at a time, ``chunk_windows(branches)`` per chunk."""
        windows = list(range(self.num_windows)) if windows is None else list(windows)
        size = self.chunk_windows(branches)
        for start in range(0, len(windows), size):
            chunk = windows[start : start + size]
            self.largest_chunk = max(self.largest_chunk, len(chunk))
            yield chunk

    def batches_of(self, windows: Sequence[int]) -> list[list[int]]:
        """``windows`` split along the run's fixed batches (each batch whole in ``windows``)."""
        grouped = groupby(windows, key=lambda w: w // self.batch_size)
        return [list(group) for _, group in grouped]

    # ---- running --------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_windows(self, windows: Sequence[int]) -> list[torch.Tensor]:
        """Layer-0 inputs, one [b, T, d] tensor per batch of ``windows``."""
        with self.residency.onloaded(EMBEDDINGS, REST):
            return [
                embed(self.model, self.adapter, self.windows[batch[0] : batch[-1] + 1])
                for batch in self.batches_of(windows)
            ]

    @torch.inference_mode()
    def run_chunk(
        self,
        trunk_blocks: Sequence[BlockRef],
        branches: Branches,
        windows: Sequence[int],
        keep_trunk: bool = False,
        on_block: BlockObserver | None = None,
    ) -> dict[Hashable, list[torch.Tensor]]:
        """Every branch's last-layer states on ``windows``, one tensor per batch (and the trunk's
        under key ``None`` when ``keep_trunk``); each layer onloaded once. ``on_block(block,
        inputs, outputs)`` sees the trunk's states around each block (one-shot statistics)."""
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

    def per_window(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """Batch tensors split into one [1, T, d] view per window, in window order."""
        return [batch[i : i + 1] for batch in states for i in range(batch.shape[0])]

    @contextmanager
    def head(self) -> Iterator[None]:
        """The final norm and the LM head onloaded (the caller builds its fp32 head inside and
        drops it before leaving, so a streamed run's weights are released)."""
        with self.residency.onloaded(REST, HEAD):
            yield

    @torch.inference_mode()
    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.adapter.final_hidden(self.model, hidden)

    def window_ids(self, window: int) -> torch.Tensor:
        return self.windows[window : window + 1]

    def summary(self) -> dict:
        """What the plan records about how the layers were run."""
        return {
            "streamed": self.streamed,
            "batch_size": self.batch_size,
            "max_memory": self.max_memory,
            "largest_chunk_windows": self.largest_chunk,
            "weight_passes": self.passes,
        }
