"""Does the latency table predict real speed-ups? Predicted vs measured on >= 6 pruned models.

    PRUNEKIT_DATA_DIR=../shared/data python bench/latency_model.py [--dtype bf16] [--device cpu]

On SmolLM2-135M: profile the dense model once per phase (``prunekit.latency.profile``: prefill
of 1 x --prefill-len tokens; decode of --profile-gen-len tokens after a --decode-prompt prompt),
then build pruned models whose plans need not be good (small calibration): BlockPruner's
removals of docs/results/depth.md at ratio_total ~0.22 and a prefix of them (~0.1), SLEB at two
ratios, FASP at two sparsities, FASP --multiple-of 64, and FASP then 8 blocks removed. Their
speed-up over the dense model is measured by bench-speed's own code
(``prunekit.evaluation.speed.measure_speed``: all models interleaved run by run, medians), for
prefill 1 x --prefill-len and decode batch 1 (--new-tokens after a --decode-prompt prompt), and
set beside ``predicted_speedup`` of their structures (``structure_of``), with the error.

Writes docs/results/latency_model.json and the section between LATENCY_START/LATENCY_END of
docs/results/speedtarget.md (replaced in place, or appended: the rest of that file belongs to
bench/speedtarget.py, which should keep this marked section).

Run it alone: every number is a timing. On a machine shared with another job the OpenMP threads
of both fight for the cores and small decode kernels slow down 3-30x, unevenly.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from prunekit.api import prune
from prunekit.evaluation.speed import SpeedSettings, measure_speed, speedups
from prunekit.latency.profile import ProfileSettings, profile_model
from prunekit.latency.structure import structure_of
from prunekit.latency.table import LatencyTable, predicted_speedup
from prunekit.models.dtype import cpu_has_native_bf16
from prunekit.models.loading import LoadedModel, count_parameters, load_model
from prunekit.plan import PruningPlan
from prunekit.surgery import apply_plan

ROOT = Path(__file__).resolve().parents[1]
LATENCY_START = "<!-- latency-model:start (bench/latency_model.py rewrites this section) -->"
LATENCY_END = "<!-- latency-model:end -->"
# BlockPruner (ppl-per-param) at ratio_total ~0.22 in removal order (docs/results/depth.md).
DEPTH_BLOCKS = [
    "6.attn",
    "7.attn",
    "5.attn",
    "29.attn",
    "26.attn",
    "17.mlp",
    "18.attn",
    "27.mlp",
    "18.mlp",
    "19.attn",
    "16.mlp",
    "17.attn",
    "5.mlp",
    "4.mlp",
    "13.mlp",
    "14.attn",
    "14.mlp",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default=None, help="default: bf16 where the CPU has it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prefill-len", type=int, default=2048)
    parser.add_argument("--decode-prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128, help="bench-speed decode tokens")
    parser.add_argument("--profile-gen-len", type=int, default=32, help="decode tokens profiled")
    parser.add_argument("--profile-runs", type=int, default=3)
    parser.add_argument("--grid-steps", type=int, default=8, help="profile widths: every 1/N")
    parser.add_argument("--runs", type=int, default=5, help="bench-speed runs per model")
    parser.add_argument("--n-samples", type=int, default=4, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=256, help="calibration window tokens")
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--json", type=Path, default=ROOT / "docs/results/latency_model.json")
    parser.add_argument("--md", type=Path, default=ROOT / "docs/results/speedtarget.md")
    return parser.parse_args()


def bench_dtype(args: argparse.Namespace) -> tuple[str, str]:
    """(dtype, why): bf16 on CPUs with native bf16 (AMX / AVX512-BF16), else fp32."""
    if args.dtype:
        return args.dtype, "--dtype"
    if args.device.startswith("cuda") or cpu_has_native_bf16():
        return "bf16", "native bf16 on this device (AMX/AVX512-BF16 on a CPU)"
    return "fp32", "no native bf16 on this CPU"


def depth(blocks: list[str]) -> Callable[[LoadedModel, argparse.Namespace], dict]:
    def build(loaded: LoadedModel, args: argparse.Namespace) -> dict:
        apply_plan(loaded, PruningPlan("blockpruner", loaded.identity(), removed_blocks=blocks))
        return {"removed_blocks": len(blocks), "source": "docs/results/depth.md (greedy order)"}

    return build


def method(name: str, **settings) -> Callable[[LoadedModel, argparse.Namespace], dict]:
    def build(loaded: LoadedModel, args: argparse.Namespace) -> dict:
        calib = {"calib": "c4", "n_samples": args.n_samples, "seqlen": args.seqlen, "seed": 0}
        prune(loaded, name, **calib, **settings)
        return dict(settings)

    return build


def width_then_depth(name: str, blocks: list[str], **settings):
    """A width plan, then blocks removed from the narrowed model (a mixed shape to price)."""

    def build(loaded: LoadedModel, args: argparse.Namespace) -> dict:
        info = method(name, **settings)(loaded, args)
        depth(blocks)(loaded, args)
        return {**info, "removed_blocks": len(blocks)}

    return build


VARIANTS: dict[str, Callable[[LoadedModel, argparse.Namespace], dict]] = {
    "blockpruner-0.22": depth(DEPTH_BLOCKS),
    "blockpruner-0.10": depth(DEPTH_BLOCKS[:8]),
    "sleb-0.1": method("sleb", ratio=0.1),
    "sleb-0.2": method("sleb", ratio=0.2),
    # Uniform widths (the names give the one sparsity); "fasp-r0.2" has per-layer widths.
    "fasp-0.2": method("fasp", sparsity=0.2, allocation="uniform"),
    "fasp-0.4": method("fasp", sparsity=0.4, allocation="uniform"),
    "fasp-m64-0.3": method("fasp", sparsity=0.3, multiple_of=64, allocation="uniform"),
    "fasp-r0.2": method("fasp", ratio=0.2, allocation="cost"),
    "fasp-0.2+blocks-8": width_then_depth(
        "fasp", DEPTH_BLOCKS[:8], sparsity=0.2, allocation="uniform"
    ),
}


def profile(dense: LoadedModel, args: argparse.Namespace) -> dict[str, LatencyTable]:
    prefill = ProfileSettings(
        batch=1,
        prompt_len=args.prefill_len,
        phases=("prefill",),
        runs=args.profile_runs,
        grid_steps=args.grid_steps,
    )
    decode = ProfileSettings(
        batch=1,
        prompt_len=args.decode_prompt,
        gen_len=args.profile_gen_len,
        phases=("decode",),
        runs=args.profile_runs,
        grid_steps=args.grid_steps,
    )
    tables = {}
    for phase, settings in (("prefill", prefill), ("decode", decode)):
        started = time.perf_counter()
        tables[phase] = profile_model(dense, settings)
        print(f"profiled {phase} in {time.perf_counter() - started:.1f} s", flush=True)
    return tables


def build_variants(args: argparse.Namespace, dtype: str) -> dict[str, tuple[LoadedModel, dict]]:
    names = args.only.split(",") if args.only else list(VARIANTS)
    built = {}
    for name in names:
        loaded = load_model(args.model, dtype=dtype, device=args.device)
        before = count_parameters(loaded.model)
        started = time.perf_counter()
        info = VARIANTS[name](loaded, args)
        info["ratio_total"] = 1 - count_parameters(loaded.model) / before
        info["build_s"] = round(time.perf_counter() - started, 1)
        print(f"built {name}: ratio_total {info['ratio_total']:.3f} in {info['build_s']} s")
        built[name] = (loaded, info)
    return built


def measure(dense: LoadedModel, built: dict, args: argparse.Namespace) -> dict:
    settings = SpeedSettings(
        prefill_shapes=[(1, args.prefill_len)],
        decode_batches=[1],
        new_tokens=args.new_tokens,
        decode_prompt=args.decode_prompt,
        runs=args.runs,
        decode_runs=args.runs,
    )
    models = {"dense": dense, **{name: loaded for name, (loaded, _) in built.items()}}
    results = measure_speed(models, settings)
    ratios = speedups(results, "dense")
    prefill = f"prefill 1x{args.prefill_len}"
    decode = f"decode b1 x{args.new_tokens}"
    return {"prefill": ratios[prefill], "decode": ratios[decode], "settings": settings.to_dict()}


def compare(tables: dict, dense: LoadedModel, built: dict, measured: dict) -> list[dict]:
    dense_structure = structure_of(dense)
    rows = []
    for name, (loaded, info) in built.items():
        row = {"model": name, **info}
        for phase in ("prefill", "decode"):
            predicted = predicted_speedup(
                tables[phase], dense_structure, structure_of(loaded), phase
            )
            real = measured[phase][name]
            row[phase] = {
                "predicted": predicted,
                "measured": real,
                "error": predicted / real - 1,
            }
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        LATENCY_START,
        "## Latency model validation",
        "",
        f"Machine: {env['cpu']} ({env['device']}), {env['threads']} threads, torch "
        f"{env['torch']}, dtype {env['dtype']} ({env['dtype_why']}), load average at start "
        f"{env['load_average']}. Generated by `python bench/latency_model.py` in "
        f"{report['seconds']:.0f} s.",
        "",
        "The latency table (`prunekit profile`, `prunekit.latency`) times one attention and one "
        "MLP block of the dense model at a grid of widths, plus the fixed part; a model's "
        "predicted latency is the sum of its blocks' entries and the fixed part "
        f"(prefill 1x{report['prefill_len']}; decode: {report['profile_gen_len']} tokens after a "
        f"{report['decode_prompt']}-token prompt; profiling took "
        f"{report['profile_seconds']['prefill']:.0f} s + "
        f"{report['profile_seconds']['decode']:.0f} s). Measured: bench-speed's code, all models "
        f"interleaved, medians of {report['runs']} runs (prefill 1x{report['prefill_len']}, "
        f"decode batch 1, {report['new_tokens']} tokens after a {report['decode_prompt']}-token "
        "prompt). Pruned models built with small calibration "
        f"({report['n_samples']} x {report['seqlen']} tokens of c4): the plans are not meant to "
        "be good, only different. Error = predicted / measured - 1. Per-layer entries are "
        "anchored on the dense model's measured time (factor "
        + ", ".join(
            f"{phase} {table['anchor'].get('factor', float('nan')):.3f}"
            f"{'' if table['anchor'].get('applied') else ' (not applied)'}"
            for phase, t in report["tables"].items()
            for table in [t["phases"][phase]]
        )
        + ").",
        "",
        "| model | ratio_total | prefill predicted | prefill measured | error | decode predicted "
        "| decode measured | error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        p, d = row["prefill"], row["decode"]
        lines.append(
            f"| {row['model']} | {row['ratio_total']:.3f} | {p['predicted']:.2f}x | "
            f"{p['measured']:.2f}x | {p['error']:+.1%} | {d['predicted']:.2f}x | "
            f"{d['measured']:.2f}x | {d['error']:+.1%} |"
        )
    errors = [abs(row[phase]["error"]) for row in report["rows"] for phase in ("prefill", "decode")]
    within = sum(e <= 0.10 for e in errors)
    lines += [
        "",
        f"Within 10 %: {within} of {len(errors)} predictions; largest error "
        f"{max(errors):.1%}, mean absolute error {sum(errors) / len(errors):.1%}.",
        LATENCY_END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of ``path`` (or append it; create the file if needed)."""
    text = path.read_text() if path.exists() else "# Speed target\n\n"
    if LATENCY_START in text and LATENCY_END in text:
        head, rest = text.split(LATENCY_START, 1)
        tail = rest.split(LATENCY_END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    args = parse_args()
    dtype, why = bench_dtype(args)
    started = time.perf_counter()
    load_average = os.getloadavg()[0]
    dense = load_model(args.model, dtype=dtype, device=args.device)
    tables = profile(dense, args)
    built = build_variants(args, dtype)
    measured = measure(dense, built, args)
    machine = tables["prefill"].machine
    report = {
        "environment": {
            "cpu": machine["cpu"],
            "device": args.device,
            "threads": machine["threads"],
            "torch": torch.__version__,
            "dtype": dtype,
            "dtype_why": why,
            "load_average": round(load_average, 2),
        },
        "prefill_len": args.prefill_len,
        "decode_prompt": args.decode_prompt,
        "new_tokens": args.new_tokens,
        "profile_gen_len": args.profile_gen_len,
        "runs": args.runs,
        "n_samples": args.n_samples,
        "seqlen": args.seqlen,
        "profile_seconds": {p: t.settings["seconds"] for p, t in tables.items()},
        "tables": {p: t.to_dict() for p, t in tables.items()},
        "measured": measured,
        "rows": compare(tables, dense, built, measured),
    }
    report["seconds"] = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    section = markdown(report)
    write_section(args.md, section)
    print(section)


if __name__ == "__main__":
    main()
