"""One budget: `prune --max-memory` picks in-memory or streamed from the config, stays within it,
and report.json records the mode, the budget, the prediction and the measured peaks.

The model: a random Llama of ~250 MB in fp32 (30 layers of 8 MB), its checkpoint saved in bf16 in
16 MB shards and pruned in fp32, so every weight the run holds is a real (anonymous) copy, not a
page of the memory-mapped file (a CPU load in the checkpoint's own dtype costs no RssAnon).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunekit.api import prune, prune_streamed
from prunekit.data import load_corpus
from prunekit.engine.residency import Streamed
from prunekit.errors import SettingsError
from prunekit.export.load import load_pruned
from prunekit.export.shards import ShardWriter
from prunekit.memory import (
    MemoryBudget,
    MemorySettings,
    choose_run,
    parse_memory_size,
    plan_memory,
)
from prunekit.memory_usage import PeakMemory, rss_anon_bytes
from prunekit.models.lazy import LazyModel
from prunekit.models.loading import load_model
from prunekit.models.tiny import tiny_config, tiny_model, tiny_tokenizer
from tests.unit.width_helpers import logits

pytestmark = pytest.mark.usefixtures("data_dir")

BIG = dict(
    hidden_size=768,
    intermediate_size=768,
    num_hidden_layers=30,
    num_attention_heads=12,
    num_key_value_heads=4,
)
BUDGET = 80 * 2**20
CALIBRATION = ["--n-samples", "4", "--seqlen", "64", "--sparsity", "0.3"]
CALIBRATION_CHARS = 60_000  # a small text file: tokenizing all of WikiText-2 costs ~100s of MB
ENV = {
    "MALLOC_ARENA_MAX": "2",  # glibc keeps freed memory in per-thread arenas otherwise
    "MALLOC_MMAP_THRESHOLD_": "65536",  # big buffers go back to the OS when freed
    "OMP_NUM_THREADS": "1",
}


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunekit.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def run_watched(args: list[str]) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI and, from outside, sample the child's RssAnon: (result, its peak in bytes)."""
    cmd = [sys.executable, "-m", "prunekit.cli", *args]
    child = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
    )
    status, peak = Path(f"/proc/{child.pid}/status"), 0
    while child.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            break
        time.sleep(0.003)
    stdout, stderr = child.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr), peak


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> dict:
    """The ~250 MB Llama (bf16 checkpoint, 16 MB shards) and a small calibration file."""
    root = tmp_path_factory.mktemp("budget")
    model = tiny_model("llama", **BIG).to(torch.bfloat16)
    model.save_pretrained(root / "dense", max_shard_size="16MB")
    tiny_tokenizer().save_pretrained(root / "dense")
    fp32_bytes = sum(p.numel() for p in model.parameters()) * 4
    del model
    calib = root / "calib.txt"
    calib.write_text(load_corpus("wikitext2")[:CALIBRATION_CHARS])
    return {"root": root, "dense": root / "dense", "calib": calib, "fp32_bytes": fp32_bytes}


def prune_args(big: dict, budget: str, *extra: str) -> list[str]:
    return [
        "prune",
        "--method",
        "fasp",
        "--model",
        str(big["dense"]),
        "--calib",
        str(big["calib"]),
        *CALIBRATION,
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--max-memory",
        budget,
        *extra,
    ]


