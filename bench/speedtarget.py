"""Speed-target benchmark (issue 16) on SmolLM2-135M → docs/results/speedtarget.md (+ .json).

For each target — 1.25×, 1.5×, 2× decode (batch 1) and 1.5× prefill (1×2048) — four plans that
each reach it, *measured*: BlockPruner alone, FASP alone, FASP ``--multiple-of 64`` alone (each
pushed one step further until its measured speed-up reaches the target) and the combined plan
that ``--target-speedup`` chooses. Columns: measured speed-up (interleaved with the dense model,
medians), predicted speed-up, ratio_total, WikiText-2 ppl (seqlen 512), zero-shot PIQA /
HellaSwag / ARC-e (first 500 items). bf16 where the CPU runs it natively (recorded).

    PRUNEKIT_DATA_DIR=../shared/data python bench/speedtarget.py [--targets decode:1.25 ...]
        [--table latency.json] [--depth-blocks N]

The latency tables are ``prunekit profile``'s: one per phase, profiled here on the dense model
with the workload ``prune --target-speedup`` uses (decode: batch 1, 32-token prompt, 128 new
tokens, as bench-speed; prefill: 1 x 2048) and saved beside the page as
speedtarget-latency-<phase>.json, unless ``--table`` gives one. One BlockPruner search serves
every target (its prefixes are the depth plans; the greedy search is prefix-consistent), run
for the most steps any target needs (``depth_blocks_bound``) unless ``--depth-blocks`` caps it.
Every plan is built as ``prune --target-speedup`` builds its choice
(``prunekit.speedtarget.prune.split_stages``: the depth prefix, then FASP at s on what it left).
The section between the latency-model markers (bench/latency_model.py) is kept.
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
from latency_model import LATENCY_END, LATENCY_START
from results_notes import NOTES_MARKER, kept_notes

from prunekit.api import prune
from prunekit.errors import SettingsError
from prunekit.evaluation.perplexity import perplexity
from prunekit.evaluation.speed import SpeedSettings, measure_speed, speedups
from prunekit.evaluation.zeroshot import zeroshot
from prunekit.latency.profile import ProfileSettings, profile_model
from prunekit.latency.structure import ModelStructure, structure_of
from prunekit.latency.table import LatencyTable, predict_latency
from prunekit.methods.catalogue import get_method
from prunekit.methods.depth.blockpruner import PAPER_SETTING
from prunekit.methods.settings import MethodSettings
from prunekit.models.dtype import cpu_has_native_bf16
from prunekit.models.loading import LoadedModel, load_model
from prunekit.report.accounting import parameter_counts, pruning_ratios
from prunekit.speedtarget.losses import fresh_copy
from prunekit.speedtarget.prune import SPEED_METHOD, WORKLOADS
from prunekit.speedtarget.prune import build_split as speed_build_split
from prunekit.speedtarget.report import speed_target_record
from prunekit.speedtarget.run import choose_split
from prunekit.speedtarget.search import (
    DepthStep,
    Split,
    WidthRule,
    candidate_splits,
    depth_blocks_bound,
    depth_steps,
)

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
    note: str | None = None  # why the plan has no row of numbers (it cannot reach the target)


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


def latency_table(dense: LoadedModel, phase: str, args) -> LatencyTable:
    """``--table``, or this machine's profile of ``dense`` for ``phase`` (saved beside the page)
    with the workload ``prune --target-speedup`` profiles on the fly."""
    if args.table is not None:
        table = LatencyTable.load(args.table)
        table.phase(phase)
        return table
    workload = dict(WORKLOADS[phase])
    if args.profile_prompt_len:
        workload["prompt_len"] = args.profile_prompt_len
    if args.profile_gen_len:
        workload["gen_len"] = args.profile_gen_len
    settings = ProfileSettings(phases=(phase,), runs=args.profile_runs, **workload)
    table = profile_model(dense, settings)
    table.save(args.out.with_name(f"{args.out.stem}-latency-{phase}.json"))
    return table


def latency_predictor(
    dense: LoadedModel, phase: str, table: LatencyTable
) -> tuple[Callable[[ModelStructure], float], ModelStructure]:
    """predict(structure) -> seconds for ``phase``, and the dense structure."""

    def predict(structure: ModelStructure) -> float:
        return predict_latency(table, structure, phase)  # type: ignore[arg-type]

    return predict, structure_of(dense)


def build_split(plan_depth, settings: MethodSettings, rule: WidthRule) -> Callable:
    """build(copy, split): what ``prune --target-speedup`` builds for a split — the first k
    depth steps replayed, then FASP at s_k (``rule``'s targets and multiple) on what they left."""
    width = dataclasses.replace(settings, targets=list(rule.targets), multiple_of=rule.multiple_of)
    build = speed_build_split(width)
    return lambda candidate, split: build(candidate, split, plan_depth)


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
    args,
    width_only: bool,
) -> tuple[Split, LoadedModel, float]:
    """Build ``split``, measure it, and push it until its measured speed-up reaches ``target``
    (at most ``--push-steps`` times)."""
    runs = args.runs
    for push in range(args.push_steps + 1):
        candidate = pushed_split(split, steps, push, width_only)
        pruned = fresh_copy(dense)
        build(pruned, candidate)
        measured = measured_speedup(dense, pruned, phase, runs)
        if measured >= target:
            break
    return candidate, pruned, measured


