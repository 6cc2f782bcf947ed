"""Depth methods streamed: the search evaluated layer-major from the shards (one layer onloaded at
a time), the pruned model written shard by shard; the same removals as the in-memory run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from prunekit.api import lazy_loaded, prune, prune_streamed
from prunekit.data import load_corpus
from prunekit.engine.residency import Streamed
from prunekit.export.load import load_pruned
from prunekit.methods.depth import blockpruner as blockpruner_module
from prunekit.methods.depth.calibration import settings_windows
from prunekit.methods.depth.common import block_units, unit_parameters
from prunekit.methods.depth.runner import DepthRunner
from prunekit.methods.depth.search import Target, greedy_search
from prunekit.methods.settings import CalibrationSettings
from prunekit.models.lazy import LazyModel
from prunekit.models.loading import count_parameters, load_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.report.run_dir import PARTIAL_PLAN_FILE
from tests.unit.width_helpers import logits

pytestmark = pytest.mark.usefixtures("data_dir")

CALIB = dict(n_samples=4, seqlen=32, calib="wikitext2", seed=0)
# BlockPruner's default search (kl-per-param over blocks and whole layers) streams as it is.
DEFAULT_CRITERION = "kl-per-param"
# A budget no state fits: chunks of one window, so every pass runs several chunks and the exact
# pass of each step is needed (the incumbent comes from the bound pass).
ONE_WINDOW = 1


def save_small_shards(family: str, directory: Path) -> Path:
    """A tiny model in several small shards, so layers really come from different files."""
    tiny_model(family).save_pretrained(directory, max_shard_size="50KB")
    tiny_tokenizer().save_pretrained(directory)
    assert (directory / "model.safetensors.index.json").is_file()
    return directory


def streamed_loaded(directory: Path):
    """A LoadedModel over a lazy skeleton, as prune_streamed builds it (no export sink)."""
    lazy = LazyModel.open(str(directory), dtype="fp32", device="cpu")
    loaded = lazy_loaded(lazy, str(directory))
    loaded.residency = Streamed(lazy)
    return loaded


def greedy(runner, loaded, blocks: int, criterion: str = DEFAULT_CRITERION, **kwargs):
    units = block_units(runner, "blocks+layers", set())
    params = unit_parameters(runner, units)
    target = Target(None, blocks, count_parameters(loaded.model), counts_blocks=True)
    return greedy_search(runner, units, params, target, criterion, desc=None, **kwargs)


def test_streamed_blockpruner_search_equals_in_memory(family, tmp_path):
    """Chunks of one window: the two-pass step (bound pass, then exact pass) on every family."""
    check_blockpruner_search(family, tmp_path, ONE_WINDOW)


def test_streamed_single_chunk_search_equals_in_memory(tmp_path):
    """Every window in one chunk: the one-pass step."""
    check_blockpruner_search("llama", tmp_path, None)


def check_blockpruner_search(family: str, tmp_path: Path, max_memory: int | None) -> None:
    source = save_small_shards(family, tmp_path / "dense")
    settings = CalibrationSettings(**CALIB)
    memory = load_model(str(source), dtype="fp32", device="cpu")
    windows = settings_windows(memory, settings)
    expected = greedy(DepthRunner(memory, windows, DEFAULT_CRITERION), memory, 3)

    loaded = streamed_loaded(source)
    windows = settings_windows(loaded, settings)
    runner = DepthRunner(loaded, windows, DEFAULT_CRITERION, max_memory=max_memory)
    got = greedy(runner, loaded, 3)

    assert got.removed == expected.removed
    # Bit-identical scores, not merely close: the same ops on the same [1, T, d] windows.
    assert [s["calib_nll"] for s in got.trajectory] == [s["calib_nll"] for s in expected.trajectory]
    assert runner.largest_chunk == (1 if max_memory == ONE_WINDOW else CALIB["n_samples"])
    assert loaded.residency.lazy.onloaded_bytes() == 0  # every part released


def test_streamed_exhaustive_search_equals_in_memory(tmp_path):
    source = save_small_shards("llama", tmp_path / "dense")
    settings = CalibrationSettings(**CALIB)
    memory = load_model(str(source), dtype="fp32", device="cpu")
    runner = DepthRunner(memory, settings_windows(memory, settings), "ppl")
    expected = greedy(runner, memory, 2, "ppl", exhaustive=True)
    loaded = streamed_loaded(source)
    windows = settings_windows(loaded, settings)
    streamed = DepthRunner(loaded, windows, "ppl", max_memory=ONE_WINDOW)
    got = greedy(streamed, loaded, 2, "ppl", exhaustive=True)
    assert got.removed == expected.removed
    # Exhaustive: every candidate's exact score, all equal to the in-memory ones.
    assert [s["scores"] for s in got.trajectory] == [s["scores"] for s in expected.trajectory]


def run_both(family: str, tmp_path: Path, method: str, max_memory: int | None, **settings):
    source = save_small_shards(family, tmp_path / "dense")
    memory = prune(load_model(str(source), dtype="fp32", device="cpu"), method, **settings)
    streamed = prune_streamed(
        str(source),
        method,
        save=tmp_path / "pruned",
        out=tmp_path / "run",
        dtype="fp32",
        device="cpu",
        max_memory=max_memory,
        **settings,
    )
    return memory, streamed


def check_export(memory, tmp_path: Path, fmt: str) -> None:
    """The streamed export reloads to the in-memory pruned model: same tensors, same logits."""
    reloaded = load_pruned(tmp_path / "pruned", dtype="fp32", device="cpu")
    expected, got = memory.model.state_dict(), reloaded.model.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert torch.equal(logits(reloaded.model), logits(memory.model))
    report = json.loads((tmp_path / "pruned" / "report.json").read_text())
    assert report["export"]["format"] == fmt and report["mode"] == "streamed"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # staging renamed away


@pytest.mark.parametrize("method", ["sleb", "shortgpt"])
def test_streamed_layer_methods_export_equals_in_memory(family, tmp_path, method):
    memory, streamed = run_both(family, tmp_path, method, ONE_WINDOW, blocks=2, **CALIB)
    assert streamed.plan.removed_blocks == memory.plan.removed_blocks
    assert streamed.plan.extra["kept_layers"] == memory.plan.extra["kept_layers"]
    assert [s["calib_nll"] for s in streamed.plan.trajectory] == [
        s["calib_nll"] for s in memory.plan.trajectory
    ]
    if method == "shortgpt":
        assert streamed.plan.extra["scores"] == memory.plan.extra["scores"]
    assert streamed.plan.model == memory.plan.model  # the fingerprint read from the shards
    check_export(memory, tmp_path, "hf")  # whole layers gone: every layer alike, stock format
    assert streamed.report["params"] == memory.report["params"]
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["removed_blocks"]


# Blocks removed: layers of different shapes, the prunekit format (llama and qwen2 so far).
@pytest.mark.parametrize(
    "family, method", [("llama", "blockpruner"), ("qwen2", "blockpruner"), ("llama", "rm-block")]
)
def test_streamed_block_methods_export_equals_in_memory(family, tmp_path, method):
    memory, streamed = run_both(family, tmp_path, method, None, blocks=3, **CALIB)
    assert streamed.plan.removed_blocks == memory.plan.removed_blocks
    assert streamed.plan.extra["layer_blocks"] == memory.plan.extra["layer_blocks"]
    check_export(memory, tmp_path, "prunekit")


def test_streamed_search_resumes(tmp_path, monkeypatch):
    """An interrupted streamed search resumes from its partial plan to the in-memory result."""
    source = save_small_shards("llama", tmp_path / "dense")
    settings = dict(blocks=3, **CALIB)
    reference = prune(
        load_model(str(source), dtype="fp32", device="cpu"), "blockpruner", **settings
    )
    real_checkpointer = blockpruner_module.checkpointer

    def interrupting_checkpointer(*args, **kwargs):
        save = real_checkpointer(*args, **kwargs)

        def save_then_crash(state):
            save(state)
            raise KeyboardInterrupt

        return save_then_crash

    run = tmp_path / "run"
    stream = dict(dtype="fp32", device="cpu", out=run, **settings)
    monkeypatch.setattr(blockpruner_module, "checkpointer", interrupting_checkpointer)
    with pytest.raises(KeyboardInterrupt):
        prune_streamed(str(source), "blockpruner", save=tmp_path / "pruned", **stream)
    monkeypatch.undo()
    assert len(json.loads((run / PARTIAL_PLAN_FILE).read_text())["trajectory"]) == 1  # one step
    assert not (tmp_path / "pruned").exists()
    resumed = prune_streamed(
        str(source), "blockpruner", save=tmp_path / "pruned", resume=True, **stream
    )
    assert resumed.plan.removed_blocks == reference.plan.removed_blocks
    assert [s["calib_nll"] for s in resumed.plan.trajectory] == [
        s["calib_nll"] for s in reference.plan.trajectory
    ]
    check_export(reference, tmp_path, "prunekit")


def test_chunk_size_follows_the_budget(tmp_path):
    source = save_small_shards("llama", tmp_path / "dense")
    loaded = streamed_loaded(source)
    windows = settings_windows(loaded, CalibrationSettings(**CALIB))
    unbounded = DepthRunner(loaded, windows)
    assert unbounded.chunk_windows(branches=8) == CALIB["n_samples"]  # 1 GiB of states
    per_window = (8 + 2) * unbounded.window_state_bytes
    budget = unbounded.resident_bytes() + 2 * per_window + per_window // 2
    assert DepthRunner(loaded, windows, max_memory=budget).chunk_windows(branches=8) == 2
    assert DepthRunner(loaded, windows, max_memory=ONE_WINDOW).chunk_windows(branches=8) == 1
    # Batches are never split: chunks are whole batches (here batches of 3 over 4 windows).
    batched = DepthRunner(loaded, windows, batch_size=3, max_memory=budget)
    assert batched.chunk_windows(branches=8) == 3
    assert list(batched.chunks(8)) == [[0, 1, 2], [3]]
    # The KL criteria keep the dense finals: one branch more per window.
    exact_fit = unbounded.resident_bytes() + 2 * per_window
    assert DepthRunner(loaded, windows, max_memory=exact_fit).chunk_windows(branches=8) == 2
    assert DepthRunner(loaded, windows, "kl", max_memory=exact_fit).chunk_windows(branches=8) == 1


def test_cli_stream_prunes_depth_and_saves(tmp_path):
    source = save_small_shards("llama", tmp_path / "dense")
    args = ["prune", "--method", "blockpruner", "--model", str(source), "--blocks", "2"]
    args += ["--calib", "wikitext2", "--n-samples", "2", "--seqlen", "32", "--stream"]
    args += ["--save", str(tmp_path / "pruned"), "--out", str(tmp_path / "run")]
    args += ["--device", "cpu", "--dtype", "fp32"]
    done = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "criterion" not in done.stderr  # the default streams: no substitute, no note
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert len(plan["removed_blocks"]) == 2
    assert (plan["settings"]["criterion"], plan["settings"]["candidates"]) == (
        "kl-per-param",
        "blocks+layers",
    )
    assert plan["extra"]["search"]["engine"]["streamed"]
    reloaded = load_pruned(tmp_path / "pruned", device="cpu")
    assert reloaded.model.config.prunekit_depth["kept_layers"] == plan["extra"]["kept_layers"]


# The memory check: a random Llama of ~400 MB in fp32 (14 layers of 29 MB), its checkpoint saved
# in bf16 in 16 MB shards and run in fp32, so every onloaded tensor is a real (anonymous) copy and
# not a page of the memory-mapped file. The budget holds what the run needs at its peak: the
# plan's weight fingerprint (embeddings, first and last layer onloaded at once, and ~55 MiB of
# fixed-size samples), above the search's one layer and states and the export's layer and shard.
BIG = dict(
    hidden_size=1024,
    intermediate_size=1024,
    num_hidden_layers=14,
    num_attention_heads=16,
    num_key_value_heads=16,
    head_dim=64,
)
BUDGET = 128 * 2**20
MEMORY_SETTINGS = dict(blocks=2, n_samples=2, seqlen=32, seed=0)  # the default (KL) search
CALIBRATION_CHARS = 20_000

MEASURE = textwrap.dedent(
    """
    import json, sys, threading, time
    import torch
    import prunekit.api as api
    from prunekit.memory import MemoryBudget
    from prunekit.models.loading import load_model
    from tests.unit.memory_probe import PeakSampler, rss_anon_bytes

    torch.set_num_threads(1)
    mode, source, save, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    budget = int(sys.argv[5])
    # Imports and data set-up before the baseline: the method registry, the model's code, the
    # tokenizer library and the (small) calibration file read once.
    from transformers import AutoTokenizer, LlamaForCausalLM
    from prunekit.data import corpus_tokens
    from prunekit.methods.catalogue import get_method
    get_method("blockpruner")
    corpus_tokens(AutoTokenizer.from_pretrained(source), settings["calib"])
    # The code paths a forward imports or initializes on first use (masks, attention kernels).
    from prunekit.models.tiny import tiny_model
    with torch.inference_mode():
        tiny_model("llama")(torch.ones(1, 8, dtype=torch.long))
    baseline = rss_anon_bytes()
    started = time.perf_counter()
    with PeakSampler() as sampler:
        if mode == "streamed":
            result = api.prune_streamed(source, "blockpruner", save=save, dtype="fp32",
                                        device="cpu", max_shard_size="16MB",
                                        budget=MemoryBudget(host=budget),
                                        **settings)
        else:
            result = api.prune(load_model(source, dtype="fp32", device="cpu"), "blockpruner",
                               **settings)
    print(json.dumps({"growth": sampler.peak - baseline, "seconds": time.perf_counter() - started,
                      "removed": result.plan.removed_blocks}))
    """
)


def measure(mode: str, source: Path, save: Path, calib: Path) -> dict:
    env = {
        **os.environ,
        "MALLOC_ARENA_MAX": "2",  # glibc keeps freed memory in per-thread arenas otherwise
        "MALLOC_MMAP_THRESHOLD_": "65536",  # big buffers go back to the OS when freed
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    settings = json.dumps({**MEMORY_SETTINGS, "calib": str(calib)})
    args = [sys.executable, "-c", MEASURE, mode, str(source), str(save), settings, str(BUDGET)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_streamed_blockpruner_stays_within_the_budget(tmp_path):
    model = tiny_model("llama", **BIG).to(torch.bfloat16)
    model_bytes = sum(p.numel() for p in model.parameters()) * 4  # run in fp32
    model.save_pretrained(tmp_path / "dense", max_shard_size="16MB")
    tiny_tokenizer().save_pretrained(tmp_path / "dense")
    del model
    assert model_bytes >= 3 * BUDGET
    calib = tmp_path / "calib.txt"
    calib.write_text(load_corpus("wikitext2")[:CALIBRATION_CHARS])
    streamed = measure("streamed", tmp_path / "dense", tmp_path / "pruned", calib)
    in_memory = measure("in-memory", tmp_path / "dense", tmp_path / "unused", calib)
    print(f"budget {BUDGET / 2**20:.0f} MiB, model {model_bytes / 2**20:.0f} MiB; ")
    print(f"streamed {streamed}, in-memory {in_memory}")
    assert streamed["removed"] == in_memory["removed"]
    assert streamed["growth"] <= BUDGET
    assert in_memory["growth"] > BUDGET  # negative control: the measurement can fail