@pytest.fixture(scope="module")
def budget_runs(big_model) -> dict:
    """FASP under an 80 MiB budget (streamed automatically) and under 1 GiB (in memory)."""
    root = big_model["root"]
    runs = {}
    for name, budget, extra in (
        ("streamed", "80MiB", ["--save", str(root / "pruned")]),
        ("in-memory", "1GiB", []),
    ):
        done, external_peak = run_watched(
            prune_args(big_model, budget, "--out", str(root / name), *extra)
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads((root / name / "report.json").read_text())
        runs[name] = {"done": done, "external_peak": external_peak, "memory": report["memory"]}
    return runs


def test_model_is_three_times_the_budget(big_model):
    assert big_model["fp32_bytes"] >= 3 * BUDGET


def test_budget_streams_automatically_and_stays_within_it(big_model, budget_runs):
    run = budget_runs["streamed"]
    memory = run["memory"]
    print(f"streamed: {memory}, external peak {run['external_peak']}")
    assert "budget 80.0 MiB: streaming layer by layer" in run["done"].stdout
    assert memory["mode"] == "streamed"
    assert memory["budget"] == {"device": BUDGET, "host": None}
    measured = memory["measured"]["host_peak_bytes"]
    assert 0 < measured <= BUDGET
    # The same bound seen from outside the process, above the run's own baseline.
    assert run["external_peak"] - memory["measured"]["host_baseline_bytes"] <= BUDGET
    # The shard buffer was sized from the budget, and the files respect it.
    assert memory["max_shard_size"] == BUDGET // 16
    shards = sorted((big_model["root"] / "pruned").glob("model-*.safetensors"))
    assert len(shards) > 10
    assert all(p.stat().st_size <= memory["max_shard_size"] + 2**16 for p in shards)


def test_in_memory_run_exceeds_that_budget(budget_runs):
    """Negative control: the same prune in memory needs more than the budget, so the streamed
    run's bound is a real measurement."""
    run = budget_runs["in-memory"]
    memory = run["memory"]
    print(f"in-memory: {memory}, external peak {run['external_peak']}")
    assert "streaming" not in run["done"].stdout
    assert memory["mode"] == "in-memory"
    assert memory["measured"]["host_peak_bytes"] > 3 * BUDGET
    assert run["external_peak"] - memory["measured"]["host_baseline_bytes"] > 3 * BUDGET


@pytest.mark.parametrize("mode", ["streamed", "in-memory"])
def test_prediction_within_25_percent_of_measured_peak(budget_runs, mode):
    memory = budget_runs[mode]["memory"]
    predicted = memory["predicted"]["host_peak_bytes"]
    measured = memory["measured"]["host_peak_bytes"]
    print(f"{mode}: predicted {predicted / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB")
    assert abs(predicted - measured) <= 0.25 * measured


def test_budget_too_small_for_streaming_is_one_line(big_model, tmp_path):
    done = run_cli(*prune_args(big_model, "20MB", "--save", str(tmp_path / "out")))
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "needs ~" in line and "streamed" in line and "budget 19.1 MiB" in line, line
    assert not (tmp_path / "out").exists()


def test_streaming_needs_save_is_one_line(big_model):
    done = run_cli(*prune_args(big_model, "80MiB"))
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "in memory" in line and "needs --save" in line, line


def test_bad_size_is_one_line(big_model):
    done = run_cli(*prune_args(big_model, "lots"))
    assert done.returncode == 2
    assert "--max-memory 'lots' is not a size" in one_line(done.stderr)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("80MB", 80 * 10**6), ("2GiB", 2 * 2**30), ("24GB", 24 * 10**9), ("512M", 512 * 2**20)],
)
def test_parse_memory_size(text, expected):
    assert parse_memory_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "-1GB", "3 parsecs", "0"])
def test_parse_memory_size_refuses(text):
    with pytest.raises(SettingsError):
        parse_memory_size(text)


def test_on_cpu_both_budgets_bound_the_host():
    budget = MemoryBudget.parse("2GB", "1GB")
    assert budget.host_limit("cpu") == budget.compute_limit("cpu") == 10**9
    assert (budget.compute_limit("cuda"), budget.host_limit("cuda")) == (2 * 10**9, 10**9)


# ---- the choice on a GPU, from the config alone (no GPU needed) ---------------------------------
EIGHT_B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    head_dim=128,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
)
GPU_FASP = MemorySettings(method="fasp", n_samples=128, seqlen=2048, dtype="bf16", device="cuda")


