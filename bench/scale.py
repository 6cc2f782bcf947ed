"""Streamed vs in-memory pruning: peak host memory and wall time -> docs/results/scale.md.

Models: SmolLM2-135M (the real checkpoint) and a synthetic ≈1.5B random Llama (bf16, built once
and cached under ~/.cache/prunekit/bench; SmolLM2's tokenizer). Methods: FASP (sparsity 0.2) and
BlockPruner (2 blocks). Each run is its own subprocess (``--child``), so one run's freed memory
cannot hide the next one's peak; the child samples its own ``RssAnon`` (anonymous memory: RSS and
``ru_maxrss`` count memory-mapped weight pages the kernel may drop) and ``VmRSS`` every 2 ms,
from a baseline taken after imports and the tokenized calibration text. In-memory and streamed
runs of one model alternate, so a drift of the shared machine hits both. The memory model's
prediction (``prunekit.memory.plan_memory``, config only) is printed beside each measured peak.

Run: ``python bench/scale.py [--models smollm2,synthetic-1.5b] [--only MODEL:METHOD,...]
[--dtype bf16|fp32] [--repeats 1]``. The dtype defaults to bf16 on a CPU with bf16 kernels
(AVX512-bf16 / AMX) and fp32 on an AVX2-only CPU, where bf16 is ~7x slower. ``--only`` reruns some
(model, method) pairs and keeps the other rows of docs/results/scale.json as they were; each row
says when, in which dtype and with how many threads it was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_MD = ROOT / "docs" / "results" / "scale.md"
OUT_JSON = ROOT / "docs" / "results" / "scale.json"
CACHE = Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit")) / "bench"
MiB = 1 << 20

# ≈1.59B parameters: 24 layers of 60.8M (GQA 16/4 heads) + untied 49k embeddings and head.
SYNTHETIC = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=4,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
METHODS = {
    "fasp": dict(sparsity=0.2),
    "blockpruner": dict(blocks=2),
}
# Small calibration: the point is memory and the streamed/in-memory ratio, not plan quality.
CALIBRATION = dict(calib="c4", n_samples=4, seqlen=128, seed=0)


def default_dtype() -> str:
    """bf16 where the CPU has bf16 kernels; fp32 on AVX2-only CPUs (bf16 is ~7x slower there)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def cpu_kind() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-bf16"), ("avx2", "AVX2")):
        if flag in flags:
            return name
    return "other"


def synthetic_model() -> Path:
    """The ≈1.5B random Llama in bf16, 500 MB shards; built once (a minute), then reused."""
    target = CACHE / "synthetic-llama-1.5b"
    if (target / "config.json").exists():
        return target
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from prunekit.models.loading import resolve_model_dir

    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=CACHE))
    torch.manual_seed(0)
    config = LlamaConfig(**SYNTHETIC)
    model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(staging, max_shard_size="500MB")
    AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m")).save_pretrained(staging)
    del model
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def model_source(name: str) -> str:
    if name == "smollm2":
        from prunekit.models.loading import resolve_model_dir

        return str(resolve_model_dir("smollm2-135m"))
    if name == "synthetic-1.5b":
        return str(synthetic_model())
    raise SystemExit(f"unknown model {name!r}: smollm2 or synthetic-1.5b")


