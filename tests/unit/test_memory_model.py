"""The memory model: parameter counts from the config, predictions against measured peaks, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from prunekit.memory import MemorySettings, plan_memory
from prunekit.models.families import model_shapes
from prunekit.models.tiny import TINY_FAMILIES, save_tiny, tiny_config
from tests.unit.test_streamed_width import BIG, MEMORY_SETTINGS

pytestmark = pytest.mark.usefixtures("data_dir")


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_parameter_counts_from_config_equal_the_model(family, tied):
    config = tiny_config(family, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(config)
    shapes = model_shapes(model.config)
    assert shapes.total_params == sum(p.numel() for p in model.parameters())
    layer = next(m for name, m in model.named_modules() if name.endswith("layers.0"))
    assert shapes.layer_params == sum(p.numel() for p in layer.parameters())
    assert (shapes.head_params == 0) == tied


@pytest.mark.parametrize("mode", ["streamed", "in-memory"])
def test_prediction_within_25_percent_of_measured_peak(mode, measured_peaks):
    settings = MemorySettings(
        method="fasp",
        streamed=mode == "streamed",
        n_samples=MEMORY_SETTINGS["n_samples"],
        seqlen=MEMORY_SETTINGS["seqlen"],
        sparsity=MEMORY_SETTINGS["sparsity"],
        dtype="fp32",
        max_shard_size=16 * 10**6,
    )
    predicted = plan_memory(tiny_config("llama", **BIG), settings).growth("host")
    measured = measured_peaks[mode]["growth"]
    print(f"{mode}: predicted {predicted / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB")
    assert abs(predicted - measured) <= 0.25 * measured


def test_streamed_prediction_is_below_in_memory_for_a_big_model():
    config = tiny_config(
        "llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, head_dim=128,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
    )  # fmt: skip
    common = dict(method="fasp", n_samples=16, seqlen=1024, dtype="bf16", device="cuda")
    streamed = plan_memory(config, MemorySettings(streamed=True, **common))
    in_memory = plan_memory(config, MemorySettings(streamed=False, **common))
    assert in_memory.peak("device") > 8.0e9 * 2  # the 8B model's bf16 weights
    assert streamed.peak("device") < in_memory.peak("device") / 2
    assert streamed.peak("host") < 4e9  # the host holds a shard and the imports, not the model


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_plan_memory_prints_totals(tmp_path):
    source = save_tiny("llama", str(tmp_path / "tiny"))
    done = run_cli("plan-memory", source, "--method", "fasp", "--stream")
    assert done.returncode == 0, done.stderr
    assert "peak host" in done.stdout and "weights (one layer)" in done.stdout
    as_json = run_cli("plan-memory", source, "--method", "fasp", "--json", "--device", "cuda")
    assert as_json.returncode == 0, as_json.stderr
    plan = json.loads(as_json.stdout)
    assert plan["peak_device_bytes"] > 0 and plan["peak_host_bytes"] > 0
    assert plan["parameters"] == model_shapes(tiny_config("llama")).total_params


def test_cli_plan_memory_bad_model_is_one_line(tmp_path):
    done = run_cli("plan-memory", str(tmp_path / "missing"))
    assert done.returncode == 2
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "not found" in lines[0], done.stderr