# The same plan often wins two rows (the combined choice is a pure plan when a mix does not pay):
# its quality numbers are computed once. Key: the blocks removed, the sparsity, the width rule.
EVALUATED: dict[tuple, tuple[float, float, dict]] = {}


def evaluate(dense: LoadedModel, pruned: LoadedModel, row: Row, split: Split, args) -> None:
    key = (tuple(split.removed_blocks), round(split.sparsity, 6), row.multiple_of)
    if key not in EVALUATED:
        before = parameter_counts(dense.model, dense.adapter)
        after = parameter_counts(pruned.model, pruned.adapter)
        ratio = pruning_ratios(before, after)["ratio_total"]
        ppl = perplexity(pruned, "wikitext2", seqlen=512, max_windows=args.eval_windows).ppl
        scores = zeroshot(pruned, TASKS, limit=args.limit)
        EVALUATED[key] = (ratio, ppl, {name: task.acc for name, task in scores.tasks.items()})
    row.ratio_total, row.wikitext2, row.zeroshot = EVALUATED[key]


def run_target(dense, plan_depth, settings, phase, target, table, args) -> tuple[list[Row], dict]:
    predict, structure = latency_predictor(dense, phase, table)
    steps = depth_steps(plan_depth.trajectory)
    # The choice ``prune --target-speedup`` makes, on the one depth search every target shares.
    build = speed_build_split(settings)
    result = choose_split(dense, settings, target, phase, structure, predict, build, plan_depth)
    rule = result.rule  # the search's rule: its losses are the ones for rows built with it
    rule64 = dataclasses.replace(rule, multiple_of=64)
    label = f"{target:g}x {phase}"
    plans = (  # (row, split, rule, width only)
        ("BlockPruner", result.depth_only, rule, False),
        ("FASP", result.width_only, rule, True),
        ("FASP, multiple of 64", None, rule64, True),
        ("combined", result.chosen, rule, False),
    )
    rows = []
    for name, split, plan_rule, width_only in plans:
        if split is None and width_only:
            try:  # FASP alone at the rule's widths, or why it cannot reach the target
                split = candidate_splits(structure, [], predict, target, plan_rule)[0]
            except SettingsError as exc:
                rows.append(
                    Row(label, name, 0, math.nan, plan_rule.multiple_of, math.nan, note=str(exc))
                )
                continue
        if split is None:
            note = f"BlockPruner alone does not reach {target:g}x within {len(steps)} steps"
            rows.append(Row(label, name, len(steps), 0.0, 1, math.nan, note=note))
            continue
        build = build_split(plan_depth, settings, plan_rule)
        if name == "combined":
            pruned = fresh_copy(dense)
            build(pruned, split)
            measured = measured_speedup(dense, pruned, phase, args.runs)
        else:
            split, pruned, measured = until_measured(
                dense, split, steps, build, phase, target, args, width_only
            )
        # Predicted from the built model's shape (a pushed split is not the one priced).
        predicted = predict(structure) / predict(structure_of(pruned))
        row = Row(label, name, split.k, split.sparsity, plan_rule.multiple_of, predicted)
        row.measured = measured
        # The search's measured loss, for the splits it priced (not pushed, same width rule).
        loss = (
            result.losses.get(split.k) if plan_rule is rule and split in result.candidates else None
        )
        row.calib_ppl = math.exp(loss) if loss is not None else None
        evaluate(dense, pruned, row, split, args)
        rows.append(row)
        del pruned
    return rows, speed_target_record(result)


