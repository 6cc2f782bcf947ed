"""The ``speed_target`` record of report.json and its section of report.md (issue 16, point 4).

The record sets the chosen split beside the two pure plans at the same predicted speed-up
(width only: k = 0; depth only: the smallest k whose blocks alone reach the target), with the
calibration loss measured for each, and lists every split the search priced. ``measured_speedup``
is filled when the run also timed the pruned model (``bench-speed``); ``null`` otherwise. The
markdown is rendered from the record alone, so report.md can be re-rendered from report.json.
"""

from __future__ import annotations

import math

from prunekit.report.formatting import fmt_float, table
from prunekit.speedtarget.search import SpeedTargetResult, Split


def speed_target_record(result: SpeedTargetResult, measured_speedup: float | None = None) -> dict:
    """The JSON-ready ``speed_target`` object of report.json."""
    chosen = result.chosen
    return {
        "target": result.target,
        "phase": result.phase,
        "predicted_speedup": chosen.speedup,
        "measured_speedup": measured_speedup,
        "dense_latency_s": result.dense_latency_s,
        "width": {
            "targets": list(result.rule.targets),
            "multiple_of": result.rule.multiple_of,
            "max_sparsity": result.rule.max_sparsity,
        },
        "chosen": split_entry(chosen, result.losses),
        "depth_only": plan_entry(result.depth_only, result.losses),
        "width_only": plan_entry(result.width_only, result.losses),
        "candidates": [split_entry(split, result.losses) for split in result.candidates],
        "loss_evaluations": len(result.losses),
    }


def split_entry(split: Split, losses: dict[int, float]) -> dict:
    """One split: k, its blocks, s, predicted speed-up and latency, and its loss if measured."""
    loss = losses.get(split.k)
    return {
        "k": split.k,
        "removed_blocks": list(split.removed_blocks),
        "sparsity": split.sparsity,
        "predicted_speedup": split.speedup,
        "predicted_latency_s": split.latency_s,
        "calib_loss": finite_or_none(loss),
        "calib_ppl": None if finite_or_none(loss) is None else math.exp(loss),
    }


def plan_entry(split: Split | None, losses: dict[int, float]) -> dict | None:
    """A pure plan (depth or width only), or None when it cannot reach the target on its own."""
    return None if split is None else split_entry(split, losses)


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def speed_target_markdown(record: dict) -> str:
    """The report.md section: the chosen split beside the pure plans, then every split priced."""
    measured = record.get("measured_speedup")
    lines = [
        "## Speed target",
        "",
        f"Target {record['target']:g}× {record['phase']} (predicted by the latency table): "
        f"predicted {record['predicted_speedup']:.3f}×, measured "
        f"{'–' if measured is None else f'{measured:.3f}×'}.",
        "",
        *table_lines(record.get("latency_table"), record["phase"]),
    ]
    rows = [
        plan_row("chosen split", record["chosen"]),
        plan_row("depth only", record["depth_only"]),
        plan_row("width only", record["width_only"]),
    ]
    header = ["plan", "blocks removed", "width sparsity", "predicted speed-up", "calib ppl"]
    lines += table(header, rows)
    lines += [
        f"{len(record['candidates'])} splits priced, {record['loss_evaluations']} measured "
        f"(width targets {','.join(record['width']['targets'])}, "
        f"multiple of {record['width']['multiple_of']}):",
        "",
    ]
    lines += table(
        ["k", "width sparsity", "predicted speed-up", "calib ppl"],
        [candidate_row(entry) for entry in record["candidates"]],
        "rrrr",
    )
    return "\n".join(lines)


def table_lines(source: dict | None, phase: str) -> list[str]:
    """Which latency table priced the splits (recorded by ``prune --target-speedup``)."""
    if not source:
        return []
    where = "profiled in this run (latency.json)" if source["profiled"] else source["path"]
    workload = f"batch {source['batch']} × prompt {source['prompt_len']}"
    if phase == "decode":
        workload += f", {source['gen_len']} new tokens"
    return [
        f"Latency table: {where}; {source['device']}, {source['dtype']}, {workload}.",
        "",
    ]


def plan_row(name: str, entry: dict | None) -> list[str]:
    if entry is None:
        return [name, "does not reach the target", "–", "–", "–"]
    return [
        name,
        str(entry["k"]) + (f" ({', '.join(entry['removed_blocks'])})" if entry["k"] else ""),
        fmt_float(entry["sparsity"], 4),
        f"{entry['predicted_speedup']:.3f}×",
        fmt_float(entry["calib_ppl"], 3),
    ]


def candidate_row(entry: dict) -> list[str]:
    return [
        str(entry["k"]),
        fmt_float(entry["sparsity"], 4),
        f"{entry['predicted_speedup']:.3f}×",
        fmt_float(entry["calib_ppl"], 3),
    ]
