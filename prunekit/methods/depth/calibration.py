"""Calibration windows and a block-by-block runner over them, shared by every depth method.

Every depth score (BlockPruner's ppl after removal, ShortGPT's BI, RM) is a function of hidden
states at block boundaries of the *unmodified* model with some blocks skipped. The runner embeds
each window once, replays the layers' captured forward kwargs, and computes fp32 chunked NLL, so
methods only decide which blocks to run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from prunekit.data import calibration_windows, check_seqlen, corpus_tokens, held_out_windows
from prunekit.engine.layerwise import (
    CalibrationBlocks,
    LayerContext,
    capture_layer_context,
    embed,
    run_block,
)
from prunekit.methods.depth.nll_bound import Fp32Head, VocabSubsetBound, build_bound
from prunekit.methods.registry import PruneSettings
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import LoadedModel

Candidate = tuple[BlockRef, ...]


def settings_windows(loaded: LoadedModel, settings: PruneSettings) -> torch.Tensor:
    """The seeded calibration windows the settings describe ([n_samples, seqlen] token ids)."""
    tokens, bos = _calibration_text(loaded, settings)
    return calibration_windows(tokens, settings.n_samples, settings.seqlen, settings.seed, bos)


def held_out_settings_windows(loaded: LoadedModel, settings: PruneSettings) -> torch.Tensor:
    """As many windows of the same calibration text as ``settings_windows``, none overlapping
    them: a plan restored on the calibration windows is scored on these."""
    tokens, bos = _calibration_text(loaded, settings)
    return held_out_windows(tokens, settings.n_samples, settings.seqlen, settings.seed, bos)


def _calibration_text(
    loaded: LoadedModel, settings: PruneSettings
) -> tuple[torch.Tensor, int | None]:
    """The calibration corpus as one token stream, and the BOS each window starts with (if any)."""
    check_seqlen(settings.seqlen, loaded.model.config)
    tokens = corpus_tokens(loaded.tokenizer, settings.calib)
    bos = loaded.tokenizer.bos_token_id if loaded.adapter.bos_per_window else None
    return tokens, bos


class BlockRunner(CalibrationBlocks):
    """Runs the unmodified model over calibration windows, one block at a time.

    Windows are processed one at a time (batch 1), so a candidate's NLL is bit-identical whether
    its prefix was reused or recomputed (the naive oracle's check relies on that).
    """

    def __init__(self, loaded: LoadedModel, windows: torch.Tensor) -> None:
        self.model = loaded.model
        self.adapter = loaded.adapter
        self.device = next(self.model.parameters()).device
        self.windows = windows.to(self.device)
        self.skip_first = 1 if self.adapter.bos_per_window else 0
        self.context: LayerContext = capture_layer_context(self.model, self.adapter, windows[:1])
        self._embedded: list[torch.Tensor] = [self.embed(w) for w in range(self.num_windows)]
        self.layers = self.adapter.layers(self.model)
        self.head = Fp32Head(self.model, self.adapter)
        self._bound: VocabSubsetBound | None = None  # built on first use (one dense pass)

    @torch.inference_mode()
    def embed(self, window: int) -> torch.Tensor:
        """Hidden state entering layer 0 for one window, computed afresh by the model."""
        return embed(self.model, self.adapter, self.windows[window : window + 1])

    def embedded(self, window: int) -> torch.Tensor:
        """Like :meth:`embed`, computed once at construction."""
        return self._embedded[window]

    @torch.inference_mode()
    def run_block(self, block: BlockRef, hidden: torch.Tensor) -> torch.Tensor:
        layer = self.layers[block.layer]
        return run_block(self.adapter, layer, block.kind, hidden, self.context.kwargs[block.layer])

    @torch.inference_mode()
    def run(self, hidden: torch.Tensor, blocks: Sequence[BlockRef]) -> torch.Tensor:
        for block in blocks:
            hidden = self.run_block(block, hidden)
        return hidden

    @torch.inference_mode()
    def window_nll(self, hidden: torch.Tensor, window: int) -> float:
        """Summed NLL of one window from the hidden state after the last decoder layer.

        The head runs in fp32 (an upcast copy in bf16/fp16 models): candidates' scores differ by
        hundredths of a nat, below what bf16 logits resolve, and the bound needs it.
        """
        final = self.adapter.final_hidden(self.model, hidden)
        return self.head.nll(final, self.windows[window : window + 1], self.skip_first)

    @torch.inference_mode()
    def window_bound(self, hidden: torch.Tensor, window: int) -> float:
        """A lower bound on :meth:`window_nll` at a fraction of its cost (nll_bound.py)."""
        if self._bound is None:
            dense = self.blocks()
            self._bound = build_bound(
                self.head,
                lambda: [
                    self.adapter.final_hidden(self.model, self.run(self.embedded(w), dense))
                    for w in range(self.num_windows)
                ],
                self.skip_first,
            )
        final = self.adapter.final_hidden(self.model, hidden)
        return self._bound.window(final, self.windows[window : window + 1], self.skip_first)

    def reported_nll(self, active: Sequence[BlockRef], loss: float) -> float:
        """The calibration NLL of the model that runs only ``active``, given its search loss
        ``loss`` (here the NLL itself; a divergence runner, criteria.py, recomputes it)."""
        return loss

    def model_nll(self, active: Sequence[BlockRef]) -> list[float]:
        """Per-window NLL of the model that runs only ``active``."""
        return [
            self.window_nll(self.run(self.embedded(w), active), w) for w in range(self.num_windows)
        ]

    @property
    def state_bytes(self) -> int:
        """Bytes of one candidate's last-layer hidden states over all windows."""
        return sum(e.numel() * e.element_size() for e in self._embedded)

    @torch.inference_mode()
    def suffix_finals(
        self,
        active: Sequence[BlockRef],
        candidates: Sequence[Candidate],
        first: Candidate | None = None,
        windows: Sequence[int] | None = None,
    ) -> Iterator[tuple[Candidate, list[torch.Tensor]]]:
        """Each candidate's last-layer hidden states on ``windows`` (default all), with
        ``active`` minus its blocks.

        Prefix reuse: candidates come in position order while one running state per window
        advances through the current model, so each candidate pays only for the blocks after it.
        ``first`` comes before all others, computed from the embeddings (one extra prefix): the
        search settles its likely winner first. Batch 1 makes both paths bit-identical.
        """
        windows = range(self.num_windows) if windows is None else windows
        if first is not None:
            rest = [b for b in active if b not in first]
            yield first, [self.run(self.embedded(w), rest) for w in windows]
        position = {block: i for i, block in enumerate(active)}
        others = [c for c in candidates if c != first]
        ordered = sorted(others, key=lambda c: (min(position[b] for b in c), c))
        states = [self.embedded(w) for w in windows]
        at = 0
        for candidate in ordered:
            start = min(position[b] for b in candidate)
            states = [self.run(state, active[at:start]) for state in states]
            at = start
            rest = [b for b in active[start:] if b not in candidate]
            yield candidate, [self.run(state, rest) for state in states]
