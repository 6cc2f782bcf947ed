"""Speed-target benchmark (issue 16) on SmolLM2-135M → docs/results/speedtarget.md (+ .json).

For each target — 1.25×, 1.5×, 2× decode (batch 1) and 1.5× prefill (1×2048) — four plans that
each reach it, *measured*: BlockPruner alone, FASP alone, FASP ``--multiple-of 64`` alone (each
pushed one step further until its measured speed-up reaches the target) and the combined plan
that ``--target-speedup`` chooses. Columns: measured speed-up (interleaved with the dense model,
medians), predicted speed-up, ratio_total, WikiText-2 ppl (seqlen 512), zero-shot PIQA /
HellaSwag / ARC-e (first 500 items). bf16 where the CPU runs it natively (recorded).

    PRUNEKIT_DATA_DIR=../shared/data python bench/speedtarget.py [--targets decode:1.25 ...]

One BlockPruner search (``--depth-blocks`` steps) serves every target: its prefixes are the
depth plans. Not run yet: the TODO(issue16-A/B) lines call the combined-plan and latency-table
code of the other two parts of issue 16 and are wired when those land.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from results_notes import NOTES_MARKER, kept_notes

from prunekit.api import prune
from prunekit.evaluation.perplexity import perplexity
from prunekit.evaluation.speed import SpeedSettings, measure_speed, speedups
from prunekit.evaluation.zeroshot import zeroshot
from prunekit.methods.depth.calibration import settings_windows
from prunekit.methods.registry import PruneSettings, get_method
from prunekit.models.dtype import cpu_has_native_bf16
from prunekit.models.loading import LoadedModel, load_model
from prunekit.report.accounting import parameter_counts, pruning_ratios
from prunekit.speedtarget.losses import calibration_loss_fn, depth_prefix_plan, fresh_copy
from prunekit.speedtarget.report import speed_target_record
from prunekit.speedtarget.search import (
    DepthStep,
    Split,
    WidthRule,
    candidate_splits,
    depth_steps,
    search_speed_target,
)
from prunekit.surgery import apply_plan

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (("decode", 1.25), ("decode", 1.5), ("decode", 2.0), ("prefill", 1.5))
TASKS = ["piqa", "hellaswag", "arc_easy"]
ROWS = ("BlockPruner", "FASP", "FASP, multiple of 64", "combined")
PUSH_STEPS = 6  # at most this many pushes when a plan's measured speed-up misses the target
SPARSITY_PUSH = 0.02  # one push of a width-only plan


@dataclasses.dataclass
class Row:
    target: str
    plan: str
    k: int
    sparsity: float
    multiple_of: int
    predicted: float
    measured: float | None = None
    ratio_total: float | None = None
    wikitext2: float | None = None
    zeroshot: dict = dataclasses.field(default_factory=dict)
    calib_ppl: float | None = None


def speed_settings(phase: str, runs: int) -> SpeedSettings:
    """The one case a target is measured on: decode batch 1, or one 2048-token prefill."""
    if phase == "decode":
        return SpeedSettings(prefill_shapes=[], decode_batches=[1], decode_runs=runs, runs=runs)
    return SpeedSettings(prefill_shapes=[(1, 2048)], decode_batches=[], runs=runs)


def measured_speedup(dense: LoadedModel, pruned: LoadedModel, phase: str, runs: int) -> float:
    """Throughput ratio vs the dense model, timed interleaved in this process (medians)."""
    results = measure_speed({"dense": dense, "pruned": pruned}, speed_settings(phase, runs))
    (case,) = speedups(results, "dense").values()
    return case["pruned"]


def latency_predictor(dense: LoadedModel, phase: str, table_path: Path | None):
    """predict(structure) -> seconds for ``phase``, and the dense structure."""
    # TODO(issue16-B): from prunekit.latency.table import LatencyTable, predict_latency,
    # structure_of; table = LatencyTable.load(table_path) if table_path else the `prunekit
    # profile` of ``dense`` at batch 1 / prompt 2048 / gen 128 on this machine.
    raise NotImplementedError("the latency table (issue 16, part 2) is not merged yet")


def build_split(plan_depth, settings: PruneSettings, rule: WidthRule) -> Callable:
    """build(copy, split): the first k depth steps, then FASP at s_k on the depth-pruned copy."""

    def build(candidate: LoadedModel, split: Split) -> None:
        if split.k:
            apply_plan(candidate, depth_prefix_plan(plan_depth, split.k))
        if split.sparsity > 0:
            width = dataclasses.replace(
                settings,
                sparsity=split.sparsity,
                ratio=None,
                targets=list(rule.targets),
                multiple_of=rule.multiple_of,
            )
            # TODO(issue16-A): FASP on a depth-pruned model (BlockwiseDecoderLayer) needs the
            # combined-plan work; until then this raises UnsupportedArchitectureError for k > 0.
            get_method("fasp").prune(candidate, width)

    return build


def pushed_split(split: Split, steps: list[DepthStep], push: int, width_only: bool) -> Split:
    """``split`` pushed ``push`` times: more sparsity (width only) or more blocks (depth only)."""
    if width_only:
        return dataclasses.replace(split, sparsity=min(0.95, split.sparsity + push * SPARSITY_PUSH))
    k = min(len(steps), split.k + push)
    blocks = tuple(b for step in steps[:k] for b in step.blocks)
    return dataclasses.replace(split, k=k, removed_blocks=blocks)


def until_measured(
    dense: LoadedModel,
    split: Split,
    steps: list[DepthStep],
    build: Callable,
    phase: str,
    target: float,
    runs: int,
    width_only: bool,
) -> tuple[Split, LoadedModel, float]:
    """Build ``split``, measure it, and push it until its measured speed-up reaches ``target``."""
    for push in range(PUSH_STEPS + 1):
        candidate = pushed_split(split, steps, push, width_only)
        pruned = fresh_copy(dense)
        build(pruned, candidate)
        measured = measured_speedup(dense, pruned, phase, runs)
        if measured >= target:
            break
    return candidate, pruned, measured


def evaluate(dense: LoadedModel, pruned: LoadedModel, row: Row, args) -> None:
    before = parameter_counts(dense.model, dense.adapter)
    after = parameter_counts(pruned.model, pruned.adapter)
    row.ratio_total = pruning_ratios(before, after)["ratio_total"]
    row.wikitext2 = perplexity(pruned, "wikitext2", seqlen=512, max_windows=args.eval_windows).ppl
    scores = zeroshot(pruned, TASKS, limit=args.limit)
    row.zeroshot = {name: task.acc for name, task in scores.tasks.items()}


def run_target(dense, plan_depth, settings, phase, target, args) -> tuple[list[Row], dict]:
    predict, structure = latency_predictor(dense, phase, args.table)
    steps = depth_steps(plan_depth.trajectory)
    windows = settings_windows(dense, settings)
    rule = WidthRule()
    loss_of = calibration_loss_fn(dense, windows, build_split(plan_depth, settings, rule))
    result = search_speed_target(structure, steps, predict, target, phase, loss_of, rule)
    rule64 = WidthRule(multiple_of=64)
    fasp64 = candidate_splits(structure, [], predict, target, rule64)[0]
    label = f"{target:g}x {phase}"
    plans = (  # (row, split, rule, width only)
        ("BlockPruner", result.depth_only, rule, False),
        ("FASP", result.width_only, rule, True),
        ("FASP, multiple of 64", fasp64, rule64, True),
        ("combined", result.chosen, rule, False),
    )
    rows = []
    for name, split, plan_rule, width_only in plans:
        if split is None:
            continue
        build = build_split(plan_depth, settings, plan_rule)
        if name == "combined":
            pruned = fresh_copy(dense)
            build(pruned, split)
            measured = measured_speedup(dense, pruned, phase, args.runs)
        else:
            split, pruned, measured = until_measured(
                dense, split, steps, build, phase, target, args.runs, width_only
            )
        row = Row(label, name, split.k, split.sparsity, plan_rule.multiple_of, split.speedup)
        row.measured = measured
        # The search's measured loss, for the splits it priced (not pushed, same width rule).
        loss = (
            result.losses.get(split.k) if plan_rule is rule and split in result.candidates else None
        )
        row.calib_ppl = math.exp(loss) if loss is not None else None
        evaluate(dense, pruned, row, args)
        rows.append(row)
        del pruned
    return rows, speed_target_record(result)


def render(rows: list[Row], meta: dict) -> str:
    lines = [
        "# Prune to a speed: combined depth + width plans (issue 16)",
        "",
        f"SmolLM2-135M, {meta['dtype']} on {meta['cpu']} ({meta['threads']} threads); "
        f"WikiText-2 seqlen 512, zero-shot first {meta['limit']} items. "
        "Generated by `bench/speedtarget.py`.",
        "",
        "| target | plan | blocks | sparsity | predicted | measured | ratio_total | WikiText-2 "
        "| PIQA | HellaSwag | ARC-e |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = [f"{100 * r.zeroshot.get(t, float('nan')):.1f}" for t in TASKS]
        lines.append(
            f"| {r.target} | {r.plan} | {r.k} | {r.sparsity:.3f} | {r.predicted:.2f}× "
            f"| {r.measured:.2f}× | {r.ratio_total:.3f} | {r.wikitext2:.2f} | " + " | ".join(acc)
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth-blocks", type=int, default=30, help="BlockPruner search steps")
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=None)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--table", type=Path, default=None, help="a `prunekit profile` table")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/speedtarget.md")
    args = parser.parse_args()

    dtype = "bf16" if cpu_has_native_bf16() else "fp32"
    dense = load_model("smollm2-135m", dtype=dtype, device="cpu")
    settings = PruneSettings(calib="c4", n_samples=args.n_samples, seqlen=args.seqlen, seed=0)
    started = time.perf_counter()
    depth = prune(
        fresh_copy(dense),
        "blockpruner",
        blocks=args.depth_blocks,
        **{k: getattr(settings, k) for k in ("calib", "n_samples", "seqlen", "seed")},
    ).plan
    meta = {
        "dtype": dtype,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "limit": args.limit,
        "depth_search_s": time.perf_counter() - started,
    }
    rows, records = [], {}
    for phase, target in TARGETS:
        target_rows, record = run_target(dense, depth, settings, phase, target, args)
        rows += target_rows
        records[f"{phase}:{target:g}"] = record
        notes = kept_notes(args.out)
        args.out.write_text(render(rows, meta) + "\n" + NOTES_MARKER + "\n" + notes)
        data = {"meta": meta, "rows": [dataclasses.asdict(r) for r in rows], "search": records}
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