# ---- the child: one run, its own peaks -------------------------------------------------------


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(mode: str, source: str, method: str, save: str, dtype: str) -> None:
    import threading

    from transformers import AutoTokenizer

    import prunekit.api as api
    from prunekit.data import corpus_tokens
    from prunekit.methods.catalogue import get_method
    from prunekit.models.loading import load_model

    get_method(method)
    corpus_tokens(AutoTokenizer.from_pretrained(source), CALIBRATION["calib"])
    baseline = {"RssAnon": _status_bytes("RssAnon"), "VmRSS": _status_bytes("VmRSS")}
    peak = dict(baseline)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for field in peak:
                peak[field] = max(peak[field], _status_bytes(field))
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    settings = {**CALIBRATION, **METHODS[method]}
    started = time.perf_counter()
    if mode == "streamed":
        result = api.prune(
            source, method, stream=True, save=save, dtype=dtype, device="cpu", **settings
        )
    else:
        loaded = load_model(source, dtype=dtype, device="cpu")
        result = api.prune(loaded, method, **settings)
    seconds = time.perf_counter() - started
    # The setting that decides the plan's quality, as the run recorded it (the defaults).
    used = result.plan.settings
    setting = used.get("criterion") or used.get("allocation") or "-"
    stop.set()
    thread.join()
    growth = {field: peak[field] - baseline[field] for field in peak}
    print("RESULT " + json.dumps({"seconds": seconds, "growth": growth, "setting": setting}))


def run_child(mode: str, source: str, method: str, dtype: str) -> dict:
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "65536"}
    env.setdefault("PRUNEKIT_PROGRESS", "0")
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        save = str(Path(tmp) / "pruned")
        command = [sys.executable, __file__, "--child", mode, source, method, save, dtype]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} {method} on {source} failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


# ---- the table -------------------------------------------------------------------------------


def predicted(source: str, method: str, streamed: bool, dtype: str) -> int | None:
    from prunekit.memory import MemorySettings, plan_memory_for

    settings = MemorySettings(
        method=method,
        streamed=streamed,
        n_samples=CALIBRATION["n_samples"],
        seqlen=CALIBRATION["seqlen"],
        dtype=dtype,
        device="cpu",
    )
    try:
        return plan_memory_for(source, settings).peak("host")
    except Exception as error:  # a method the memory model does not know yet: say so in the row
        print(f"  (no prediction for {method}: {error})", file=sys.stderr)
        return None


def one_layer_bytes(source: str, dtype: str) -> int:
    from transformers import AutoConfig

    from prunekit.models.families import model_shapes

    per_param = 2 if dtype == "bf16" else 4
    return model_shapes(AutoConfig.from_pretrained(source)).layer_params * per_param


def measure(pairs: list[tuple[str, str]], repeats: int, dtype: str) -> list[dict]:
    import datetime

    import torch

    when = datetime.date.today().isoformat()
    rows = []
    for name, method in pairs:
        source = model_source(name)
        runs: dict[str, list[dict]] = {"in-memory": [], "streamed": []}
        for _ in range(repeats):
            for mode in runs:  # alternate: a drift of the shared machine hits both
                print(f"{name} {method} {mode} ...", file=sys.stderr, flush=True)
                runs[mode].append(run_child(mode, source, method, dtype))
        for mode, results in runs.items():
            rows.append(
                {
                    "model": name,
                    "method": method,
                    "mode": mode,
                    "setting": results[0]["setting"],
                    "seconds": statistics.median(r["seconds"] for r in results),
                    "anon_mib": max(r["growth"]["RssAnon"] for r in results) / MiB,
                    "rss_mib": max(r["growth"]["VmRSS"] for r in results) / MiB,
                    "predicted_mib": _mib(predicted(source, method, mode == "streamed", dtype)),
                    "layer_mib": one_layer_bytes(source, dtype) / MiB,
                    "dtype": dtype,
                    "threads": torch.get_num_threads(),
                    "cpu": cpu_kind(),
                    "date": when,
                }
            )
    return rows


def _mib(value: int | None) -> float | None:
    return None if value is None else value / MiB


# Rows measured before the bench recorded their provenance (stop 13, 2026-11-30): bf16, 2 threads,
# on a CPU with bf16 kernels (its kind was not recorded; bf16 at those speeds rules out AVX2-only),
# with the settings of the time (the streamed ones then fell back to ppl-per-param / uniform).
OLD_ROW = {
    "setting": "not recorded",
    "dtype": "bf16",
    "threads": 2,
    "cpu": "bf16 CPU",
    "date": "2026-11-30",
}


