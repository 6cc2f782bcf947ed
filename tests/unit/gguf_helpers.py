"""Run a GGUF file in a real llama.cpp (llama-cpp-python) for the GGUF export tests.

``make test`` installs the llama-cpp-python wheel (built once into ~/.cache/prunekit/wheels,
see the Makefile's ``llama-cpp`` target). In CI (``CI`` set) a missing llama.cpp fails the
tests; elsewhere they are skipped with the command that installs it.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager

import numpy as np
import pytest

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
