"""Width methods streamed: one layer onloaded from the shards at a time, the pruned model written
shard by shard; the same result as the in-memory run, in a fraction of the memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from prunekit.api import prune, prune_streamed
from prunekit.data import load_corpus
from prunekit.export.load import load_pruned
from prunekit.export.shim import SHIMS
from prunekit.models.adapters import adapter_for_config
from prunekit.models.loading import load_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from tests.unit.width_helpers import logits

pytestmark = pytest.mark.usefixtures("data_dir")

SETTINGS = dict(sparsity=0.3, n_samples=4, seqlen=32, calib="wikitext2", seed=0)
# Streamed and in-memory runs do the same arithmetic in the same order on the same device; the
# tolerance only allows for kernels that pick another reduction order for another tensor layout.
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def save_small_shards(family: str, directory: Path) -> Path:
    """A tiny model in several small shards, so layers really come from different files."""
    tiny_model(family).save_pretrained(directory, max_shard_size="50KB")
    tiny_tokenizer().save_pretrained(directory)
    assert (directory / "model.safetensors.index.json").is_file()
    return directory


def settings_for(family: str) -> dict:
    """FASP's value channels make layers heterogeneous (v_head_dim < head_dim): exportable only
    where the prunekit shim covers the family; elsewhere the MLP alone keeps the stock format."""
    adapter_family = adapter_for_config(tiny_model(family).config).family
    return SETTINGS if adapter_family in SHIMS else {**SETTINGS, "targets": ["mlp"]}


def run_both(family: str, tmp_path: Path, method: str = "fasp"):
    source = save_small_shards(family, tmp_path / "dense")
    settings = settings_for(family)
    if method == "fasp":  # cost widths differ per layer, which only the shim families export
        settings = {**settings, "allocation": "uniform"}  # (test_width_parity.py compares cost)
    memory = prune(load_model(str(source), dtype="fp32", device="cpu"), method, **settings)
    streamed = prune_streamed(
        str(source),
        method,
        save=tmp_path / "pruned",
        out=tmp_path / "run",
        dtype="fp32",
        device="cpu",
        **settings,
    )
    return memory, streamed


def test_streamed_fasp_equals_in_memory(family, tmp_path):
    memory, streamed = run_both(family, tmp_path)
    assert streamed.plan.kept_channels == memory.plan.kept_channels
    assert streamed.plan.extra["shapes"] == memory.plan.extra["shapes"]
    reloaded = load_pruned(tmp_path / "pruned", dtype="fp32", device="cpu")
    expected = memory.model.state_dict()
    got = reloaded.model.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, **TOLERANCE, msg=name)
    torch.testing.assert_close(logits(reloaded.model), logits(memory.model), **TOLERANCE)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["mode"] == "streamed"
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["kept_channels"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # staging renamed away


# The memory check: a random Llama of ~230 MB in fp32 (8 layers of 29 MB), its checkpoint saved in
# bf16 in 16 MB shards and loaded in fp32, so every onloaded tensor is a real (anonymous) copy and
# not a page of the memory-mapped file.
BIG = dict(
    hidden_size=1024,
    intermediate_size=1024,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=16,
)
SHARD = "16MB"
MEMORY_SETTINGS = dict(sparsity=0.3, n_samples=4, seqlen=64, seed=0)
CALIBRATION_CHARS = 60_000  # a small text file: tokenizing all of WikiText-2 costs ~100s of MB

MEASURE = textwrap.dedent(
    """
    import json, sys, threading, time
    import prunekit.api as api
    from prunekit.models.loading import load_model

    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    mode, source, save, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    # Imports and data set-up before the baseline: the method registry, the model's code, the
    # tokenizer library and the (small) calibration file read once.
    from transformers import AutoTokenizer, LlamaForCausalLM
    from prunekit.data import corpus_tokens
    from prunekit.methods.catalogue import get_method
    get_method("fasp")
    corpus_tokens(AutoTokenizer.from_pretrained(source), settings["calib"])
    baseline = anon()
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], anon())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    if mode == "streamed":
        api.prune_streamed(source, "fasp", save=save, dtype="fp32", device="cpu",
                           max_shard_size="16MB", **settings)
    else:
        loaded = load_model(source, dtype="fp32", device="cpu")
        api.prune(loaded, "fasp", **settings)
    seconds = time.perf_counter() - started
    stop.set()
    thread.join()
    peak[0] = max(peak[0], anon())
    print(json.dumps({"growth": peak[0] - baseline, "seconds": seconds}))
    """
)


def measure(mode: str, source: Path, save: Path, calib: Path) -> dict:
    env = {
        **os.environ,
        "MALLOC_ARENA_MAX": "2",  # glibc keeps freed memory in per-thread arenas otherwise
        "MALLOC_MMAP_THRESHOLD_": "65536",  # big buffers go back to the OS when freed
        "OMP_NUM_THREADS": "1",
    }
    args = [
        sys.executable,
        "-c",
        MEASURE,
        mode,
        str(source),
        str(save),
        json.dumps({**MEMORY_SETTINGS, "calib": str(calib)}),
    ]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_fasp_peaks(tmp_path: Path) -> dict:
    """Save the big random Llama and measure both modes (used through ``measured_peaks``)."""
    model = tiny_model("llama", **BIG).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "dense", max_shard_size=SHARD)
    tiny_tokenizer().save_pretrained(tmp_path / "dense")
    config = model.config
    layer_bytes = sum(p.numel() for p in model.model.layers[0].parameters()) * 4  # fp32
    model_bytes = sum(p.numel() for p in model.parameters()) * 4
    del model
    calib = tmp_path / "calib.txt"
    calib.write_text(load_corpus("wikitext2")[:CALIBRATION_CHARS])
    return {
        "config": config,
        "layer_bytes": layer_bytes,
        "model_bytes": model_bytes,
        "streamed": measure("streamed", tmp_path / "dense", tmp_path / "pruned", calib),
        "in-memory": measure("in-memory", tmp_path / "dense", tmp_path / "unused", calib),
    }


def test_streamed_fasp_memory_stays_near_one_layer(measured_peaks):
    config, layer_bytes = measured_peaks["config"], measured_peaks["layer_bytes"]
    widest = max(config.hidden_size, config.intermediate_size)
    windows = MEMORY_SETTINGS["n_samples"] * MEMORY_SETTINGS["seqlen"]
    states = windows * config.hidden_size * 4 * 3  # hidden states in, out, and o_proj inputs
    statistics = 4 * widest * widest * 8  # a Gram matrix and the solve's fp64 copies
    shard_buffer = 16 * 10**6
    constant = 32 * 2**20  # tokenizer, calibration corpus, allocator slack
    bound = 2 * layer_bytes + shard_buffer + states + statistics + constant
    streamed, in_memory = measured_peaks["streamed"], measured_peaks["in-memory"]
    print(
        f"bound {bound / 2**20:.0f} MiB, model {measured_peaks['model_bytes'] / 2**20:.0f} MiB, "
        f"layer {layer_bytes / 2**20:.0f} MiB; streamed {streamed}, in-memory {in_memory}"
    )
    assert streamed["growth"] <= bound
    assert in_memory["growth"] > bound  # negative control: the measurement can fail


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_stream_needs_save(tmp_path):
    source = save_small_shards("llama", tmp_path / "dense")
    done = run_cli(
        "prune", "--method", "fasp", "--model", str(source), "--sparsity", "0.3", "--stream"
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "--stream needs --save" in lines[0], done.stderr


def test_cli_stream_prunes_and_saves(tmp_path):
    source = save_small_shards("llama", tmp_path / "dense")
    done = run_cli(
        "prune",
        "--method",
        "fasp",
        "--model",
        str(source),
        "--sparsity",
        "0.3",
        "--calib",
        "wikitext2",
        "--n-samples",
        "4",
        "--seqlen",
        "32",
        "--stream",
        "--save",
        str(tmp_path / "pruned"),
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--dtype",
        "fp32",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "report.json").read_text())["mode"] == "streamed"
    assert load_pruned(tmp_path / "pruned", device="cpu").model is not None


def test_streamed_flap_exports_like_in_memory(tmp_path):
    """FLAP streamed (a recording pass, the global threshold, an apply pass): the layers it
    wrote, with the biases its compensation added, reload to the in-memory pruned model."""
    memory, streamed = run_both("llama", tmp_path, method="flap")
    assert streamed.plan.kept_channels == memory.plan.kept_channels
    assert streamed.plan.extra["shapes"] == memory.plan.extra["shapes"]
    assert memory.plan.extra["shapes"]["0"]["mlp_consumer_bias"]  # compensation added a bias
    reloaded = load_pruned(tmp_path / "pruned", dtype="fp32", device="cpu")
    torch.testing.assert_close(logits(reloaded.model), logits(memory.model), **TOLERANCE)


def test_cli_stream_passes_every_load_option(tmp_path, monkeypatch):
    """--stream must not drop a flag the in-memory path honours (--attn-implementation was)."""
    from typer.testing import CliRunner

    import prunekit.api
    from prunekit.cli import app

    seen = {}

    def fake_prune(model, method, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(prunekit.api, "prune", fake_prune)
    source = save_small_shards("llama", tmp_path / "dense")
    args = ["prune", "--method", "fasp", "--model", str(source), "--sparsity", "0.3"]
    args += ["--stream", "--save", str(tmp_path / "pruned"), "--attn-implementation", "eager"]
    args += ["--device", "cpu", "--dtype", "fp32"]
    CliRunner().invoke(app, args)
    assert seen["stream"] is True
    assert seen["attn_implementation"] == "eager"
    assert (seen["device"], seen["dtype"]) == ("cpu", "fp32")
