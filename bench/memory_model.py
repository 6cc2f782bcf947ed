"""Predicted peak memory of FASP on 8B / 32B / 70B shapes: docs/results/memory_model.md.

The configs are built from the models' published dimensions; ``prunekit.memory.plan_memory``
reads nothing else. Run: ``python bench/memory_model.py``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import LlamaConfig, Qwen2Config

from prunekit.memory import GiB, MemorySettings, plan_memory

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "memory_model.md"
MODELS = {
    "Llama-3.1-8B": LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        tie_word_embeddings=False,
    ),
    "Qwen2.5-32B": Qwen2Config(
        hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
        num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "Llama-3.1-70B": LlamaConfig(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
        tie_word_embeddings=False,
    ),
}  # fmt: skip
CALIBRATIONS = ((128, 2048), (16, 1024))  # the FASP paper's, and a small one


def rows() -> list[str]:
    lines = []
    for name, config in MODELS.items():
        for n_samples, seqlen in CALIBRATIONS:
            for streamed in (False, True):
                settings = MemorySettings(
                    method="fasp", streamed=streamed, n_samples=n_samples, seqlen=seqlen,
                    dtype="bf16", device="cuda",
                )  # fmt: skip
                plan = plan_memory(config, settings)
                gpu, host = plan.peak("device"), plan.peak("host")
                cpu = plan_memory(config, MemorySettings(**{**settings.__dict__, "device": "cpu"}))
                lines.append(
                    f"| {name} | {plan.shapes.total_params / 1e9:.1f} B | {n_samples}×{seqlen} "
                    f"| {'streamed' if streamed else 'in memory'} | {gpu / GiB:.1f} "
                    f"| {host / GiB:.1f} | {cpu.peak('host') / GiB:.1f} |"
                )
    return lines


def main() -> None:
    header = [
        "# Memory model: predicted peaks of FASP (bf16, sparsity 0.2, batch 1, 2 GB shards)",
        "",
        "From `bench/memory_model.py` (`prunekit.memory.plan_memory` on configs built from the "
        "published dimensions; no weights read). GPU columns: compute on one GPU (device peak "
        "includes ~0.5 GiB CUDA context; host peak includes ~0.3 GiB of imports). CPU column: "
        "compute on the host, its whole peak. In memory the host also holds the model while "
        "`load_model` reads it before moving it to the GPU.",
        "",
        "| model | params | calibration N×T | mode | GPU: device GiB | GPU: host GiB "
        "| CPU only: host GiB |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(header + rows()) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
