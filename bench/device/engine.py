"""The one engine on a GPU (issue 25, item 4): batch 1 vs 8, and FASP streamed from disk.

Random weights time the work honestly (every matmul, every Gram matrix, every restoration is
the same size as with real weights); their pruning quality means nothing. Tokenizer and corpora
come from the device carry (bench/device/prepare.sh).

    python bench/device/engine.py batches CARRY OUT_JSON   # ~1.1B Llama-shaped model on the GPU
    python bench/device/engine.py streamed CARRY OUT_JSON  # 7B-shaped, saved, FASP --stream

A dry run on the CPU: add ``--tiny`` (a few-layer model of the same kind).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from prunekit.api import prune
from prunekit.models.loading import from_model

# TinyLlama-1.1B's shape (GQA 32/4) with SmolLM2's 49k vocabulary (the carried tokenizer).
SHAPE_1B = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
)
# Llama-2-7B's shape (MHA 32 heads), SmolLM2's vocabulary: 6.6B parameters in the layers.
SHAPE_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
)
TINY = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
)
CALIB = dict(calib="c4", seed=0)


def model_of(shape: dict, vocab: int, device: str, dtype: torch.dtype) -> LlamaForCausalLM:
    config = LlamaConfig(
        **shape, vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=False
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def peak_gb(device: str) -> float | None:
    if device != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 1e9


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def batches(carry: Path, out: Path, tiny: bool) -> None:
    """One BlockPruner step and FASP (ratio 0.2) on the GPU at batch 1 and 8, in memory."""
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(carry / "smol")
    model = model_of(TINY if tiny else SHAPE_1B, len(tokenizer), device, dtype)
    params = sum(p.numel() for p in model.parameters())
    windows = dict(n_samples=8 if tiny else 32, seqlen=64 if tiny else 512)
    rows = []
    # The tiny dry run's 49k-row embeddings dwarf its layers: a ratio target is out of reach.
    width_target = dict(sparsity=0.2) if tiny else dict(ratio=0.2)
    for method, target in (("blockpruner", dict(blocks=1)), ("fasp", width_target)):
        for batch in (1, 8):
            copy = model_of(TINY if tiny else SHAPE_1B, len(tokenizer), device, dtype)
            loaded = from_model(copy, tokenizer, spec="random-llama")
            reset_peak(device)
            started = time.perf_counter()
            result = prune(loaded, method, batch_size=batch, **target, **windows, **CALIB)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            plan = result.plan
            rows.append(
                {
                    "method": method,
                    "batch": batch,
                    "seconds": seconds,
                    "peak_gpu_gb": peak_gb(device),
                    "plan": plan.removed_blocks or None,
                    "params": params,
                    "device": device,
                    **windows,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            del copy, loaded, result
            if device == "cuda":
                torch.cuda.empty_cache()
    out.write_text(json.dumps(rows, indent=1))


def streamed(carry: Path, out: Path, tiny: bool) -> None:
    """FASP's default (cost allocation) streamed from disk under --max-memory 24GB."""
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(carry / "smol")
    work = Path(tempfile.mkdtemp(prefix="engine-"))
    source = work / "random-7b"
    started = time.perf_counter()
    model = model_of(TINY if tiny else SHAPE_7B, len(tokenizer), device, torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(source, max_shard_size="2GB")
    tokenizer.save_pretrained(source)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    built = time.perf_counter() - started
    windows = ["--n-samples", "4" if tiny else "32", "--seqlen", "64" if tiny else "2048"]
    command = [
        sys.executable,
        "-m",
        "prunekit",
        "prune",
        "--model",
        str(source),
        "--method",
        "fasp",
        "--sparsity" if tiny else "--ratio",
        "0.2",
        "--stream",
        "--max-memory",
        "2GB" if tiny else "24GB",
        "--device",
        device,
        "--dtype",
        "bf16",
        "--calib",
        "c4",
        *windows,
        "--save",
        str(work / "pruned"),
        "--out",
        str(work / "run"),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(done.stdout[-3000:], done.stderr[-3000:], flush=True)
    report = {}
    if (work / "run" / "report.json").is_file():
        report = json.loads((work / "run" / "report.json").read_text())
    row = {
        "params": params,
        "build_seconds": built,
        "prune_seconds": seconds,
        "rc": done.returncode,
        "memory": report.get("memory"),
        "params_after": report.get("params"),
        "command": " ".join(command),
    }
    print(json.dumps(row), flush=True)
    out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    what, carry, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    {"batches": batches, "streamed": streamed}[what](carry, out, "--tiny" in sys.argv)
