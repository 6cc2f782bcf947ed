"""The sequential layer-by-layer calibration loop shared by every width method (SparseGPT-style).

A driver on the layer executor (``engine/executor.py``), which owns the residency, the window
batches, the embedding, the layer context and the activation store; this module adds only what
is the width methods': the recording hooks, the decision, and the replay of a pruned block.

Layer-0 inputs of the calibration windows are captured once; then each decoder layer is
processed block by block (attention, then MLP): forward pre-hooks on the modules a method
watches accumulate running statistics of their inputs (``InputStatistics``), the method decides
(and prunes the block in place), and the *pruned* block's outputs become the next block's inputs.
Only the windows' hidden states are kept between blocks; activations inside a block are reduced
to statistics as they stream past, never stored. The kept states (and the o_proj inputs an
attention replay needs) live on the compute device, or on the host when the residency says
``offload_activations`` (the executor's ``ActivationStore``): then each batch visits the
device for its block only.
"""

from __future__ import annotations

import itertools
from contextlib import closing
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from prunekit.engine.executor import ActivationStore, LayerExecutor
from prunekit.engine.memory_terms import (
    ALWAYS,
    ATTENTION,
    EMBEDDING,
    LM_HEAD,
    MLP,
    MemorySettings,
    MemoryTerm,
    PassMemory,
    layer_context_term,
)
from prunekit.engine.residency import Residency
from prunekit.engine.world import World
from prunekit.errors import NumericalError
from prunekit.models.adapters import BLOCK_KINDS, BlockKind, BlockRef
from prunekit.models.loading import LoadedModel
from prunekit.models.precision import fp32_accumulated_matmul
from prunekit.models.shapes import ModelShapes


