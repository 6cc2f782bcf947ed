"""Dense zero-shot accuracy of a model on the six tasks, one task per lm-eval call.

    PRUNEKIT_DATA_DIR=../shared/data python bench/zeroshot_dense.py --limit 200 \
        --json docs/results/zeroshot_dense.json

Same code path as ``prunekit eval MODEL --tasks ...`` (``prunekit.evaluation.zeroshot``), but the
JSON is rewritten after every task, so a long run on a slow machine keeps what it finished, and
several partial files (tasks split across processes) merge with ``--merge A.json B.json``.
Writes the JSON and a markdown table beside it (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prunekit.evaluation.tasks import DEFAULT_TASKS
from prunekit.evaluation.zeroshot import add_task_baselines, zeroshot
from prunekit.models.loading import load_model
from prunekit.report.markdown import fmt_acc, mean_or_none, table
from prunekit.report.versions import library_versions


def run(model: str, tasks: list[str], limit: int | None, out: Path) -> dict:
    loaded = load_model(model)
    record: dict = {
        "model": {**loaded.identity(), "dtype": loaded.dtype_name, "device": loaded.device},
        "tasks": {},
        "versions": library_versions(),
    }
    started = time.perf_counter()
    for task in tasks:
        result = zeroshot(loaded, [task], limit=limit).to_dict()
        record["tasks"][task] = {**result["tasks"][task], "limit": limit}
        record["source"], record["lm_eval_version"] = result["source"], result["lm_eval_version"]
        record["wall_seconds"] = time.perf_counter() - started
        out.write_text(json.dumps(record, indent=2) + "\n")
    return record


def add_baselines(record: dict) -> None:
    """Chance and majority baselines of each task over the items it was scored on (merged
    records may hold tasks scored with different limits)."""
    for name, entry in record["tasks"].items():
        add_task_baselines({name: entry}, entry.get("limit"))


def merge(files: list[Path]) -> dict:
    """One record from partial ones: tasks united, wall time summed (processes ran side by side,
    so the sum over-states the elapsed time; both are kept)."""
    parts = [json.loads(f.read_text()) for f in files]
    merged = {**parts[0], "tasks": {}}
    for part in parts:
        merged["tasks"].update(part["tasks"])
    merged["wall_seconds"] = sum(p["wall_seconds"] for p in parts)
    merged["wall_seconds_max"] = max(p["wall_seconds"] for p in parts)
    # Partial files from an earlier revision of this script lack these; same venv, same machine.
    merged["model"].setdefault("dtype", merged.pop("dtype", "bf16"))
    merged["model"].setdefault("device", "cpu")
    merged.setdefault("versions", library_versions())
    merged.pop("started", None)
    return merged


def render(record: dict) -> str:
    tasks = [t for t in DEFAULT_TASKS if t in record["tasks"]]
    rows = []
    for name in tasks:
        t = record["tasks"][name]
        rows.append(
            [
                name,
                str(t["samples"]),
                fmt_acc(t["acc"], t["acc_stderr"]),
                fmt_acc(t["acc_norm"], t["acc_norm_stderr"]),
                t["average_metric"],
                fmt_acc(t.get("majority")),
            ]
        )
    scores = [record["tasks"][t][record["tasks"][t]["average_metric"]] for t in tasks]
    majority = mean_or_none([record["tasks"][t].get("majority") for t in tasks])
    average = f"**{fmt_acc(sum(scores) / len(scores))}**"
    rows.append(["**average**", "", "", average, "", fmt_acc(majority)])
    model = record["model"]
    return "\n".join(
        [
            f"# Dense zero-shot accuracy: {model['spec']} ({model['dtype']}, {model['device']})",
            "",
            f"0-shot, lm-eval {record['lm_eval_version']}, tasks from {record['source']}. "
            "Accuracy in %, ± one standard error. `items`: the first N items of each task. "
            "Average: acc_norm where the task has it, else acc (BlockPruner's convention). "
            "`majority answer`: the accuracy of always giving the task's most frequent gold "
            "answer.",
            "",
            *table(
                ["task", "items", "acc (%)", "acc_norm (%)", "in average", "majority answer (%)"],
                rows,
                "lrrrlr",
            ),
            f"Wall time: {record['wall_seconds'] / 60:.0f} min summed over tasks "
            f"(versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=Path("docs/results/zeroshot_dense.json"))
    parser.add_argument("--merge", type=Path, nargs="+", help="Merge partial JSONs, no eval.")
    parser.add_argument(
        "--add-baselines",
        action="store_true",
        help="Add chance/majority baselines to an existing --json (reads the tasks, no model).",
    )
    args = parser.parse_args()
    if args.add_baselines:
        record = json.loads(args.json.read_text())
        add_baselines(record)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    elif args.merge:
        record = merge(args.merge)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    else:
        record = run(args.model, args.tasks.split(","), args.limit, args.json)
    args.json.with_suffix(".md").write_text(render(record))
    print(args.json.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
