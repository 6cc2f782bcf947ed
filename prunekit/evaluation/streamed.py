"""Perplexity of a model that never sits in memory: layer by layer, from its safetensors shards.

The windows, the fp32 LM head and the NLL are the in-memory ``perplexity``'s (docs/protocol.md,
"Perplexity"); only the order of work differs: the layer executor (``prunekit.engine.executor``,
``run_layers``) applies each layer's stock forward to a chunk of windows at once, reading the layer
from disk once per chunk. The chunk is as large as the memory budget allows
(``engine/chunking.py``), so a budget that holds every window's hidden states reads each layer
exactly once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch

from prunekit.data import check_seqlen, corpus_source, corpus_tokens, eval_windows
from prunekit.engine.executor import LayerExecutor
from prunekit.engine.residency import Streamed
from prunekit.errors import SettingsError
from prunekit.evaluation.nll import eval_logits_fn, nll_from_final_hidden
from prunekit.evaluation.perplexity import PerplexityResult
from prunekit.models.loading import LoadedModel
from prunekit.progress import progress

# What a chunk hands to ``_NllTotal``: (a batch's first window, its token ids, its final states).
FinalBatches = Iterator[tuple[int, torch.Tensor, torch.Tensor]]


class _NllTotal:
    """Sums token NLL over the chunks the engine hands over, exactly as ``windows_nll`` does:
    one sum per batch, added in batch order at the end (after the other ranks' batches are
    gathered, under many processes)."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.skip = 1 if loaded.adapter.bos_per_window else 0
        self.batch_sums: dict[int, float] = {}  # by the batch's first window
        self.count = 0
        self.head = "fp32"

    def __call__(self, chunk: FinalBatches) -> None:
        model, adapter = self.loaded.model, self.loaded.adapter
        # Built per chunk: the head is onloaded only while the chunk's batches are consumed.
        logits_fn, self.head = eval_logits_fn(model, adapter)
        for first, batch, final in chunk:
            nll = nll_from_final_hidden(
                model, adapter, final, batch, skip_first=self.skip, logits_fn=logits_fn
            )
            self.batch_sums[first] = nll.sum().item()

    def finish(self, executor: LayerExecutor) -> None:
        batches = range(0, executor.num_windows, executor.batch_size)  # each batch's first window
        self.total = 0.0
        for value in executor.world.ordered(self.batch_sums, batches):
            self.total += value
        self.count = executor.num_windows * (executor.windows.shape[1] - 1 - self.skip)


def _final_batches(
    executor: LayerExecutor, windows: list[int], hidden: list[torch.Tensor]
) -> FinalBatches:
    """(first window, ids, final hidden) per batch of ``windows``, made as the consumer iterates;
    each batch's pre-norm states are dropped once normed (they are not needed again)."""
    batches = executor.batches_of(windows)
    for i, (batch, ids) in enumerate(zip(batches, executor.batch_ids(windows), strict=True)):
        states, hidden[i] = hidden[i], None
        yield batch[0], ids, executor.final_hidden(states)


def streamed_residency(loaded: LoadedModel) -> Streamed:
    """The model's ``Streamed`` residency, or a one-line error for a model in memory."""
    if not isinstance(loaded.residency, Streamed):
        raise SettingsError(
            "streamed perplexity needs a lazily loaded model (prunekit.api.open_streamed)"
        )
    return loaded.residency


@torch.inference_mode()
def perplexity_streamed(
    loaded: LoadedModel,
    dataset: str = "wikitext2",
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    max_memory: int | None = None,
) -> PerplexityResult:
    """``perplexity`` of a lazily loaded model, layer by layer.

    ``max_memory`` (bytes) bounds what the pass holds on the compute device (chunk size from
    ``LayerExecutor.layer_chunk_windows``); None puts every window in one chunk (each layer read
    once).
    """
    residency = streamed_residency(loaded)
    check_seqlen(seqlen, loaded.model.config)
    tokens = corpus_tokens(loaded.tokenizer, dataset)
    bos = loaded.tokenizer.bos_token_id if loaded.adapter.bos_per_window else None
    windows = eval_windows(tokens, seqlen, max_windows, bos_token_id=bos)
    count = windows.shape[0]
    started = time.perf_counter()
    nll, chunk = _streamed_nll_total(loaded, windows, residency, batch_size, max_memory)
    ranks = loaded.world.size if loaded.world is not None else 1
    chunks = -(-count // (chunk * ranks))  # each chunk: a rank's share on every rank
    return PerplexityResult(
        dataset=dataset,
        ppl=math.exp(nll.total / nll.count),
        nll_sum=nll.total,
        tokens=nll.count,
        windows=count,
        seqlen=seqlen,
        max_windows=max_windows,
        bos_per_window=bos is not None,
        source=corpus_source(dataset),
        seconds=time.perf_counter() - started,
        nll_head=nll.head,
        streamed={"chunk_windows": chunk, "chunks": chunks, "max_memory": max_memory},
    )


@torch.inference_mode()
def streamed_windows_nll(
    loaded: LoadedModel,
    windows: torch.Tensor,
    residency: Streamed | None = None,
    batch_size: int = 1,
    max_memory: int | None = None,
) -> tuple[float, int]:
    """``perplexity.windows_nll`` of a lazily loaded model (total NLL, predicted tokens), layer
    by layer; ``residency`` instead of the model's own."""
    nll, _ = _streamed_nll_total(
        loaded, windows, residency or streamed_residency(loaded), batch_size, max_memory
    )
    return nll.total, nll.count


def _streamed_nll_total(
    loaded: LoadedModel,
    windows: torch.Tensor,
    residency: Streamed,
    batch_size: int,
    max_memory: int | None,
) -> tuple[_NllTotal, int]:
    """The NLL summed over ``windows`` in chunks of the size ``max_memory`` allows (and that
    size)."""
    executor = LayerExecutor(loaded, windows, batch_size, max_memory, residency=residency)
    chunk = executor.layer_chunk_windows()
    nll = _NllTotal(loaded)
    chunks = list(executor.chunks(0, size=chunk))
    for windows_of_chunk in progress(chunks, desc="layer-major forward", unit="chunk"):
        mine = executor.mine(windows_of_chunk)  # under many processes, this rank's share
        hidden = executor.run_layers(mine)
        with executor.head():
            nll(_final_batches(executor, mine, hidden))
        del hidden
    nll.finish(executor)
    return nll, chunk
