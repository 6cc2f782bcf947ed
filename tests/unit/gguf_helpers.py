"""Run a GGUF file in a real llama.cpp (llama-cpp-python) for the GGUF export tests.

``make test`` installs the llama-cpp-python wheel (built once into ~/.cache/prunekit/wheels,
see the Makefile's ``llama-cpp`` target). In CI (``CI`` set) a missing llama.cpp fails the
tests; elsewhere they are skipped with the command that installs it.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager

import gguf
import numpy as np
import pytest
import torch

from prunekit.surgery.width import slice_mlp, slice_value_channels

INSTALL_HINT = "llama-cpp-python is not installed: run `make llama-cpp`"


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    return llama_cpp


@contextmanager
def llama_model(path, n_ctx: int = 256):
    """A llama.cpp context keeping every position's logits; closed on exit."""
    llama_cpp = require_llama_cpp()
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=2, verbose=False
    )
    try:
        yield llm
    finally:
        llm.close()


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """[len(ids), vocab] logits of one forward pass from an empty cache."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def llama_greedy(llm, ids: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation, one token at a time through llama.cpp's KV cache."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def llama_perplexity(llm, windows: list[list[int]]) -> float:
    """exp(mean NLL) of each window's next-token predictions (the same windows prunekit uses)."""
    nll, count = 0.0, 0
    for window in windows:
        logits = llama_logits(llm, window).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        targets = np.array(window[1:])
        nll -= logp[np.arange(len(targets)), targets].sum()
        count += len(targets)
    return math.exp(nll / count)


# f32 exports of tiny Llama-wired models: logits of magnitude ~3 agree to this (llama.cpp's CPU
# kernels accumulate in another order and keep K/Q in f16 inside attention), far below what a
# wrong permutation or padding does (~1).
LLAMA_F32_TOLERANCE = 2e-3


def narrow_value_heads(model_loaded, layer: int, keep: int) -> None:
    """Keep the first ``keep`` value channels of every kv head of one layer (as FASP does)."""
    adapter, model = model_loaded.adapter, model_loaded.model
    channels = adapter.attention_channels(adapter.layers(model)[layer], model.config)
    kept = [list(range(keep))] * channels.num_kv_heads
    slice_value_channels(channels, kept, adapter)


def narrow_mlp(model_loaded, layer: int, width: int) -> None:
    """Keep the first ``width`` MLP channels of one layer."""
    adapter = model_loaded.adapter
    slice_mlp(adapter.mlp_channels(adapter.layers(model_loaded.model)[layer]), range(width))


def torch_logits(model, ids: list[int]) -> np.ndarray:
    """[len(ids), vocab] logits of the in-memory model, one forward pass."""
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()


def assert_greedy_agrees(model, ids: list[int], generated: list[int], tolerance: float) -> None:
    """Each token llama.cpp generated (through its KV cache) is prunekit's argmax at that step,
    up to ties within the tolerance (a random tiny model has near-ties; the real-model tests
    compare the token lists exactly)."""
    logits = torch_logits(model, ids + generated)
    for step, token in enumerate(generated):
        row = logits[len(ids) - 1 + step]
        assert row[token] >= row.max() - 2 * tolerance, (step, token, int(row.argmax()))


def assert_runs_the_same(model, path, ids: list[int], tolerance: float) -> None:
    """llama.cpp's logits on ``ids`` within ``tolerance`` of the model's, and its greedy tokens
    the model's."""
    want = torch_logits(model, ids)
    with llama_model(path) as llm:
        error = float(np.abs(llama_logits(llm, ids) - want).max())
        assert error < tolerance, f"max |logit difference| {error:.2e}"
        assert_greedy_agrees(model, ids, llama_greedy(llm, ids, 8), tolerance)


def export_report(result) -> dict:
    """The ``export`` section of an export's report.json."""
    return json.loads(result.report_path.read_text())["export"]


def gguf_metadata(path) -> dict:
    """Every key of a GGUF file with its value."""
    return {key: field.contents() for key, field in gguf.GGUFReader(path).fields.items()}
