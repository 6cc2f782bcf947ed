"""Depth-pruning benchmark on SmolLM2-135M: every depth method at one target ratio_total.

    PRUNEKIT_DATA_DIR=../shared/data python bench/depth.py [--ratio 0.2] [--n-samples 8] ...

One table: dense, ShortGPT, RM, SLEB, layer-PPL, BlockPruner (ppl and ppl-per-param) with the
achieved ratio_total, WikiText-2 perplexity (seqlen 512) and search wall time; then the wall time
of the fast exact search against the naive one (same K, same calibration, same removal order),
and the LM heads the bound skips when groups hold one candidate (big models), before (position
order) and after (likely winner first). Writes docs/results/depth.md and prints it;
``--speed-only --out X.md`` measures only that section.

``--targets 0.1 0.2 0.3`` (issue 15) runs each variant of VARIANTS once, to the largest target:
a greedy trajectory (and a one-shot ranking) does not depend on the target, so the plan for a
smaller target is the smallest prefix of the trajectory reaching it. Each prefix is pruned from
the dense model and evaluated on WikiText-2 and PTB (seqlen 512, --eval-windows windows).
``--held-out`` names variants to search again on the first half of the calibration windows; the
second half scores each prefix (calibration ppl and KL from the dense model) - an over-fitting
check that needs no extra text. Rows accumulate in the JSON with --reuse (one invocation per
calibration size):

    python bench/depth.py --targets 0.1 0.2 0.3 --n-samples 8 --seqlen 128 \
        --speed-from docs/results/depth_speed.json --only SLEB ShortGPT "BP ppl-per-param blocks"
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from results_notes import NOTES_MARKER, kept_notes

from prunekit.api import prune
from prunekit.evaluation.perplexity import perplexity
from prunekit.methods.depth.calibration import settings_windows
from prunekit.methods.depth.common import HALVES, half_windows
from prunekit.methods.depth.runner import DepthRunner
from prunekit.methods.settings import CalibrationSettings
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import LoadedModel, load_model
from prunekit.surgery.depth import remove_blocks

REPO = Path(__file__).resolve().parents[1]
METHODS = [
    ("ShortGPT", "shortgpt", {}),
    ("RM", "rm", {}),
    ("SLEB", "sleb", {}),
    ("layer-PPL", "layer-ppl", {}),
    ("BlockPruner (ppl)", "blockpruner", {"criterion": "ppl"}),
    ("BlockPruner (ppl-per-param)", "blockpruner", {"criterion": "ppl-per-param"}),
]


# Issue 15's variants: (table name, method, settings). "BP" rows are BlockPruner; the paper's
# setting is "BP ppl blocks".
VARIANTS = [
    ("SLEB", "sleb", {}),
    ("ShortGPT", "shortgpt", {}),
    *[
        (
            f"BP {criterion} {candidates}",
            "blockpruner",
            {"criterion": criterion, "candidates": candidates},
        )
        for criterion in ("ppl", "ppl-per-param", "kl", "kl-per-param")
        for candidates in ("blocks", "blocks+layers")
    ],
]


def fresh(dense: LoadedModel) -> LoadedModel:
    """An independent copy of the dense model (methods prune in place)."""
    return dataclasses.replace(dense, model=copy.deepcopy(dense.model))


def wikitext_ppl(loaded: LoadedModel, windows: int | None) -> dict:
    return perplexity(loaded, "wikitext2", seqlen=512, max_windows=windows).to_dict()


def prefix_for(trajectory: list[dict], target: float) -> int:
    """Steps of the smallest prefix whose ratio_total reaches ``target`` (0: none does)."""
    for step, entry in enumerate(trajectory, start=1):
        if entry["ratio_total"] >= target:
            return step
    return 0


def pruned_prefix(dense: LoadedModel, trajectory: list[dict], steps: int) -> LoadedModel:
    loaded = fresh(dense)
    remove_blocks(loaded, [BlockRef.parse(b) for e in trajectory[:steps] for b in e["blocks"]])
    return loaded


def held_out_scores(dense: LoadedModel, calib: dict, trajectory: list[dict], steps: int) -> dict:
    """Calibration ppl and mean KL per token of a prefix on each half of the windows."""
    settings = CalibrationSettings(**calib)
    windows = settings_windows(dense, settings)
    gone = {b for e in trajectory[:steps] for b in e["blocks"]}
    scores = {}
    for half in HALVES:
        runner = DepthRunner(dense, half_windows(windows, half), "kl")
        active = [b for b in runner.blocks() if str(b) not in gone]
        kl = sum(runner.model_losses(active))
        nll = runner.reported_nll(active, kl)
        scores[half] = {"ppl": math.exp(nll / runner.tokens), "kl": kl / runner.tokens}
    return scores


def run_prefix_variants(
    dense: LoadedModel,
    args: argparse.Namespace,
    runs: Path,
    write: Callable[[list[dict]], None],
    rows: list[dict],
) -> list[dict]:
    """Each selected variant searched once to max(--targets), its prefixes evaluated."""
    calib = {"calib": "c4", "n_samples": args.n_samples, "seqlen": args.seqlen, "seed": 0}
    size = f"{args.n_samples}x{args.seqlen}"
    searched = dense
    if args.search_dtype != "fp32":
        # The search runs in bf16 (3-4x faster on AMX CPUs); every prefix is still evaluated
        # on the fp32 dense model with the same blocks removed.
        size += f" {args.search_dtype}"
        searched = dataclasses.replace(
            dense, model=copy.deepcopy(dense.model).to(torch.bfloat16), dtype=torch.bfloat16
        )
    if not any(row["name"] == "dense" for row in rows):
        rows.append({"name": "dense", "calibration": "-", "target": 0.0, "ratio_total": 0.0})
        rows[-1].update(evaluate(dense, args.eval_windows))
        write(rows)
    jobs = [(name, False) for name in args.only or [v[0] for v in VARIANTS]]
    jobs += [(name, True) for name in args.held_out or []]
    by_name = {name: (method, extra) for name, method, extra in VARIANTS}
    for name, held_out in jobs:
        if name not in by_name:
            raise SystemExit(f"unknown variant {name!r}; known: {list(by_name)}")
        kind = "held-out" if held_out else "full"
        if any(
            r.get("variant") == name and r.get("calibration") == size and r.get("kind") == kind
            for r in rows
        ):
            continue
        method, extra = by_name[name]
        half = {"windows": "first-half"} if held_out else {}
        started = time.perf_counter()
        result = prune(fresh(searched), method, ratio=max(args.targets), **half, **calib, **extra)
        seconds = time.perf_counter() - started
        trajectory = result.plan.trajectory
        search = result.plan.extra.get("search", {})
        del result
        for target in args.targets:
            steps = prefix_for(trajectory, target)
            entry = trajectory[steps - 1]
            row = {
                "name": f"{name} [{size}{', held-out' if held_out else ''}]",
                "variant": name,
                "kind": kind,
                "calibration": size,
                "target": target,
                "steps": steps,
                "ratio_total": entry["ratio_total"],
                "calib_ppl": entry["calib_ppl"],
                "removed": [b for e in trajectory[:steps] for b in e["blocks"]],
                "search_seconds": seconds,
                "prefix_seconds": sum(e.get("seconds", 0.0) for e in trajectory[:steps]),
                # The whole search's full LM heads vs one per candidate and window (the bound).
                "window_evals": search.get("window_evals"),
                "naive_window_evals": search.get("naive_window_evals"),
            }
            if held_out:
                row["held_out"] = held_out_scores(searched, calib, trajectory, steps)
            else:
                row.update(evaluate(pruned_prefix(dense, trajectory, steps), args.eval_windows))
            rows.append(row)
            print(
                f"{row['name']} @ {target}: "
                f"{json.dumps({k: v for k, v in row.items() if k != 'removed'}, default=str)}",
                flush=True,
            )
        write(rows)
    return rows


def evaluate(loaded: LoadedModel, windows: int | None) -> dict:
    return {
        "wikitext2": wikitext_ppl(loaded, windows),
        "ptb": perplexity(loaded, "ptb", seqlen=512, max_windows=windows).to_dict(),
    }


def render_prefix(
    rows: list[dict], speed: dict | None, args: argparse.Namespace, minutes: float
) -> str:
    """One table per calibration size: every variant at every target; then the held-out check."""
    dense = next(r for r in rows if r["name"] == "dense")
    wt, ptb = dense["wikitext2"], dense["ptb"]
    lines = [
        "# Depth pruning on SmolLM2-135M-Instruct: quality at ratio 0.1 / 0.2 / 0.3",
        "",
        "Each variant searched once to the largest target; the plan for a smaller target is the "
        "smallest prefix of its trajectory reaching it (the greedy trajectory and the one-shot "
        "ranking do not depend on the target). Calibration: C4 sample, seed 0, fp32 unless a "
        "table says the search ran in bf16 (then the removed blocks are evaluated on the fp32 "
        "model all the same). WikiText-2 "
        f"and PTB test, seqlen 512, {wt['windows']} windows ({wt['tokens']} / {ptb['tokens']} "
        f"predicted tokens), fp32 NLL; dense: WikiText-2 {wt['ppl']:.2f}, PTB {ptb['ppl']:.2f}. "
        "CPU: "
        f"{torch.get_num_threads()} threads on a shared machine (wall times are indicative). "
        "BP = BlockPruner (criterion, candidate set); `BP ppl blocks` is the paper's setting. "
        "Search (s): the whole search to the largest target (prefix: the steps up to this row's).",
    ]
    sizes = sorted(
        {r["calibration"] for r in rows if r.get("kind") == "full"},
        key=lambda s: ([int(x) for x in s.split()[0].split("x")], s),
    )
    for size in sizes:
        tokens, _, dtype = size.partition(" ")
        lines += [
            "",
            f"## Calibration {tokens.replace('x', ' x ')} tokens"
            + (f", search in {dtype}" if dtype else ""),
            "",
            "| variant | target | ratio_total | removed (attn / mlp) | calib ppl | WikiText-2 "
            "| PTB | search s (prefix) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        chosen = [r for r in rows if r.get("kind") == "full" and r["calibration"] == size]
        for target in (
            args.targets
            if hasattr(args, "targets") and args.targets
            else sorted({r["target"] for r in chosen})
        ):
            for row in [r for r in chosen if r["target"] == target]:
                attn = sum(b.endswith("attn") for b in row["removed"])
                lines.append(
                    f"| {row['variant']} | {target} | {row['ratio_total']:.4f} | {attn} / "
                    f"{len(row['removed']) - attn} | {row['calib_ppl']:.2f} "
                    f"| {row['wikitext2']['ppl']:.2f} | {row['ptb']['ppl']:.2f} "
                    f"| {row['search_seconds']:.0f} ({row['prefix_seconds']:.0f}) |"
                )
    max_target = max(r["target"] for r in rows)
    held = [r for r in rows if r.get("kind") == "held-out"]
    if held:
        lines += [
            "",
            "## Held-out check: searched on the first half of the calibration windows",
            "",
            "Calibration ppl and mean KL(dense || pruned) per token on the half the search saw and "
            "on the other half (same text source, never seen by the search).",
            "",
            "| variant | calibration | target | ratio_total | ppl seen | ppl held-out | KL seen "
            "| KL held-out |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in held:
            seen, other = row["held_out"]["first-half"], row["held_out"]["second-half"]
            lines.append(
                f"| {row['variant']} | {row['calibration']} | {row['target']} "
                f"| {row['ratio_total']:.4f} "
                f"| {seen['ppl']:.2f} | {other['ppl']:.2f} | {seen['kl']:.4f} | {other['kl']:.4f} |"
            )
    bounded = [
        r
        for r in rows
        if r.get("kind") == "full" and r.get("naive_window_evals") and r["target"] == max_target
    ]
    if bounded:
        lines += ["", "Branch and bound over each whole search (to the largest target):", ""]
    for row in bounded:
        skipped = 1 - row["window_evals"] / row["naive_window_evals"]
        lines.append(
            f"- {row['name']}: {row['window_evals']} exact window losses of "
            f"{row['naive_window_evals']} candidate-window pairs ({skipped:.0%} skipped by the "
            f"lower bound), {row['search_seconds']:.0f} s."
        )
    lines += ["", "Removed blocks (in removal order), at the largest target:", ""]
    for row in rows:
        if row.get("kind") == "full" and row["target"] == max_target:
            lines.append(f"- {row['name']}: {', '.join(row['removed'])}")
    lines += [
        "",
        f"Rows from `bench/depth.py --targets` invocations ({minutes:.0f} min in the last).",
        "",
    ]
    if speed is not None:
        lines += ["## Fast exact search vs naive search", ""]
        if speed.get("source"):
            lines += [f"Measured alone by `bench/depth.py --speed-only` ({speed['source']}).", ""]
        lines += fast_vs_naive_lines(speed) + chunk_of_one_lines(speed) + [""]
    return "\n".join(lines)


def selected_methods(only: list[str] | None) -> list[tuple[str, str, dict]]:
    """METHODS, or the ones named by --only (by table name), in the order given."""
    if not only:
        return METHODS
    by_name = {name: (name, method, extra) for name, method, extra in METHODS}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown --only {unknown}; known: {list(by_name)}")
    return [by_name[n] for n in only]


def run_methods(
    dense: LoadedModel,
    args: argparse.Namespace,
    runs: Path,
    write: Callable[[list[dict]], None],
    rows: list[dict],
) -> list[dict]:
    """Run the selected methods, appending to ``rows`` (a dense row is measured if missing)."""
    calib = {"calib": "c4", "n_samples": args.n_samples, "seqlen": args.seqlen, "seed": 0}
    if not rows:
        rows.append({"name": "dense", "ratio_total": 0.0, "blocks": "-", "seconds": 0.0})
        rows[0]["wikitext2"] = wikitext_ppl(dense, args.eval_windows)
    print(f"dense: wikitext2 {rows[0]['wikitext2']['ppl']:.2f}", flush=True)
    done = {row["name"] for row in rows}
    for name, method, extra in selected_methods(args.only):
        if name in done:
            continue
        loaded = fresh(dense)
        out = runs / name.replace(" ", "_").replace("(", "").replace(")", "")
        started = time.perf_counter()
        result = prune(loaded, method, out=out, ratio=args.ratio, **calib, **extra)
        seconds = time.perf_counter() - started
        search = result.plan.extra.get("search", {})
        row = {
            "name": name,
            "method": method,
            "ratio_total": result.report["params"]["ratio_total"],
            "removed": result.plan.removed_blocks,
            "steps": len(result.plan.trajectory),
            "attn_removed": sum(b.endswith("attn") for b in result.plan.removed_blocks),
            "mlp_removed": sum(b.endswith("mlp") for b in result.plan.removed_blocks),
            "calib_ppl": result.plan.trajectory[-1]["calib_ppl"],
            "seconds": seconds,
            "window_evals": search.get("window_evals"),
            "naive_window_evals": search.get("naive_window_evals"),
            "run_dir": str(out),
        }
        row["wikitext2"] = wikitext_ppl(result.loaded, args.eval_windows)
        print(
            f"{name}: ratio {row['ratio_total']:.4f} ({row['attn_removed']} attn, "
            f"{row['mlp_removed']} mlp) wikitext2 {row['wikitext2']['ppl']:.2f} "
            f"in {seconds:.0f} s",
            flush=True,
        )
        rows.append(row)
        write(rows)  # partial tables survive an interrupted benchmark
        del result, loaded
    return rows


# The searches the speed section compares (same K and calibration): the default fast search, the
# naive oracle, and the fast search in chunks of one window (what a big model gets when the
# states of every candidate do not fit the budget: the two-pass step, methods/depth/step.py).
SPEED_MODES = {
    "fast": {},
    "naive": {"naive": True},
    "chunk1": {"state_bytes": 1},
}


def speed_comparison(dense: LoadedModel, args: argparse.Namespace) -> dict:
    """The ``--speed-modes`` searches at the same K and calibration; their orders must agree."""
    settings = {
        "blocks": args.speed_blocks,
        "calib": "c4",
        "n_samples": args.speed_samples,
        "seqlen": args.speed_seqlen,
        "seed": 0,
    }
    timings, orders, evals, naive_evals = {}, {}, {}, 0
    for mode in args.speed_modes:
        started = time.perf_counter()
        result = prune(fresh(dense), "blockpruner", **SPEED_MODES[mode], **settings)
        timings[mode] = time.perf_counter() - started
        orders[mode] = result.plan.removed_blocks
        evals[mode] = result.plan.extra["search"]["window_evals"]
        naive_evals = result.plan.extra["search"]["naive_window_evals"]
        print(
            f"speed {mode}: {timings[mode]:.1f} s, {evals[mode]} of {naive_evals} full LM heads, "
            f"order {orders[mode]}",
            flush=True,
        )
    both = "fast" in timings and "naive" in timings
    return {
        "settings": settings,
        "seconds": timings,
        "speedup": timings["naive"] / timings["fast"] if both else None,
        "same_order": len({tuple(order) for order in orders.values()}) == 1,
        "order": next(iter(orders.values())),
        "window_evals": evals,
        "naive_window_evals": naive_evals,
    }


def chunk_of_one_lines(speed: dict) -> list[str]:
    """The skip rate of the two-pass step (chunks of one window) beside the one-pass step."""
    evals = speed["window_evals"]
    if not {"fast", "chunk1"} <= set(evals):
        return []
    naive = speed.get("naive_window_evals") or evals["naive"]

    def skipped(mode: str) -> str:
        return f"{evals[mode]} ({1 - evals[mode] / naive:.0%} skipped)"

    return [
        "",
        "Chunks of one window (`state_bytes=1`: the two-pass step a big model gets when the "
        "states of every candidate do not fit), same K and calibration: full LM heads of "
        f"{naive} candidate-window pairs, one pass {skipped('fast')}, two passes "
        f"{skipped('chunk1')}; wall time {speed['seconds']['fast']:.1f} s vs "
        f"{speed['seconds']['chunk1']:.1f} s. Same removal order in every mode measured "
        f"({', '.join(speed['seconds'])}): {speed['same_order']}.",
    ]


def render(
    rows: list[dict], speed: dict | None, args: argparse.Namespace, table_minutes: float
) -> str:
    dense = rows[0]["wikitext2"]
    lines = [
        "# Depth pruning on SmolLM2-135M-Instruct",
        "",
        f"Target ratio_total {args.ratio} (smallest number of removals reaching it). "
        f"Calibration: C4 sample, {args.n_samples} windows x {args.seqlen} tokens, seed 0, "
        f"fp32. WikiText-2 test, seqlen 512, {dense['windows']} windows "
        f"({dense['tokens']} predicted tokens), fp32 NLL. CPU: {platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} threads (shared machine: wall times are indicative). "
        f"Every row from one invocation of `bench/depth.py` ({table_minutes:.1f} min).",
        "",
        "| method | ratio_total | removed (attn / mlp blocks) | calib ppl | WikiText-2 ppl "
        "| search + surgery (s) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| dense | 0 | - | - | {dense['ppl']:.2f} | - |",
    ]
    for row in rows[1:]:
        lines.append(
            f"| {row['name']} | {row['ratio_total']:.4f} | {row['attn_removed']} / "
            f"{row['mlp_removed']} | {row['calib_ppl']:.2f} | {row['wikitext2']['ppl']:.2f} "
            f"| {row['seconds']:.0f} |"
        )
    lines += ["", "Removed blocks (in removal order for the greedy methods):", ""]
    for row in rows[1:]:
        lines.append(f"- {row['name']}: {', '.join(row['removed'])}")
    lines += ["", "## Fast exact search vs naive search", ""]
    if speed is None:
        lines.append("(not measured yet)")
        return "\n".join([*lines, ""])
    if speed.get("source"):
        lines += [
            f"Measured alone by `bench/depth.py --speed-only` ({speed['source']}): the table's own "
            "invocation shared the machine while it measured this section.",
            "",
        ]
    lines += fast_vs_naive_lines(speed)
    lines += chunk_of_one_lines(speed)
    lines += ["", "Branch and bound over the full searches (greedy rows of the table):", ""]
    for row in rows[1:]:
        if row.get("naive_window_evals"):
            saved = 1 - row["window_evals"] / row["naive_window_evals"]
            lines.append(
                f"- {row['name']}: {row['window_evals']} full LM heads of "
                f"{row['naive_window_evals']} candidate-window pairs ({saved:.0%} skipped by the "
                "vocabulary-subset lower bound)."
            )
    lines.append("")
    return "\n".join(lines)


def fast_vs_naive_lines(speed: dict) -> list[str]:
    if speed.get("speedup") is None:
        return []
    s = speed["settings"]
    return [
        f"BlockPruner, K={s['blocks']} blocks, calibration {s['n_samples']} x {s['seqlen']} "
        f"tokens: naive {speed['seconds']['naive']:.1f} s, fast {speed['seconds']['fast']:.1f} s "
        f"-> **{speed['speedup']:.2f}x**; same removal order: {speed['same_order']} "
        f"({', '.join(speed['order'])}). Full LM heads computed: {speed['window_evals']['fast']} "
        f"(fast) vs {speed['window_evals']['naive']} (naive, one per candidate and window); every "
        "fast evaluation also skips the prefix before its candidate."
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument(
        "--targets",
        type=float,
        nargs="+",
        help="Issue 15 mode: each variant searched once to the largest, prefixes evaluated.",
    )
    parser.add_argument(
        "--held-out", nargs="+", help="--targets mode: variants also searched on half the windows."
    )
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument(
        "--search-dtype",
        choices=["fp32", "bf16"],
        default="fp32",
        help="--targets mode: the dtype the searches run in (evaluation stays fp32).",
    )
    parser.add_argument("--speed-blocks", type=int, default=2)
    parser.add_argument("--speed-samples", type=int, default=4)
    parser.add_argument("--speed-seqlen", type=int, default=128)
    parser.add_argument(
        "--speed-modes",
        nargs="+",
        choices=list(SPEED_MODES),
        default=list(SPEED_MODES),
        help="The searches of the speed section (default: all).",
    )
    parser.add_argument(
        "--speed-only", action="store_true", help="Measure only the fast-vs-naive section."
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "depth.md")
    parser.add_argument("--runs", type=Path, default=None, help="Keep the run directories here.")
    parser.add_argument(
        "--only", nargs="+", help="Run only these methods (table names; --targets: VARIANTS)."
    )
    parser.add_argument(
        "--reuse", type=Path, help="A depth.json of an earlier run: keep its rows and speed."
    )
    parser.add_argument(
        "--speed-from",
        type=Path,
        help="The JSON of a --speed-only run: its fast-vs-naive section replaces this run's.",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    dense = load_model("smollm2-135m", dtype="fp32", device="cpu")
    runs = args.runs or Path(tempfile.mkdtemp(prefix="prunekit-depth-bench-"))
    args.out.parent.mkdir(parents=True, exist_ok=True)

    previous = json.loads(args.reuse.read_text()) if args.reuse else {}
    rows, speed = previous.get("rows", []), previous.get("speed")
    if args.speed_from:
        speed = {**json.loads(args.speed_from.read_text())["speed"], "source": args.speed_from.name}

    def write(rows: list[dict], speed: dict | None = None) -> str:
        # A table rendered again from --reuse keeps the minutes of the run that measured it.
        minutes = previous.get("table_minutes") or (time.perf_counter() - started) / 60
        if args.targets:
            minutes = (time.perf_counter() - started) / 60
            text = render_prefix(rows, speed, args, minutes)
        else:
            text = render(rows, speed, args, minutes)
        args.out.write_text(f"{text}\n{NOTES_MARKER}\n\n{kept_notes(args.out)}")
        record = {"rows": rows, "speed": speed, "args": vars(args), "table_minutes": minutes}
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
        return text

    if args.targets:
        rows = run_prefix_variants(dense, args, runs, lambda r: write(r, speed), rows)
        sys.stdout.write(write(rows, speed))
        return
    if speed is None:  # a few minutes: measured first so a cut-short run still has it
        speed = speed_comparison(dense, args)
    if args.speed_only:
        text = "\n".join(
            ["## Fast exact search", "", *fast_vs_naive_lines(speed), *chunk_of_one_lines(speed)]
        )
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(
            json.dumps({"speed": speed, "args": vars(args)}, indent=2, default=str)
        )
        sys.stdout.write(text + "\n")
        return
    rows = run_methods(dense, args, runs, lambda r: write(r, speed), rows)
    sys.stdout.write(write(rows, speed))


if __name__ == "__main__":
    main()
