"""The layer executor: the one place that runs decoder layers over windows, layer-major.

It owns what every pass over the layers needs: the residency (a part onloaded while it runs,
handed over when final: ``engine/residency.py``), the fixed window batches, the embedding, the
captured layer context, the activation store (states offloaded to the host) and the chunk sizes a
memory budget allows. Three kinds of pass use it:

- *branches* (``run_chunk``): the depth methods' block subsets, below;
- *the trunk alone through whole layers* (``run_layers``): the streamed perplexity, each layer's
  stock forward as in memory;
- *a mutating trunk* (``each_layer`` with ``finalizes``): the width methods' loop
  (``engine/sequential.py``), which prunes each block in place between its statistics and its
  outputs, and hands each layer to the residency's sink once final.

Every depth method asks the same question: what are the hidden states at the end (or at block
boundaries) of the model with some blocks skipped? The executor answers it for a model in
memory and for a streamed one alike: for a *chunk* of windows the layers are taken one after the
other (onloaded once each when streamed) and each layer's blocks are applied to every live
*branch*. A trunk (the current model) carries the windows from the
embeddings; a branch (the trunk minus some blocks) is spawned from the trunk at its first skipped
block, so every branch pays only for the blocks after its spawn point (prefix reuse). At the end
of the chunk the caller gets every branch's final states.

Windows run in fixed *batches* of ``batch_size`` windows ([b, T, d] states): one batch is one
call to each block, so a GPU sees fewer, larger kernels. The batches are the same for the whole
run (window i always sits at the same place of the same batch), so a branch's states do not
depend on when or beside which other branches they were computed: the fast search and the naive
oracle see bit-identical numbers within one run. Across batch sizes sums round differently
(docs/algorithms.md, "Batched windows").

Under many processes (``engine/world.py``) every rank runs a share of the windows, whole batches
of the run's fixed batches, each batch owned by one rank for the whole run (``mine``,
``owner``): the chunks are global (the same sequence on every rank,
``world.size`` times a rank's chunk), each rank runs its share of each chunk, and the callers
gather the per-window values or sum the statistics through ``world`` (the only places where
ranks meet). A window's values are bit-identical whichever rank ran it.

Memory: one decoder layer onloaded at a time when streamed, plus (branches + 2) states per
window of the chunk; ``chunk_windows`` sizes the chunk from a byte budget (``layer_chunk_windows``
for a whole-layer trunk pass: one state per window). What a chunk holds besides its states has one
estimate, ``engine/chunking.chunk_memory``, which the memory model's depth terms use too. The
width loop cannot be chunked (a layer is decided on every window before the next runs): it keeps
every window's states, in the activation store (on the host when the residency offloads them).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby

import torch
from torch import nn

from prunekit.engine.chunking import chunk_memory, chunk_windows_for_budget
from prunekit.engine.layerwise import (
    CalibrationBlocks,
    LayerContext,
    capture_layer_context,
    embed,
    run_block,
    run_layer,
)
from prunekit.engine.residency import Residency, Resident, Streamed
from prunekit.engine.world import SINGLE, World
from prunekit.models.adapters import BlockRef
from prunekit.models.lazy import EMBEDDINGS, HEAD, REST
from prunekit.models.loading import LoadedModel
from prunekit.progress import progress

# States kept at once when no budget is given.
DEFAULT_STATE_BYTES = 1 << 30
# Windows per block call on a GPU when --batch-size is not given: one window of a small model is
# a few kernel launches of little work each, so a step is launch-bound (docs/results/
# gpu_check.md: 3.4-12.4 s per BlockPruner step on an H200 at batch 1).
GPU_BATCH_SIZE = 8


def default_batch_size(
    device: str | torch.device, windows: int, fits: Callable[[int], bool] | None = None
) -> int:
    """The batch size a run gets when none is given: the largest that is at most the device's
    default (1 on a CPU: one window's matmuls already fill the cores, and batch 1 keeps the
    fewest states; ``GPU_BATCH_SIZE`` on a GPU) and the number of windows, and that ``fits``
    (the memory model's verdict under the run's budget: a batch of windows adds activations and
    states), never below 1."""
    on_gpu = torch.device(device).type != "cpu"
    largest = max(1, min(windows, GPU_BATCH_SIZE if on_gpu else 1))
    if fits is None:
        return largest
    return next((size for size in range(largest, 1, -1) if fits(size)), 1)


# A branch: its key and the blocks of the trunk it skips (non-empty).
Branches = Mapping[Hashable, frozenset[BlockRef]]
# Sees the trunk's states (one tensor per batch) before and after each block.
BlockObserver = Callable[[BlockRef, list[torch.Tensor], list[torch.Tensor]], None]


@dataclass(frozen=True)
class ActivationStore:
    """Where states wait between layers: on the compute device, or offloaded to the host (only
    where the compute device is not the host); ``use`` brings one batch back for its block."""

    device: torch.device
    offload: bool = False

    @property
    def on_host(self) -> bool:
        return self.offload and self.device.type != "cpu"

    def keep(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to("cpu") if self.on_host else tensor

    def use(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device) if self.on_host else tensor


class LayerExecutor(CalibrationBlocks):
    """Runs ``loaded`` (in memory, or streamed when ``loaded.residency`` is ``Streamed``) over
    ``windows`` ([n, T] token ids) in batches of ``batch_size``.

    ``max_memory``: the byte budget the chunks of a streamed run fit in (what is resident is
    subtracted); ``state_bytes``: the budget for states alone (default: 1 GiB in memory, or
    what ``max_memory`` leaves). ``residency``: instead of ``loaded.residency``. ``finalizes``:
    the pass's changes are final, so each part is handed to the residency once run (the width
    loop); otherwise a streamed part is read, run and released unchanged. ``windows`` may be
    None for a pass that runs no data (``each_layer`` only).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        windows: torch.Tensor | None,
        batch_size: int = 1,
        max_memory: int | None = None,
        state_bytes: int | None = None,
        residency: Residency | None = None,
        finalizes: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.loaded = loaded
        self.world: World = loaded.world or SINGLE
        self.model = loaded.model
        self.adapter = loaded.adapter
        self.residency: Residency = residency or loaded.residency or Resident()
        self.streamed = isinstance(self.residency, Streamed)
        if self.streamed:
            self.lazy = self.residency.lazy
            self.device = self.lazy.device
            self.dtype = self.lazy.dtype
        else:
            weight = next(self.model.parameters())
            self.device, self.dtype = weight.device, weight.dtype
        self.windows = None if windows is None else windows.to(self.device)
        self.batch_size = batch_size
        self.skip_first = 1 if self.adapter.bos_per_window else 0
        self.layers = self.adapter.layers(self.model)
        self.max_memory = max_memory
        self.state_budget = state_bytes
        self.finalizes = finalizes
        self.store = ActivationStore(
            torch.device(self.device), getattr(self.residency, "offload_activations", False)
        )
        self._context: LayerContext | None = None  # captured with the first embedding
        self.passes = 0  # layer-major passes over the weights (each runs every layer once)
        self.largest_chunk = 0

    @property
    def context(self) -> LayerContext:
        """Each layer's keyword arguments (masks, rotary tables) for this window length."""
        if self._context is None:
            with self.residency.onloaded(EMBEDDINGS, REST):
                self._capture_context()
        return self._context

    def _capture_context(self) -> None:
        # Inside an onload of the embeddings: a streamed run reads them once for both.
        if self._context is None:
            self._context = capture_layer_context(self.model, self.adapter, self.windows[:1])

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
        """Memory besides the states in a streamed run: the largest part onloaded at once and one
        batch's work (``engine/chunking.chunk_memory``, the estimate the memory model uses)."""
        return chunk_memory(self.lazy, self.windows.shape[1], self.batch_size).fixed

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

    def layer_chunk_windows(self) -> int:
        """Windows per chunk of a whole-layer trunk pass (``run_layers``) within ``max_memory``
        (``engine/chunking.py``); every window without a budget (each layer read once)."""
        if self.max_memory is None or not self.streamed:
            return self.num_windows
        length = self.windows.shape[1]
        return chunk_windows_for_budget(
            self.lazy, length, self.batch_size, self.max_memory, self.num_windows
        )

    def chunks(
        self, branches: int, windows: Sequence[int] | None = None, size: int | None = None
    ) -> Iterator[list[int]]:
        """Consecutive windows, whole batches at a time, ``size`` (default
        ``chunk_windows(branches)``) per rank per chunk: every rank gets the same chunks and
        runs its share of each (``mine``)."""
        windows = list(range(self.num_windows)) if windows is None else list(windows)
        size = (size or self.chunk_windows(branches)) * self.world.size
        for start in range(0, len(windows), size):
            chunk = windows[start : start + size]
            self.largest_chunk = max(self.largest_chunk, len(self.mine(chunk)))
            yield chunk

    def mine(self, windows: Sequence[int] | None = None) -> list[int]:
        """This rank's share of ``windows`` (default: all): the whole batches it owns (all of
        them in one process)."""
        windows = list(range(self.num_windows)) if windows is None else list(windows)
        if not self.world.distributed:
            return windows
        return [w for w in windows if self.owner(w) == self.world.rank]

    def owner(self, window: int) -> int:
        """The rank that runs ``window`` in every pass of the run: its batch's index modulo the
        number of ranks. Fixed for the run, so what a rank keeps per window (the KL criteria's
        dense finals) is there whatever the chunking of a later pass; and a global chunk (a
        whole number of batches per rank, starting at a multiple of it) gives every rank the
        same number of batches, the last chunk the first ranks one more."""
        return (window // self.batch_size) % self.world.size

    def batches_of(self, windows: Sequence[int]) -> list[list[int]]:
        """``windows`` split along the run's fixed batches (each batch whole in ``windows``)."""
        grouped = groupby(windows, key=lambda w: w // self.batch_size)
        return [list(group) for _, group in grouped]

    # ---- running --------------------------------------------------------------------------------
    def embed_windows(
        self, windows: Sequence[int] | None = None, stored: bool = False
    ) -> list[torch.Tensor]:
        """Layer-0 inputs, one [b, T, d] tensor per batch of ``windows`` (default: all); with
        ``stored`` each goes to the activation store as it is made. A finalizing pass hands the
        embeddings to the residency (nothing changes them)."""
        windows = range(self.num_windows) if windows is None else windows
        if self.world.distributed:
            self.world.ran.update(windows)
        with self.residency.onloaded(EMBEDDINGS, REST):
            states = self._embed(windows, stored)
            if self.finalizes:
                self.residency.finished(EMBEDDINGS, self.model.get_input_embeddings())
        return states

    @torch.inference_mode()
    def _embed(self, windows: Sequence[int], stored: bool) -> list[torch.Tensor]:
        self._capture_context()
        keep = self.store.keep if stored else (lambda states: states)
        return [
            keep(embed(self.model, self.adapter, self.windows[batch[0] : batch[-1] + 1]))
            for batch in self.batches_of(windows)
        ]

    def each_layer(self, desc: str | None = None) -> Iterator[tuple[int, nn.Module]]:
        """Every decoder layer in order, onloaded while the caller runs it (the mutating trunk:
        the width loop), then handed to the residency as final when the pass ``finalizes``.
        ``desc``: a progress bar's label. Use it under ``contextlib.closing``, so a layer is
        released at once (and not handed over) when the caller fails."""
        indices = range(len(self.layers))
        if desc is not None:
            indices = progress(indices, desc=desc, unit="layer")
        self.passes += 1
        for index in indices:
            layer = self.layers[index]
            with self.residency.onloaded(index):
                yield index, layer
                if self.finalizes:
                    self.residency.finished(index, layer)

    @torch.inference_mode()
    def run_layers(self, windows: Sequence[int]) -> list[torch.Tensor]:
        """The trunk alone: the last layer's states on ``windows``, one tensor per batch, through
        each layer's own stock forward (``run_layer``: the in-memory forward's arithmetic, layer
        for layer); each layer onloaded once. A batch's states are replaced as each layer runs,
        so the chunk's states exist once (plus one batch's output)."""
        hidden = self.embed_windows(windows)
        self.passes += 1
        for index, layer in enumerate(self.layers):
            with self.residency.onloaded(index):
                kwargs = self.context.kwargs[index]
                for i, states in enumerate(hidden):
                    hidden[i] = run_layer(layer, states, kwargs)
        return hidden

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

    def batch_ids(self, windows: Sequence[int]) -> list[torch.Tensor]:
        """Token ids of ``windows``, one [b, T] tensor per batch (as ``embed_windows`` made)."""
        return [self.windows[batch[0] : batch[-1] + 1] for batch in self.batches_of(windows)]

    def summary(self) -> dict:
        """What the plan records about how the layers were run."""
        return {
            "streamed": self.streamed,
            "batch_size": self.batch_size,
            "max_memory": self.max_memory,
            "largest_chunk_windows": self.largest_chunk,
            "weight_passes": self.passes,
        }
