"""How long does ``make demo`` take after install? Times ``prunekit demo`` end to end.

    PRUNEKIT_DATA_DIR=../shared/data python bench/demo_time.py [--runs 2]

Each run is a fresh process (imports, model load and the one-time GGUF dequantization cache
included in the first: ``--cold`` clears that cache first), with progress bars off. Records the
CPU (model, whether bf16 is native), the dtype the demo chose, the wall time of each run and the
report's own timings (search, dense and pruned evaluation). Writes docs/results/demo.json and
docs/results/demo.md. The demo's target: at most 3 minutes on a 2-core AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from prunekit.models.dtype import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def time_demo(out: Path) -> dict:
    env = {**os.environ, "PRUNEKIT_PROGRESS": "0"}
    prunekit = Path(sys.executable).with_name("prunekit")
    started = time.perf_counter()
    subprocess.run([str(prunekit), "demo", "--out", str(out)], check=True, env=env)
    wall = time.perf_counter() - started
    report = json.loads((out / "report.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "timings": {k: round(v, 1) for k, v in report["timings"].items()},
        "dtype": report["model"]["fingerprint"]["dtype"],
        "ratio_total": report["params"]["ratio_total"],
        "removed": json.loads((out / "plan.json").read_text()).get("removed_blocks"),
        "ppl": {
            side: report["eval"][side]["ppl"]["wikitext2"]["ppl"] for side in ("dense", "pruned")
        },
    }


def write_page(rows: list[dict], meta: dict) -> None:
    results = ROOT / "docs" / "results"
    (results / "demo.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    lines = [
        "# `make demo`: time after install",
        "",
        f"CPU: {meta['cpu']} ({meta['cores']} cores, torch capability {meta['capability']}, "
        f"native bf16: {meta['native_bf16']}); torch {meta['torch']}. "
        "Written by `python bench/demo_time.py` (one invocation).",
        "",
        "| run | dtype | wall s | search s | dense eval s | pruned eval s | ratio_total | "
        "dense ppl | pruned ppl |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, row in enumerate(rows, 1):
        t = row["timings"]
        lines.append(
            f"| {i}{' (cold cache)' if row.get('cold') else ''} | {row['dtype']} | "
            f"{row['wall_s']} | "
            f"{t.get('prune')} | {t.get('eval_dense')} | {t.get('eval_pruned')} | "
            f"{row['ratio_total']:.4f} | {row['ppl']['dense']:.2f} | {row['ppl']['pruned']:.2f} |"
        )
    lines += [
        "",
        "Wall time is the whole `prunekit demo` process: Python and torch imports, loading the "
        "model (a cold cache also dequantizes the GGUF once), the search, both evaluations and "
        "writing the run directory. Not counted: `make install` (venv, torch, dependencies).",
        "",
    ]
    (results / "demo.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--cold", action="store_true", help="clear the dequantized SmolLM2 cache before run 1"
    )
    args = parser.parse_args()
    meta = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.cold:
        from prunekit.models.loading import gguf_cache_path, smollm2_gguf_path

        cache = gguf_cache_path(smollm2_gguf_path())
        if cache.exists():
            shutil.rmtree(cache)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            row = time_demo(Path(tmp) / f"demo{run}")
            row["cold"] = args.cold and run == 0
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_page(rows, meta)
    print((ROOT / "docs" / "results" / "demo.md").read_text())


if __name__ == "__main__":
    main()
