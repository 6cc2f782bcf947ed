"""The memory model from the engines' declarations: a method's plan is the sum of the passes its
record names, one chunk-memory estimate serves the executor and plan-memory, and the default
batch size is the largest the device default and the budget allow."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from prunekit.engine.chunking import chunk_memory
from prunekit.engine.executor import LayerExecutor, default_batch_size
from prunekit.engine.passes import LAYER_FORWARD, PASSES, SLICING, pass_memory
from prunekit.engine.residency import Streamed
from prunekit.errors import SettingsError
from prunekit.memory import MemoryBudget, MemorySettings, plan_memory
from prunekit.methods import registry
from prunekit.methods.catalogue import all_methods, get_method
from prunekit.methods.registry import Method
from prunekit.models.families import model_shapes
from prunekit.models.lazy import LazyModel
from prunekit.models.tiny import save_tiny, tiny_config
from prunekit.pipeline.lazy import lazy_loaded
from prunekit.pipeline.mode import choose_mode

SETTINGS = MemorySettings(n_samples=8, seqlen=64, dtype="fp32")


def term_names(method: str, **changes) -> set[str]:
    plan = plan_memory(tiny_config("llama"), replace(SETTINGS, method=method, **changes))
    return {t.name for t in plan.terms}


def test_every_method_names_declared_engine_passes():
    for method in all_methods():
        assert method.passes, method.name
        assert all(name in PASSES for name in method.passes), (method.name, method.passes)
    assert get_method("blockpruner+fasp").passes == (
        get_method("blockpruner").passes + get_method("fasp").passes
    )
    with pytest.raises(ValueError, match="unknown engine pass 'warp'"):
        pass_memory("warp")


def test_plan_terms_follow_the_declared_passes():
    fasp, wanda, flap, magnitude = (
        term_names(m) for m in ("fasp", "wanda-sp", "flap", "magnitude")
    )
    assert {"Gram matrix (fp32)", "restoration solve", "o_proj inputs (replay)"} <= fasp
    assert "o_proj inputs (replay)" in wanda and "restoration solve" not in wanda
    assert "o_proj inputs (replay)" not in flap and "calibration states (in)" in flap
    assert not any(name.startswith("calibration") for name in magnitude)
    assert "slicing copies" in magnitude
    assert {"logits (one batch, fp32)", "calibration states"} <= term_names("blockpruner")


def test_a_new_method_gets_the_terms_of_its_passes_not_of_its_name(monkeypatch):
    """Registered with the slicing pass only, a made-up method is planned as magnitude is."""
    made_up = Method("made-up", "width", "test", prune=lambda *a: None, passes=(SLICING,))
    monkeypatch.setitem(registry._METHODS, "made-up", made_up)
    for streamed in (False, True):
        for device in ("cpu", "cuda"):
            changes = {"streamed": streamed, "device": device}
            plans = [
                plan_memory(tiny_config("llama"), replace(SETTINGS, method=m, **changes))
                for m in ("made-up", "magnitude")
            ]
            assert plans[0].terms == plans[1].terms
    nothing = Method("no-pass", "width", "test", prune=lambda *a: None)
    monkeypatch.setitem(registry._METHODS, "no-pass", nothing)
    assert "slicing copies" not in term_names("no-pass")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_one_chunk_estimate_for_the_executor_and_the_memory_model(tmp_path, dtype):
    source = save_tiny("llama", str(tmp_path / "dense"))
    lazy = LazyModel.open(source, dtype=dtype, device="cpu")
    loaded = lazy_loaded(lazy, source)
    loaded.residency = Streamed(lazy)
    windows = torch.zeros(6, 32, dtype=torch.long)
    executor = LayerExecutor(loaded, windows, batch_size=3)
    fixed = chunk_memory(lazy, 32, 3).fixed
    assert executor.resident_bytes() == fixed
    settings = MemorySettings(
        method="blockpruner", streamed=True, seqlen=32, batch_size=3, dtype=dtype
    )
    plan = plan_memory(lazy.config, settings)
    chunk = [t for t in plan.terms if t.name in ("weights (largest part)", "one batch's work")]
    assert len(chunk) == 2 and sum(t.bytes for t in chunk) == fixed
    # The smallest chunk: one batch of (candidates + 2) states per window.
    states = next(t for t in plan.terms if t.name == "calibration states")
    branches = 2 * lazy.config.num_hidden_layers
    assert states.bytes == (branches + 2) * 3 * executor.window_state_bytes
    # The whole-layer forward (streamed perplexity) declares the same chunk with one state per
    # window: what the executor's ``layer_chunk_windows`` needs for one batch.
    whole_layers = pass_memory(LAYER_FORWARD).terms(model_shapes(lazy.config), settings)
    chunk_bytes = sum(t.bytes for t in whole_layers if t.name != "layer kwargs")
    assert chunk_bytes == fixed + 3 * executor.window_state_bytes
    exact = LayerExecutor(loaded, windows, batch_size=3, max_memory=chunk_bytes)
    assert exact.layer_chunk_windows() == 3
    short = LayerExecutor(loaded, windows, batch_size=3, max_memory=chunk_bytes - 1)
    with pytest.raises(SettingsError, match="cannot hold one layer-major batch"):
        short.layer_chunk_windows()


def test_default_batch_is_the_largest_the_budget_allows():
    assert default_batch_size("cuda", 32) == 8
    assert default_batch_size("cuda", 32, fits=lambda size: size <= 2) == 2
    assert default_batch_size("cuda", 32, fits=lambda size: False) == 1  # never below 1
    assert default_batch_size("cuda", 5, fits=lambda size: True) == 5  # at most the windows
    assert default_batch_size("cpu", 32, fits=lambda size: True) == 1  # the CPU's default


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> str:
    return save_tiny("llama", str(tmp_path_factory.mktemp("batch") / "dense"))


def device_need(source: str, batch_size: int) -> int:
    from prunekit.models.loading import load_config

    settings = MemorySettings(
        method="fasp", n_samples=16, seqlen=1024, dtype="fp32", device="cuda",
        batch_size=batch_size, max_shard_size=2 * 10**9,
    )  # fmt: skip
    return plan_memory(load_config(source), settings).growth("device")


def choose(source: str, budget: MemoryBudget, batch_size: int | None = None):
    options = get_method("fasp").make_settings(sparsity=0.2, batch_size=batch_size)
    choice = choose_mode(
        source, get_method("fasp"), options, budget, dtype="fp32", device="cuda", stream=False
    )
    return options.batch_size, choice


def test_pretend_gpu_budget_that_fits_batch_two_gives_batch_two(tiny_source):
    two, three = device_need(tiny_source, 2), device_need(tiny_source, 3)
    assert two < three  # a batch adds its activations
    batch, choice = choose(tiny_source, MemoryBudget(device=two))
    assert batch == 2 and choice.plan.settings.batch_size == 2
    assert choice.plan.growth("device") <= two
    # Negative control: one byte less and batch 2 no longer fits either.
    assert choose(tiny_source, MemoryBudget(device=two - 1))[0] == 1


def test_no_budget_gives_the_device_default_and_an_explicit_batch_wins(tiny_source):
    batch, choice = choose(tiny_source, MemoryBudget())
    assert batch == 8 and choice.plan.settings.batch_size == 8
    assert choose(tiny_source, MemoryBudget(), batch_size=3)[0] == 3
    roomy = MemoryBudget(device=2 * device_need(tiny_source, 8))
    batch, choice = choose(tiny_source, roomy, batch_size=1)
    assert batch == 1 and choice.plan.settings.batch_size == 1


def test_cli_plan_memory_predicts_with_the_same_default(tiny_source):
    from prunekit.cli import app

    def planned_batch(*args: str) -> int:
        done = CliRunner().invoke(app, ["plan-memory", tiny_source, "--json", *args])
        assert done.exit_code == 0, done.output
        return json.loads(done.output)["settings"]["batch_size"]

    common = ["--device", "cuda", "--dtype", "fp32", "--n-samples", "16", "--seqlen", "1024"]
    assert planned_batch("--device", "cpu") == 1
    assert planned_batch(*common) == 8
    assert planned_batch(*common, "--max-memory", str(device_need(tiny_source, 2))) == 2
    assert planned_batch(*common, "--batch-size", "3") == 3
    assert planned_batch("--method", "magnitude", *common) == 1  # reads no batches