class InputStatistics:
    """Running statistics of one module's input columns over every calibration token.

    Without ``gram``: ``sum`` and ``sum_sq`` (fp64) give means, variances and column norms.
    With ``gram``: only H = XᵀX (fp32), whose diagonal is ``sum_sq``; it costs as much as the
    module's own matmul, so only least-squares restoration asks for it. Inputs in bf16 (fp16 on
    CUDA) are multiplied on the low-precision units with fp32 accumulation (``precision.
    fp32_accumulated_matmul``): their products are exact in either format, so H is as precise as
    from an IEEE fp32 product, about 3× faster on an AMX CPU. ``fast_products=False`` forces
    IEEE fp32 (the reference the tests compare against).
    """

    def __init__(
        self,
        width: int,
        gram: bool,
        device: torch.device | str = "cpu",
        fast_products: bool = True,
    ):
        self.width = width
        self.fast_products = fast_products
        self.count = 0
        self._gram = torch.zeros(width, width, device=device) if gram else None
        self._mirrored = True
        self._blocks = _triangle_blocks(width)
        self.sum = None if gram else torch.zeros(width, dtype=torch.float64, device=device)
        self._sum_sq = None if gram else torch.zeros(width, dtype=torch.float64, device=device)

    def add_batch(self, inputs: torch.Tensor) -> None:
        x = inputs.reshape(-1, self.width).float()
        self.count += x.shape[0]
        if self._gram is not None:
            source = inputs.dtype if self.fast_products else torch.float32
            with fp32_accumulated_matmul(source, x.device):
                # H is symmetric: only the blocks on and above the diagonal are accumulated
                # (2/3 of the work at 3 blocks, ~1/2 for wide inputs); ``gram`` mirrors them.
                for rows, cols in self._blocks:
                    self._gram[rows, cols].addmm_(x[:, rows].T, x[:, cols])
            self._mirrored = False
            return
        self.sum += x.sum(dim=0, dtype=torch.float64)
        self._sum_sq += x.square().sum(dim=0, dtype=torch.float64)

    @property
    def gram(self) -> torch.Tensor | None:
        """H = XᵀX (fp32), or None when the method did not ask for it."""
        if self._gram is not None and not self._mirrored:
            for rows, cols in self._blocks:
                if rows != cols:
                    self._gram[cols, rows] = self._gram[rows, cols].T
                else:
                    # A diagonal block is one full GEMM, and a kernel may sum entry (i, j) in
                    # another order than (j, i) (AVX2 CPUs do: they differ in the last bit).
                    # Its upper triangle is mirrored too, so H is exactly symmetric everywhere.
                    block = self._gram[rows, cols]
                    block.copy_(block.triu() + block.triu(1).T)
            self._mirrored = True
        return self._gram

    @property
    def sum_sq(self) -> torch.Tensor:
        return self.gram.diagonal().double() if self._gram is not None else self._sum_sq

    def _column_sums(self) -> torch.Tensor:
        if self.sum is None:
            raise ValueError("means are not tracked alongside a Gram matrix")
        return self.sum

    @property
    def mean(self) -> torch.Tensor:
        return self._column_sums() / max(self.count, 1)

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased per-column variance over tokens."""
        n = max(self.count, 2)
        return ((self.sum_sq - self._column_sums().square() / n) / (n - 1)).clamp_min(0.0)

    @property
    def norm(self) -> torch.Tensor:
        """‖X_j‖₂ per column."""
        return self.sum_sq.sqrt()

    def add_ranks(self, world: World) -> None:
        """Add the other ranks' statistics to this rank's (``engine/world.py``): every rank then
        holds the sums over every window, in the same bits."""
        if not world.distributed:
            return
        self.count = world.sum_int(self.count)
        for total in (self._gram, self.sum, self._sum_sq):
            if total is not None:
                world.sum_(total)
        if self._gram is not None:
            # The sum holds the other ranks' upper blocks: mirror them (a rank that ran no
            # window never accumulated, and would read the lower blocks as zeros).
            self._mirrored = False

    def check_finite(self, name: str) -> None:
        # A NaN/Inf input shows on the diagonal (its column's sum of squares), and by
        # Cauchy-Schwarz |H_ij| <= sqrt(H_ii H_jj) the rest of H is finite when it is.
        if not bool(torch.isfinite(self.sum_sq).all()):
            raise NumericalError(
                f"the calibration inputs of {name} contain NaN or Inf; try --dtype fp32 or "
                "other calibration text"
            )


@dataclass(frozen=True)
class ConsumerOnly:
    """A decision that changed an attention block only through its consumer (o_proj): its
    input columns ``kept`` (in their new order) survive, and the weights may be rewritten.

    The kept columns of the consumer's input are what the dense block computed (Q and K are
    untouched, value channels are sliced, not changed), so the engine replays the pruned block
    from the inputs it recorded instead of running attention again.
    """

    name: str
    kept: list[int]


class SequentialMethod(Protocol):
    """What a width method plugs into the loop: its statistic and its decision.

    ``changes_blocks``: the method prunes every block it watches, so the dense block's output
    is never used (the statistics pass may stop at the consumer's input).
    """

    needs_gram: bool
    changes_blocks: bool

    def watched(self, layer: nn.Module, kind: BlockKind) -> dict[str, nn.Module]:
        """Modules of this block whose inputs to record, by name ({} = skip the block)."""
        ...

    def decide(
        self, index: int, layer: nn.Module, kind: BlockKind, stats: dict[str, InputStatistics]
    ) -> bool | ConsumerOnly:
        """Prune the block in place (or only record). True when the block's outputs changed,
        ``ConsumerOnly`` when only an attention block's consumer did (a cheaper replay)."""
        ...


@torch.no_grad()  # not inference_mode: the sliced weights must stay ordinary parameters
def sequential_pass(
    loaded: LoadedModel,
    windows: torch.Tensor,
    method: SequentialMethod,
    batch_size: int = 1,
    replay_consumers: bool = True,
    residency: Residency | None = None,
    finalizes: bool = True,
) -> int:
    """Run the calibration windows through the model block by block, letting ``method`` prune.

    Returns the number of calibration tokens each statistic saw. Blocks the method leaves
    unchanged reuse the outputs of the statistics pass, so a method that only records (FLAP)
    costs one calibration pass; attention blocks changed only through o_proj (``ConsumerOnly``)
    are replayed from o_proj's recorded inputs (``replay_consumers=False`` reruns them: tests).
    ``residency`` (default: ``loaded.residency``, else in memory) onloads each part before it
    runs and is told when a layer is final, so a streamed model holds one layer at a time.
    ``finalizes=False``: a pass that only records (a cost probe, FLAP's scores) over the dense
    model; no layer is final after it, so a streamed layer is read, measured and released,
    never handed to the sink.
    ``batch_size`` windows go through a block at a time: the statistics are the same sums in
    another order (docs/algorithms.md, "Batched statistics").
    """
    executor = LayerExecutor(loaded, windows, batch_size, residency=residency, finalizes=finalizes)
    # Under many processes each rank runs its share of the windows; the statistics are summed
    # over the ranks before every decision, so every rank decides the same.
    hidden = executor.embed_windows(executor.mine(), stored=True)
    with closing(executor.each_layer(desc="calibrate+prune")) as layers:
        for index, _layer in layers:
            final = index == len(executor.layers) - 1
            hidden = _process_layer(executor, index, hidden, method, final, replay_consumers)
    return windows.numel()


def _process_layer(
    executor: LayerExecutor,
    index: int,
    hidden: list[torch.Tensor],
    method: SequentialMethod,
    final_layer: bool,
    replay_consumers: bool,
) -> list[torch.Tensor]:
    """Statistics, decision and outputs of one layer's blocks; returns the next layer's inputs
    (nothing for the last layer: no one reads them)."""
    adapter, store = executor.adapter, executor.store
    layer = executor.layers[index]
    kinds = [k for k in BLOCK_KINDS if adapter.has_block(layer, k)]
    for kind in kinds:
        block = BlockRef(index, kind)
        watched = method.watched(layer, kind)
        final = final_layer and kind == kinds[-1]  # nothing reads the last block's outputs
        if final and not watched:
            break
        stats = {
            name: InputStatistics(module.weight.shape[1], method.needs_gram, module.weight.device)
            for name, module in watched.items()
        }
        inputs: dict[str, list[torch.Tensor]] = {name: [] for name in watched}
        # A block the method will change is recomputed after the decision anyway, so the
        # statistics pass stops at the consumer's input: the dense consumer (a quarter of
        # the block's work for an MLP) never runs. An attention block's consumer input (the
        # size of a hidden state) is kept for the replay.
        stop = (method.changes_blocks or final) and len(watched) == 1
        keep_inputs = kind == "attn" and method.changes_blocks and replay_consumers and not final
        handles = [
            module.register_forward_pre_hook(
                _recorder(stats[name], inputs[name] if keep_inputs else None, stop, store)
            )
            for name, module in watched.items()
        ]
        try:
            outputs = None if stop else []
            for h in hidden:
                try:
                    out = executor.run_block(block, store.use(h))
                except _StopBlock:
                    continue
                if outputs is not None:
                    outputs.append(store.keep(out))
        finally:
            for handle in handles:
                handle.remove()
        for name, stat in stats.items():
            stat.add_ranks(executor.world)
            stat.check_finite(f"layer {index} {name}")
        change = method.decide(index, layer, kind, stats) if watched else False
        if final:
            break  # no rerun, no replay
        if isinstance(change, ConsumerOnly) and keep_inputs:
            consumer, kept = watched[change.name], change.kept
            outputs = [
                store.keep(
                    store.use(h)
                    + adapter.attn_from_o_proj(layer, consumer(store.use(x)[..., kept]))
                )
                for h, x in zip(hidden, inputs[change.name], strict=True)
            ]
        elif change or outputs is None:
            outputs = [store.keep(executor.run_block(block, store.use(h))) for h in hidden]
        hidden = outputs
    return [] if final_layer else hidden


@torch.no_grad()
def prune_without_data(
    loaded: LoadedModel, method: SequentialMethod, residency: Residency | None = None
) -> None:
    """The same per-block decisions for methods that need no statistics: magnitude, and the
    apply pass of a method that decided globally after a recording pass (FLAP)."""
    executor = LayerExecutor(loaded, None, residency=residency, finalizes=True)
    with closing(executor.each_layer()) as layers:
        for index, layer in layers:
            for kind in BLOCK_KINDS:
                if executor.adapter.has_block(layer, kind) and method.watched(layer, kind):
                    method.decide(index, layer, kind, {})


GRAM_BLOCK = 384  # columns per block of the triangular Gram update (measured best on 576/1536)


def _triangle_blocks(width: int) -> list[tuple[slice, slice]]:
    """(rows, columns) slices of the blocks on and above the diagonal of a width×width matrix."""
    count = max(1, round(width / GRAM_BLOCK))
    edges = [round(i * width / count) for i in range(count + 1)]
    spans = [slice(a, b) for a, b in itertools.pairwise(edges)]
    return [(spans[i], spans[j]) for i in range(count) for j in range(i, count)]


class _StopBlock(Exception):
    """Raised by a recording hook once the block's remaining work is not needed."""


def _recorder(
    stat: InputStatistics,
    keep: list[torch.Tensor] | None,
    stop: bool,
    store: ActivationStore,
):
    def hook(_module: nn.Module, args: tuple) -> None:
        stat.add_batch(args[0])
        if keep is not None:
            keep.append(store.keep(args[0]))
        if stop:
            raise _StopBlock

    return hook


# ---- memory terms (engine/memory_terms.py) -------------------------------------------------------
# The width loop holds one layer at a time (streamed) and writes each as it is final.
WIDTH_LAYER_PHASES = (ATTENTION, MLP)
WIDTH_SINK_PHASES = (EMBEDDING, ATTENTION, MLP, LM_HEAD)
COST_CURVE_SPARSITY = 0.125  # methods.width.allocation.CURVE_SPARSITIES[0]: its widest restore


def statistics_terms(s: ModelShapes, settings: MemorySettings) -> list[MemoryTerm]:
    """``sequential_pass`` with statistics: every window's hidden states (n_samples × seqlen ×
    hidden, in the compute dtype), twice while a block runs (its inputs and its outputs), in the
    activation store (the host when offloaded: one batch's inputs and outputs then visit the
    device); the layer context; one batch through one block (``block_activation_bytes``)."""
    b, compute = settings.item, settings.compute
    tokens, batch_tokens = (
        settings.n_samples * settings.seqlen,
        settings.batch_size * settings.seqlen,
    )
    state = tokens * s.hidden_size * b
    states = _store_where(settings)
    terms = [
        MemoryTerm("calibration states (in)", state, states, ALWAYS, "N×T×hidden"),
        MemoryTerm("calibration states (out)", state, states, ATTENTION, "next inputs"),
        MemoryTerm("calibration states (out)", state, states, MLP, "next inputs"),
        layer_context_term(s, settings),
    ]
    if states != compute:
        batch = 2 * batch_tokens * s.hidden_size * b
        for phase in WIDTH_LAYER_PHASES:
            terms.append(MemoryTerm("one batch's states", batch, compute, phase, "in and out"))
    for phase in WIDTH_LAYER_PHASES:
        activations = block_activation_bytes(s, phase, batch_tokens, b)
        terms.append(MemoryTerm("block activations", activations, compute, phase, "one batch"))
    return terms


def replay_terms(s: ModelShapes, settings: MemorySettings) -> list[MemoryTerm]:
    """A pass that prunes each block before its outputs (``changes_blocks``) keeps the o_proj
    inputs of every window of an attention block it targets, for the replay (N × T × num_heads ×
    head_dim), in the activation store."""
    if "attn" not in settings.targets:
        return []
    kept = settings.n_samples * settings.seqlen * s.attn_width * settings.item
    return [
        MemoryTerm(
            "o_proj inputs (replay)", kept, _store_where(settings), ATTENTION, "N×T×heads·hd"
        )
    ]


def restoration_terms(s: ModelShapes, settings: MemorySettings) -> list[MemoryTerm]:
    """Least-squares restoration, one targeted block at a time: the fp32 Gram matrix width² of
    the consumer's input (``InputStatistics`` with ``gram``; down_proj: intermediate_size,
    o_proj: num_heads × head_dim) and the solve (``restoration_solve_bytes``). FASP's cost pass
    (its default allocation) restores at up to 7/8 of the width, whatever the target."""
    terms = []
    widths = {ATTENTION: (s.attn_width, "attn"), MLP: (s.intermediate_size, "mlp")}
    for phase, (width, target) in widths.items():
        if target not in settings.targets:
            continue
        kept = round((1.0 - min(settings.sparsity, COST_CURVE_SPARSITY)) * width)
        solve = restoration_solve_bytes(s.hidden_size, width, kept, settings.item)
        terms.append(
            MemoryTerm(
                "Gram matrix (fp32)", 4 * width * width, settings.compute, phase, f"{width}²"
            )
        )
        terms.append(
            MemoryTerm("restoration solve", solve, settings.compute, phase, "fp32 Cholesky")
        )
        if settings.nproc > 1 and not settings.on_gpu:
            # World.sum_ reduces the Gram matrix in place; gloo's reduction works on a copy of
            # it (nccl reduces on the GPU within its own fixed buffers).
            terms.append(
                MemoryTerm("Gram sum over ranks", 4 * width * width, "host", phase, "gloo copy")
            )
    return terms


def slicing_terms(s: ModelShapes, settings: MemorySettings) -> list[MemoryTerm]:
    """Pruning a block builds its sliced weights while the dense ones still exist (and FASP
    clones the consumer before writing the restored columns): the kept part of the block plus
    one consumer matrix."""
    keep, b = 1.0 - settings.sparsity, settings.item
    sizes = {
        ATTENTION: int(keep * s.attn_params * b) + s.hidden_size * s.attn_width * b,
        MLP: int(keep * s.mlp_params * b) + s.hidden_size * s.intermediate_size * b,
    }
    return [
        MemoryTerm("slicing copies", size, settings.compute, phase, "kept block + consumer")
        for phase, size in sizes.items()
    ]


def block_activation_bytes(s: ModelShapes, phase: str, batch_tokens: int, b: int) -> int:
    """One batch through one block: for the MLP the gate, up, activation and product
    (4 × batch·seqlen·intermediate_size), plus the fp32 copy the Gram update makes below fp32;
    for attention q, k, v and their rotated copies."""
    if phase == MLP:
        gram_copy = batch_tokens * s.intermediate_size * 4 if b < 4 else 0
        return 4 * batch_tokens * s.intermediate_size * b + gram_copy
    qkv = (s.num_heads + 2 * s.num_kv_heads) * s.head_dim
    return 2 * batch_tokens * qkv * b


def restoration_solve_bytes(out: int, width: int, kept: int, b: int) -> int:
    """``methods.width.restoration.restore_consumer`` for an out × in consumer keeping k
    columns: W·H (fp32, out·in), H[S,S] and its Cholesky factor (2 × 4k²), the right-hand side,
    solution and the solver's transposed copy (3 × 4·out·k), W[:, S] (out·k) and, below fp32,
    the fp32 copy of W. All fp32: the solve runs in fp32 wherever the damping bounds κ ≤ 1e4
    (κ 100–3,700 on SmolLM2 at the default damping). Its fp64 fallback for ill-conditioned
    systems doubles the last five terms; the model does not size that rare case (sizing it put
    the streamed prediction 21–26 % above the measured peak)."""
    w_copy = 4 * out * width if b < 4 else 0
    return 4 * out * width + 8 * kept * kept + 12 * out * kept + 4 * out * kept + w_copy


def _store_where(settings: MemorySettings) -> str:
    """Where the activation store keeps states: the host when offloaded (GPU only)."""
    return "host" if settings.offload_activations and settings.on_gpu else settings.compute


STATISTICS_MEMORY = PassMemory(statistics_terms, WIDTH_LAYER_PHASES, WIDTH_SINK_PHASES)
REPLAY_MEMORY = PassMemory(replay_terms, WIDTH_LAYER_PHASES, WIDTH_SINK_PHASES)
RESTORATION_MEMORY = PassMemory(restoration_terms, WIDTH_LAYER_PHASES, WIDTH_SINK_PHASES)
SLICING_MEMORY = PassMemory(slicing_terms, WIDTH_LAYER_PHASES, WIDTH_SINK_PHASES)
