"""Perplexity exactly as docs/protocol.md, "Perplexity", defines it."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from prunekit.data import check_seqlen, corpus_source, corpus_tokens, eval_windows
from prunekit.engine.world import SINGLE
from prunekit.evaluation.nll import LogitsFn, eval_logits_fn, nll_from_final_hidden
from prunekit.models.loading import LoadedModel
from prunekit.progress import progress


@dataclass
class PerplexityResult:
    dataset: str
    ppl: float
    nll_sum: float
    tokens: int
    windows: int
    seqlen: int
    max_windows: int | None
    bos_per_window: bool
    source: str
    seconds: float
    # "fp32": the LM head itself ran in fp32; "model": the model's own head (an adapter with a
    # custom head), only the log-softmax in fp32.
    nll_head: str = "fp32"
    # Layer by layer (``perplexity_streamed``): windows per chunk, chunks, the budget in bytes.
    streamed: dict | None = None

    def to_dict(self) -> dict:
        record = asdict(self)
        if record["streamed"] is None:
            del record["streamed"]  # in-memory results keep their schema
        return record


@torch.inference_mode()
def windows_nll(
    loaded: LoadedModel,
    windows: torch.Tensor,
    batch_size: int = 1,
    desc: str | None = None,
    logits_fn: LogitsFn | None = None,
) -> tuple[float, int]:
    """Total NLL and predicted-token count over ``windows`` with the model's own forward.

    The LM head runs in fp32 (``eval_logits_fn``) unless ``logits_fn`` says otherwise. Under
    many processes (``loaded.world``) each rank runs its share of the batches and the batch sums
    are gathered, then added in batch order on every rank: the one-process total, bit for bit.
    """
    model, adapter = loaded.model, loaded.adapter
    world = loaded.world or SINGLE
    if logits_fn is None:
        logits_fn, _ = eval_logits_fn(model, adapter)
    decoder = adapter.decoder(model)
    skip = 1 if adapter.bos_per_window else 0
    starts = list(range(0, windows.shape[0], batch_size))
    mine = world.share(starts)
    sums: dict[int, float] = {}
    for start in progress(mine, desc=desc, total=len(mine), unit="batch"):
        batch = windows[start : start + batch_size].to(loaded.device)
        hidden = decoder(input_ids=batch, use_cache=False).last_hidden_state
        sums[start] = (
            nll_from_final_hidden(
                model, adapter, hidden, batch, skip_first=skip, logits_fn=logits_fn
            )
            .sum()
            .item()
        )
    total = 0.0
    for value in world.ordered(sums, starts):
        total += value
    count = windows.shape[0] * (windows.shape[1] - 1 - skip)
    return total, count


def perplexity(
    loaded: LoadedModel,
    dataset: str = "wikitext2",
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
) -> PerplexityResult:
    """exp(mean NLL) over floor(n / seqlen) non-overlapping windows of the tokenized test text."""
    check_seqlen(seqlen, loaded.model.config)
    tokens = corpus_tokens(loaded.tokenizer, dataset)
    bos = loaded.tokenizer.bos_token_id if loaded.adapter.bos_per_window else None
    windows = eval_windows(tokens, seqlen, max_windows, bos_token_id=bos)
    started = time.perf_counter()
    logits_fn, head = eval_logits_fn(loaded.model, loaded.adapter)
    nll, count = windows_nll(loaded, windows, batch_size, f"ppl {dataset}", logits_fn)
    return PerplexityResult(
        dataset=dataset,
        ppl=math.exp(nll / count),
        nll_sum=nll,
        tokens=count,
        windows=windows.shape[0],
        seqlen=seqlen,
        max_windows=max_windows,
        bos_per_window=bos is not None,
        source=corpus_source(dataset),
        seconds=time.perf_counter() - started,
        nll_head=head,
    )