def render(rows: list[Row], meta: dict) -> str:
    lines = [
        "# Prune to a speed: combined depth + width plans (issue 16)",
        "",
        f"SmolLM2-135M, {meta['dtype']} on {meta['cpu']} ({meta['threads']} threads); "
        f"WikiText-2 seqlen 512 ({meta['eval_windows']}), zero-shot first {meta['limit']} items. "
        "Generated by `bench/speedtarget.py`.",
        "",
        "| target | plan | blocks | sparsity | predicted | measured | ratio_total | WikiText-2 "
        "| PIQA | HellaSwag | ARC-e |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.note is not None:
            lines.append(f"| {r.target} | {r.plan} | – | – | – | – | – | – | – | – | – |")
            continue
        acc = [f"{100 * r.zeroshot.get(t, float('nan')):.1f}" for t in TASKS]
        lines.append(
            f"| {r.target} | {r.plan} | {r.k} | {r.sparsity:.3f} | {r.predicted:.2f}× "
            f"| {r.measured:.2f}× | {r.ratio_total:.3f} | {r.wikitext2:.2f} | " + " | ".join(acc)
        )
    notes = [f"- {r.target}, {r.plan}: {r.note}" for r in rows if r.note is not None]
    if notes:
        lines += ["", "Plans that cannot reach a target (a dash in the table):", "", *notes]
    return "\n".join(lines) + "\n"


def parse_targets(text: str) -> list[tuple[str, float]]:
    """ "decode:1.25,prefill:1.5" -> [("decode", 1.25), ("prefill", 1.5)]."""
    targets = []
    for item in text.split(","):
        phase, _, value = item.partition(":")
        if phase not in WORKLOADS or not value:
            raise SystemExit(f"--targets: {item!r} is not phase:speedup (phase decode or prefill)")
        targets.append((phase, float(value)))
    return targets


def depth_blocks_needed(dense: LoadedModel, tables: dict, targets) -> int:
    """Steps of the one depth search that reach every target's depth-only end (or all blocks)."""
    structure = structure_of(dense)
    every = 2 * len(structure.layers)
    bounds = []
    for phase, target in targets:
        predict, _ = latency_predictor(dense, phase, tables[phase])
        bound = depth_blocks_bound(structure, predict, target)
        bounds.append(every if bound is None else bound)
    return min(every, max(bounds))


def write_page(path: Path, page: str) -> None:
    """The generated tables, then the latency-model section (bench/latency_model.py's, kept),
    then the hand-written notes (kept)."""
    old = path.read_text() if path.exists() else ""
    section = ""
    if LATENCY_START in old and LATENCY_END in old:
        rest = old.split(LATENCY_START, 1)[1]
        section = LATENCY_START + rest.split(LATENCY_END, 1)[0] + LATENCY_END + "\n"
    notes = kept_notes(path)
    if section and section in notes:
        notes = notes.replace(section, "").lstrip("\n")
    text = page + ("\n" + section if section else "") + "\n" + NOTES_MARKER + "\n" + notes
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default=",".join(f"{p}:{t:g}" for p, t in TARGETS))
    parser.add_argument(
        "--depth-blocks", type=int, default=None, help="cap on the BlockPruner search steps"
    )
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=None)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile-runs", type=int, default=3)
    parser.add_argument("--profile-prompt-len", type=int, default=None, help="smoke runs only")
    parser.add_argument("--profile-gen-len", type=int, default=None, help="smoke runs only")
    parser.add_argument("--push-steps", type=int, default=PUSH_STEPS)
    parser.add_argument("--table", type=Path, default=None, help="a `prunekit profile` table")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/speedtarget.md")
    args = parser.parse_args()
    targets = parse_targets(args.targets)

    dtype = "bf16" if cpu_has_native_bf16() else "fp32"
    dense = load_model("smollm2-135m", dtype=dtype, device="cpu")
    # The speed target's method (blockpruner+fasp): its settings hold both stages' fields.
    settings = get_method(SPEED_METHOD).make_settings(
        calib="c4", n_samples=args.n_samples, seqlen=args.seqlen, seed=0
    )
    started = time.perf_counter()
    tables = {phase: latency_table(dense, phase, args) for phase in dict(targets)}
    profile_s = time.perf_counter() - started
    blocks = depth_blocks_needed(dense, tables, targets)
    if args.depth_blocks is not None:
        blocks = min(blocks, args.depth_blocks)
    started = time.perf_counter()
    depth = prune(
        fresh_copy(dense),
        "blockpruner",
        blocks=blocks,
        # What ``prune --target-speedup`` searches with (prunekit/speedtarget/run.py).
        **PAPER_SETTING,
        **{k: getattr(settings, k) for k in ("calib", "n_samples", "seqlen", "seed")},
    ).plan
    meta = {
        "dtype": dtype,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "limit": args.limit,
        "eval_windows": f"first {args.eval_windows} windows" if args.eval_windows else "all",
        "profile_s": profile_s,
        "depth_blocks": blocks,
        "depth_search_s": time.perf_counter() - started,
        "tables": {phase: str(args.table) if args.table else "profiled" for phase in tables},
    }
    rows, records = [], {}
    for phase, target in targets:
        target_rows, record = run_target(dense, depth, settings, phase, target, tables[phase], args)
        rows += target_rows
        records[f"{phase}:{target:g}"] = record
        write_page(args.out, render(rows, meta))
        data = {"meta": meta, "rows": [dataclasses.asdict(r) for r in rows], "search": records}
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
