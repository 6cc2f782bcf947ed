"""Speed benchmark: SmolLM2-135M dense vs BlockPruner and FASP at ~20 % ratio_total.

    PRUNEKIT_DATA_DIR=../shared/data python bench/speed.py [--runs 5] [--decode-runs 3] ...
    python bench/speed.py --markdown-only     # rewrite speed.md from speed.json, no timing

Each pruned model is exported and reloaded (what a user would run), then all models are timed
in one process, interleaved run by run (prunekit.evaluation.speed). Writes
docs/results/speed.md and docs/results/speed.json (hand-written notes below NOTES_MARKER in
speed.md are kept when the tables are rewritten). The ideal speed-up is computed from the
parameters each phase multiplies by: decoder layers for prefill (only the last position reaches
the LM head), decoder layers plus the LM head for decode.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from results_notes import NOTES_MARKER, kept_notes

from prunekit.api import prune
from prunekit.evaluation.speed import SPEED_COLUMNS, SpeedSettings, speed_report, speed_rows
from prunekit.export.from_run import export_run
from prunekit.export.load import load_pruned
from prunekit.export.save import export_model
from prunekit.models.loading import load_model
from prunekit.report.compare import read_report

ROOT = Path(__file__).resolve().parents[1]


def ideal_speedups(dense, pruned) -> dict[str, float]:
    """1 / (fraction of weight-multiply work left), per phase (attention scores ignored)."""

    def decoder(m) -> int:
        return sum(p.numel() for p in m.adapter.layers(m.model).parameters())

    head = dense.model.get_output_embeddings().weight.numel()
    return {
        "prefill": decoder(dense) / decoder(pruned),
        "decode": (decoder(dense) + head) / (decoder(pruned) + head),
    }


def prune_and_reload(name: str, method: str, work: Path, args, **settings) -> tuple:
    loaded = load_model("smollm2-135m", dtype=args.dtype, device="cpu")
    started = time.perf_counter()
    result = prune(
        loaded,
        method,
        ratio=args.ratio,
        calib="c4",
        n_samples=args.n_samples,
        seqlen=args.seqlen,
        seed=0,
        **settings,
    )
    seconds = time.perf_counter() - started
    exported = export_model(result.loaded, work / name, plan=result.plan, report=result.report)
    print(
        f"{name}: ratio_total {result.report['params']['ratio_total']:.4f}, "
        f"{exported.format} format, pruned in {seconds:.0f} s",
        flush=True,
    )
    info = {
        "method": method,
        "settings": settings,
        "ratio_total": result.report["params"]["ratio_total"],
        "ratio_decoder": result.report["params"]["ratio_decoder"],
        "format": exported.format,
        "file_mb": exported.weight_bytes / 2**20,
        "file_dtype": exported.dtype,
        "prune_seconds": seconds,
    }
    return load_pruned(work / name, dtype=args.dtype, device="cpu"), info


def export_and_reload(name: str, run_dir: Path, work: Path, args) -> tuple:
    """A finished run directory (e.g. bench/depth.py's BlockPruner run), exported and reloaded:
    the same model without repeating its search."""
    report = read_report(run_dir)
    dtype = None if args.dtype == "auto" else args.dtype
    exported = export_run(run_dir, work / name, dtype=dtype)
    print(f"{name}: from {run_dir}, {exported.format} format", flush=True)
    info = {
        "method": report["method"],
        "settings": {"run": run_dir.name},
        "ratio_total": report["params"]["ratio_total"],
        "ratio_decoder": report["params"]["ratio_decoder"],
        "format": exported.format,
        "file_mb": exported.weight_bytes / 2**20,
        "file_dtype": exported.dtype,
        "prune_seconds": None,
    }
    return load_pruned(work / name, dtype=args.dtype, device="cpu"), info


def variant_rows(report: dict) -> list[str]:
    """One row per pruned model. Two sizes, each with its dtype: the weights as timed (in memory,
    the dtype of the timing) and the exported safetensors (the dtype the export was saved in)."""
    env = report["environment"]["models"]
    rows = [
        "| model | method | ratio_total | format | weights MB as timed | file MB (saved dtype) "
        "| ideal prefill | ideal decode |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, v in report["variants"].items():
        ideal = report["ideal_speedup"][name]
        rows.append(
            f"| {name} | {v['method']} {v['settings'] or ''} | {v['ratio_total']:.4f} "
            f"| {v['format']} | {env[name]['weight_mb']:.1f} ({env[name]['dtype']}) "
            f"| {v['file_mb']:.1f} ({v['file_dtype']}) | {ideal['prefill']:.2f}x "
            f"| {ideal['decode']:.2f}x |"
        )
    return rows


def write_markdown(report: dict, path: Path) -> None:
    s = report["settings"]
    env = report["environment"]
    lines = [
        "# Speed: SmolLM2-135M dense vs depth- and width-pruned",
        "",
        f"Machine: CPU, {env['threads']} threads, torch {env['torch']}, dtype "
        f"{env['models']['dense']['dtype']}, load average at start {report['load_average_start']}. "
        f"Generated by `python bench/speed.py {report['command']}`.",
        "",
        f"Protocol (docs/protocol.md, reduced where noted): prefill shapes "
        f"{', '.join(f'{b}x{t}' for b, t in s['prefill_shapes'])}, median of {s['runs']} runs "
        f"after {s['warmup']} warm-up; decode batches {s['decode_batches']}, "
        f"{s['new_tokens']} new tokens after a {s['decode_prompt']}-token prompt with the KV "
        f"cache, median of {s['decode_runs']} runs. All models in one process, interleaved run "
        "by run. Pruned models are exported and reloaded with `prunekit.load_pruned`. "
        f"Dense weights as timed: {env['models']['dense']['weight_mb']:.1f} MB "
        f"({env['models']['dense']['dtype']}).",
        "",
        *variant_rows(report),
        "",
        "| " + " | ".join(SPEED_COLUMNS) + " |",
        "|---|---|" + "---:|" * 6,
        *("| " + " | ".join(row) + " |" for row in speed_rows(report)),
        "",
        NOTES_MARKER,
        "",
    ]
    path.write_text("\n".join(lines) + "\n" + kept_notes(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--decode-runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prefill", default="1x2048,8x512")
    parser.add_argument("--decode-batches", default="1,16")
    parser.add_argument("--skip-multiple-of", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument(
        "--depth-run", type=Path, help="Use this BlockPruner run directory instead of searching."
    )
    parser.add_argument("--width-run", type=Path, help="Use this FASP run directory.")
    parser.add_argument(
        "--markdown-only",
        action="store_true",
        help="Rewrite speed.md from the speed.json in --out without timing anything.",
    )
    args = parser.parse_args()
    if args.markdown_only:
        write_markdown(json.loads((args.out / "speed.json").read_text()), args.out / "speed.md")
        return
    args.argv = " ".join(os.sys.argv[1:])
    args.load_start = f"{os.getloadavg()[0]:.1f}"
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dense = load_model("smollm2-135m", dtype=args.dtype, device="cpu")
        models = {"dense": dense}
        variants = {}
        plans = [("blockpruner", "blockpruner", {}), ("fasp", "fasp", {})]
        if not args.skip_multiple_of:
            plans.append(("fasp-m64", "fasp", {"multiple_of": 64}))
        runs = {"blockpruner": args.depth_run, "fasp": args.width_run}
        for name, method, extra in plans:
            if runs.get(name) is not None:
                models[name], variants[name] = export_and_reload(name, runs[name], work, args)
            else:
                models[name], variants[name] = prune_and_reload(name, method, work, args, **extra)
        ideal = {name: ideal_speedups(dense, models[name]) for name in variants}
        settings = SpeedSettings(
            prefill_shapes=[tuple(int(v) for v in s.split("x")) for s in args.prefill.split(",")],
            decode_batches=[int(v) for v in args.decode_batches.split(",")],
            new_tokens=args.new_tokens,
            runs=args.runs,
            decode_runs=args.decode_runs,
        )
        started = time.perf_counter()
        report = speed_report(models, settings, baseline="dense")
        report["measure_seconds"] = time.perf_counter() - started
    report["variants"] = variants
    report["ideal_speedup"] = ideal
    report["command"] = args.argv
    report["load_average_start"] = args.load_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, args.out / "speed.md")
    print((args.out / "speed.md").read_text())


if __name__ == "__main__":
    main()