def test_gpu_budget_chooses_in_memory_streamed_or_offloaded():
    config = tiny_config("llama", **EIGHT_B)
    streamed = plan_memory(config, MemorySettings(**{**GPU_FASP.__dict__, "streamed": True}))
    states = 128 * 2048 * 4096 * 2
    roomy = choose_run(config, GPU_FASP, MemoryBudget(device=80 * 2**30))
    assert (roomy.streamed, roomy.offload_activations, roomy.message) == (False, False, None)
    fits_streamed = choose_run(config, GPU_FASP, MemoryBudget(device=12 * 2**30))
    assert (fits_streamed.streamed, fits_streamed.offload_activations) == (True, False)
    assert "streaming layer by layer" in fits_streamed.message
    # Just below the streamed need: only with the calibration states on the host.
    tight = MemoryBudget(device=streamed.growth("device") - states // 2)
    offloaded = choose_run(config, GPU_FASP, tight)
    assert (offloaded.streamed, offloaded.offload_activations) == (True, True)
    assert "calibration states on the host" in offloaded.message
    assert offloaded.plan.growth("device") < tight.device
    assert offloaded.plan.growth("host") > streamed.growth("host") + states
    with pytest.raises(SettingsError, match="needs ~.* streamed on the cuda"):
        choose_run(config, GPU_FASP, MemoryBudget(device=2**30))


def test_method_that_cannot_stream_is_refused_with_the_need():
    config = tiny_config("llama", **EIGHT_B)
    settings = MemorySettings(method="fasp", device="cuda")
    refusal = "a-method cannot stream"  # every registered method streams now: a made-up one
    with pytest.raises(SettingsError, match=r"needs ~.* in memory .*\(a-method cannot"):
        choose_run(config, settings, MemoryBudget(device=8 * 2**30), stream_refusal=refusal)


# ---- the pieces the budget bounds -------------------------------------------------------------
def save_small_shards(directory: Path, **overrides) -> Path:
    tiny_model("llama", **overrides).save_pretrained(directory, max_shard_size="50KB")
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_fingerprint_from_row_slices_equals_the_in_memory_one(tmp_path, dtype):
    source = save_small_shards(tmp_path / "dense")
    expected = load_model(str(source), dtype=dtype, device="cpu").identity()["fingerprint"]
    # 1000-byte slices: every tensor is read in several pieces, at offsets off the stride.
    lazy = LazyModel(source, dtype=dtype, device="cpu")
    assert Streamed(lazy, row_slice_bytes=1000).fingerprint() == expected
    assert not any(lazy.is_onloaded(part) for part in lazy.parts)


def test_tied_model_streams_and_reloads(tmp_path):
    """A tied LM head is the embedding's tensor: written once (it was written twice: an error)."""
    source = save_small_shards(tmp_path / "dense", tie_word_embeddings=True)
    settings = dict(sparsity=0.3, n_samples=4, seqlen=32, calib="wikitext2")
    memory = prune(load_model(str(source), dtype="fp32", device="cpu"), "fasp", **settings)
    prune_streamed(
        str(source), "fasp", save=tmp_path / "pruned", dtype="fp32", device="cpu", **settings
    )
    reloaded = load_pruned(tmp_path / "pruned", dtype="fp32", device="cpu")
    torch.testing.assert_close(logits(reloaded.model), logits(memory.model), rtol=1e-5, atol=1e-6)


def test_untied_head_is_copied_in_row_slices(tmp_path, monkeypatch):
    source = save_small_shards(tmp_path / "dense")
    read = []
    original = LazyModel.read_rows

    def spy(self, name, start, stop):
        read.append((name, start, stop))
        return original(self, name, start, stop)

    monkeypatch.setattr(LazyModel, "read_rows", spy)
    onloaded = []
    onload = LazyModel.onload
    monkeypatch.setattr(
        LazyModel, "onload", lambda self, *p: onloaded.extend(p) or onload(self, *p)
    )
    prune_streamed(
        str(source),
        "magnitude",
        save=tmp_path / "pruned",
        dtype="fp32",
        device="cpu",
        budget=MemoryBudget(device=16 * 2**20),  # row slices of 1 MiB
        sparsity=0.3,
    )
    head_reads = [r for r in read if r[0] == "lm_head.weight"]
    assert len(head_reads) >= 1 and "head" not in onloaded
    dense = load_model(str(source), dtype="fp32", device="cpu").model.lm_head.weight
    got = load_pruned(tmp_path / "pruned", dtype="fp32", device="cpu").model.lm_head.weight
    assert torch.equal(got, dense)


def test_tensor_larger_than_a_shard_is_written_slice_by_slice(tmp_path):
    import safetensors.torch

    tensor = torch.randn(37, 11).to(torch.bfloat16)
    with ShardWriter(tmp_path, max_shard_size=300) as writer:
        writer.add("small", torch.ones(3))
        writer.add("big.weight", tensor)
        writer.add_rows("rows.weight", (37, 11), torch.bfloat16, tensor.split(5))
    for index, name in ((1, "big.weight"), (2, "rows.weight")):
        reference = tmp_path / f"reference-{index}"
        safetensors.torch.save_file({name: tensor}, str(reference), metadata={"format": "pt"})
        shard = tmp_path / f"model-0000{index}-of-00003.safetensors"
        assert shard.read_bytes() == reference.read_bytes()  # what save_file writes
    assert torch.equal(
        safetensors.torch.load_file(tmp_path / "model-00003-of-00003.safetensors")["small"],
        torch.ones(3),
    )


def test_offload_on_cpu_is_a_no_op_and_says_so(tmp_path, caplog):
    source = save_small_shards(tmp_path / "dense")
    settings = dict(sparsity=0.3, n_samples=4, seqlen=32, calib="wikitext2")
    plain = prune(load_model(str(source), dtype="fp32", device="cpu"), "fasp", **settings)
    logger = logging.getLogger("prunekit")  # the CLI's set-up may stop it propagating
    logger.addHandler(caplog.handler)
    try:
        offloaded = prune(
            load_model(str(source), dtype="fp32", device="cpu"),
            "fasp",
            offload_activations=True,
            **settings,
        )
    finally:
        logger.removeHandler(caplog.handler)
    assert "no effect on cpu" in caplog.text
    assert offloaded.report["memory"]["offload_activations"] is False
    assert offloaded.plan.kept_channels == plain.plan.kept_channels


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloaded_activations_give_the_same_pruning_on_cuda(tmp_path):
    source = save_small_shards(tmp_path / "dense")
    settings = dict(sparsity=0.3, n_samples=4, seqlen=32, calib="wikitext2")
    results = {}
    for offload in (False, True):
        results[offload] = prune_streamed(
            str(source),
            "fasp",
            save=tmp_path / f"pruned-{offload}",
            dtype="fp32",
            device="cuda",
            offload_activations=offload,
            **settings,
        )
        memory = results[offload].report["memory"]
        assert memory["offload_activations"] is offload
        assert memory["measured"]["device_peak_bytes"] > 0
    assert results[True].plan.kept_channels == results[False].plan.kept_channels
    a = load_pruned(tmp_path / "pruned-True", dtype="fp32", device="cpu")
    b = load_pruned(tmp_path / "pruned-False", dtype="fp32", device="cpu")
    torch.testing.assert_close(logits(a.model), logits(b.model), rtol=1e-5, atol=1e-5)


def test_peak_memory_sees_an_allocation():
    size = 16 * 2**20
    with PeakMemory("cpu") as peaks:
        # Fresh anonymous pages (a tensor could reuse heap memory already resident).
        block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        time.sleep(0.02)
        block.close()
    measured = peaks.stop()
    assert measured.host_baseline == pytest.approx(rss_anon_bytes(), abs=64 * 2**20)
    assert 15 * 2**20 <= measured.host <= 64 * 2**20
    assert measured.device is None
