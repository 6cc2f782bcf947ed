"""The real SmolLM2 evaluated layer by layer from its (dequantized GGUF) shards: the in-memory
perplexity, window for window, in several chunks."""

from __future__ import annotations

import pytest

from prunekit.api import open_streamed
from prunekit.engine.chunking import chunk_memory
from prunekit.evaluation.perplexity import perplexity
from prunekit.evaluation.streamed import perplexity_streamed

pytestmark = [pytest.mark.real, pytest.mark.usefixtures("data_dir")]

SEQLEN, WINDOWS, BATCH = 128, 4, 2


def test_streamed_perplexity_equals_in_memory(smollm2_fp32, data_dir, tmp_path):
    # The start of WikiText-2's test text: tokenizing all of it (twice) would take longer
    # than the evaluation.
    text = tmp_path / "wiki.txt"
    text.write_text((data_dir / "corpora" / "wikitext2_test.txt").read_text()[:20_000])
    expected = perplexity(smollm2_fp32, str(text), SEQLEN, WINDOWS, BATCH)
    streamed = open_streamed("smollm2-135m", dtype="fp32", device="cpu")
    memory = chunk_memory(streamed.residency.lazy, SEQLEN, BATCH)
    budget = memory.fixed + BATCH * memory.per_window  # two chunks of one batch each
    got = perplexity_streamed(streamed, str(text), SEQLEN, WINDOWS, BATCH, max_memory=budget)
    assert got.streamed["chunks"] == WINDOWS // BATCH
    assert got.tokens == expected.tokens
    assert got.nll_sum == pytest.approx(expected.nll_sum, rel=1e-5)
    # The budget is far below the model: streaming is what made it fit.
    assert budget < streamed.residency.lazy.part_bytes(*streamed.residency.lazy.parts)
