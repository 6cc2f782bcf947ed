"""The width loop and the streamed perplexity on the one executor: what the executor owns
(residency, embedding, layer context) behaves the same for every kind of pass.

Plans, weights and perplexities are compared with the in-memory runs in test_width_parity.py and
test_streamed_eval.py; these tests pin what the executor adds: a failing width pass releases its
layer and hands nothing over, and the embeddings are read once per pass (the layer context is
captured with the first embedding).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.api import lazy_loaded
from prunekit.engine.executor import LayerExecutor
from prunekit.engine.residency import Streamed
from prunekit.engine.sequential import sequential_pass
from prunekit.models.lazy import EMBEDDINGS, LazyModel, Part
from prunekit.models.tiny import TINY_VOCAB, tiny_model, tiny_tokenizer

WINDOWS, SEQLEN = 2, 16


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("executor") / "llama"
    tiny_model("llama").save_pretrained(directory, max_shard_size="50KB")
    tiny_tokenizer().save_pretrained(directory)
    return directory


def streamed(source: Path, sink=None):
    lazy = LazyModel.open(str(source), dtype="fp32", device="cpu")
    loaded = lazy_loaded(lazy, str(source))
    loaded.residency = Streamed(lazy, sink)
    return loaded, lazy


def windows() -> torch.Tensor:
    return torch.randint(
        0, TINY_VOCAB, (WINDOWS, SEQLEN), generator=torch.Generator().manual_seed(0)
    )


class RecordsMlp:
    """A width method that records the MLP consumer's inputs and fails at layer ``fail_at``."""

    needs_gram = False
    changes_blocks = False

    def __init__(self, adapter, fail_at: int | None = None):
        self.adapter = adapter
        self.fail_at = fail_at
        self.decided: list[int] = []

    def watched(self, layer: nn.Module, kind: str) -> dict[str, nn.Module]:
        return {"mlp": self.adapter.mlp_channels(layer).consumer} if kind == "mlp" else {}

    def decide(self, index, layer, kind, stats) -> bool:
        if index == self.fail_at:
            raise RuntimeError("decision failed")
        self.decided.append(index)
        return False


def test_a_failing_width_pass_releases_its_layer_and_hands_it_nothing(source):
    handed: list[Part] = []
    loaded, lazy = streamed(source, lambda part, module: handed.append(part))
    method = RecordsMlp(loaded.adapter, fail_at=1)
    with pytest.raises(RuntimeError, match="decision failed") as failure:
        sequential_pass(loaded, windows(), method, batch_size=2)
    # The exception (and its traceback, which holds the pass's frames) is still alive here: the
    # layer it failed in must be released all the same, and not written as if final.
    assert failure.value is not None
    assert method.decided == [0]
    assert handed == [EMBEDDINGS, 0]
    assert lazy.onloaded_bytes() == 0


def test_each_pass_reads_the_embeddings_once(source, monkeypatch):
    loaded, lazy = streamed(source)
    reads: list[Part] = []
    onload = lazy.onload
    monkeypatch.setattr(lazy, "onload", lambda *parts: (reads.extend(parts), onload(*parts)))
    method = RecordsMlp(loaded.adapter)
    sequential_pass(loaded, windows(), method, batch_size=1, finalizes=False)
    assert method.decided == list(range(lazy.num_layers))
    assert reads.count(EMBEDDINGS) == 1
    assert [reads.count(i) for i in range(lazy.num_layers)] == [1] * lazy.num_layers

    reads.clear()
    executor = LayerExecutor(loaded, windows(), batch_size=1)
    finals = [executor.run_layers(chunk) for chunk in executor.chunks(0, size=1)]
    assert reads.count(EMBEDDINGS) == WINDOWS  # one chunk per window, the context with the first
    assert [reads.count(i) for i in range(lazy.num_layers)] == [WINDOWS] * lazy.num_layers
    assert [len(f) for f in finals] == [1] * WINDOWS
    assert lazy.onloaded_bytes() == 0