def render(rows: list[dict], wall: float) -> str:
    import platform

    lines = [
        "# Big models: streamed vs in-memory pruning (peak host memory, wall time)",
        "",
        f"Last invocation of `bench/scale.py`: {wall / 60:.1f} min. CPU ({platform.machine()}); "
        "each row says its dtype, threads and date (an invocation with `--only` reruns some "
        "pairs and keeps the other rows); calibration "
        f"{CALIBRATION['n_samples']}×{CALIBRATION['seqlen']} {CALIBRATION['calib']} tokens. "
        "Peaks are the growth of the process's anonymous memory (`RssAnon`) and of its RSS over "
        "a baseline after imports and tokenization; RSS also counts memory-mapped checkpoint "
        "pages, which the kernel can drop. Predicted: `prunekit plan-memory` for the same run. "
        "The machine is shared (2 cores): wall times are indicative.",
        "",
        "| model | method | criterion / allocation | mode | peak RssAnon (MiB) | peak RSS (MiB) "
        "| predicted (MiB) | one layer (MiB) | wall (s) | streamed / in-memory "
        "| measured on |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        row = {**OLD_ROW, **row}
        pair = [r for r in rows if r["model"] == row["model"] and r["method"] == row["method"]]
        ratio = ""
        if row["mode"] == "streamed":
            memory = next(r for r in pair if r["mode"] == "in-memory")
            ratio = f"{row['seconds'] / memory['seconds']:.2f}×"
        prediction = "-" if row["predicted_mib"] is None else f"{row['predicted_mib']:.0f}"
        lines.append(
            f"| {row['model']} | {row['method']} | {row['setting']} | {row['mode']} "
            f"| {row['anon_mib']:.0f} "
            f"| {row['rss_mib']:.0f} | {prediction} | {row['layer_mib']:.0f} "
            f"| {row['seconds']:.1f} | {ratio} "
            f"| {row['date']}, {row['dtype']}, {row['threads']} thr, {row['cpu']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,synthetic-1.5b")
    parser.add_argument("--only", default=None, help="model:method pairs to rerun, comma-separated")
    parser.add_argument("--dtype", default=default_dtype(), choices=["bf16", "fp32"])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.only:
        pairs = [tuple(pair.split(":", 1)) for pair in args.only.split(",")]
    else:
        pairs = [(name, method) for name in args.models.split(",") for method in METHODS]
    unknown = [pair for pair in pairs if len(pair) != 2 or pair[1] not in METHODS]
    if unknown:
        raise SystemExit(f"--only takes model:method pairs with a method in {list(METHODS)}")
    started = time.perf_counter()
    kept = []
    if OUT_JSON.exists():  # the pairs not (yet) rerun keep their rows, in their order
        kept = json.loads(OUT_JSON.read_text())["rows"]
    fresh: list[dict] = []
    for pair in pairs:  # the table is written after each pair: a long run keeps what it measured
        fresh += measure([pair], args.repeats, args.dtype)
        write_table(merged(kept, fresh), time.perf_counter() - started)


def merged(kept: list[dict], fresh: list[dict]) -> list[dict]:
    """The fresh rows in place of the kept rows of the same (model, method), in the kept order."""
    rerun = {(row["model"], row["method"]) for row in fresh}
    order = [(row["model"], row["method"]) for row in kept]

    def position(row: dict) -> int:
        key = (row["model"], row["method"])
        return order.index(key) if key in order else len(order)

    rows = [row for row in kept if (row["model"], row["method"]) not in rerun]
    return sorted(rows + fresh, key=position)


def write_table(rows: list[dict], wall: float) -> None:
    text = render(rows, wall)
    print(text)
    sys.path.insert(0, str(ROOT / "bench"))
    from results_notes import NOTES_MARKER, kept_notes

    OUT_MD.write_text(f"{text}\n{NOTES_MARKER}\n\n{kept_notes(OUT_MD)}")
    OUT_JSON.write_text(json.dumps({"rows": rows, "wall_seconds": wall}, indent=1) + "\n")


if __name__ == "__main__":
    main()
