"""Evaluate finished runs and their dense base model alike, then render `prunekit report`.

    PRUNEKIT_DATA_DIR=../shared/data python bench/compare_runs.py RUN_DIR... \
        --limit 500 --out docs/results/comparison

The dense model is evaluated once; every run is reloaded from its directory (plan replayed on
the base model) and evaluated with the same settings: WikiText-2 perplexity (seqlen 512, the
first ``--ppl-windows`` windows) and 0-shot accuracy on the six tasks (the first ``--limit`` items
of each). Both results are written into each run's report.json (``eval.dense`` and
``eval.pruned``, report-schema.md), and ``prunekit report`` renders the comparison, so the table
can be regenerated from the run directories alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prunekit.api import evaluate
from prunekit.evaluation.tasks import DEFAULT_TASKS
from prunekit.evaluation.zeroshot import add_task_baselines
from prunekit.loader import load
from prunekit.plan import write_json_atomic
from prunekit.report.compare import read_report, write_comparison
from prunekit.report.run_dir import REPORT_FILE, write_report_md
from prunekit.report.schema import validate_report


def add_baselines(run_dir: Path) -> None:
    """Chance and majority baselines (task items only, no model) into every recorded
    zero-shot result of ``run_dir``'s report.json, over the items each was scored on."""
    report = read_report(run_dir)
    for side in report["eval"].values():
        zeroshot = side.get("zeroshot")
        if not zeroshot:
            continue
        add_task_baselines(zeroshot["tasks"], zeroshot.get("limit"))
    validate_report(report)
    write_json_atomic(run_dir / REPORT_FILE, report)
    write_report_md(run_dir, report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/results/comparison"))
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--ppl-windows", type=int, default=32)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--add-baselines",
        action="store_true",
        help="No evaluation: add chance/majority baselines to the runs' recorded zero-shot "
        "results (reports written before they were recorded), then re-render the comparison.",
    )
    args = parser.parse_args()
    if args.add_baselines:
        for run_dir in args.runs:
            add_baselines(run_dir)
        written = write_comparison(list(args.runs), args.out)
        print("\n".join(f"{kind}: {path}" for kind, path in written.items()))
        return
    settings = dict(
        ppl=["wikitext2"],
        seqlen=512,
        max_windows=args.ppl_windows,
        tasks=args.tasks.split(","),
        limit=args.limit,
    )
    timings: dict[str, float] = {}
    base = read_report(args.runs[0])["model"]["spec"]
    started = time.perf_counter()
    dense_eval = evaluate(load(base, dtype=args.dtype), **settings)
    timings["dense"] = time.perf_counter() - started
    print(f"dense: {json.dumps(dense_eval['zeroshot']['average'])}", flush=True)
    for run_dir in args.runs:
        started = time.perf_counter()
        loaded = load(run_dir, dtype=args.dtype)
        pruned_eval = evaluate(loaded, **settings)
        timings[run_dir.name] = time.perf_counter() - started
        report = read_report(run_dir)
        report["eval"] = {"dense": dense_eval, "pruned": pruned_eval}
        validate_report(report)
        write_json_atomic(run_dir / REPORT_FILE, report)
        write_report_md(run_dir, report)
        print(f"{run_dir.name}: {pruned_eval['zeroshot']['average']}", flush=True)
        del loaded
    written = write_comparison(list(args.runs), args.out)
    meta = {"settings": {**settings, "dtype": args.dtype}, "eval_seconds": timings}
    (args.out / "eval_settings.json").write_text(json.dumps(meta, indent=2) + "\n")
    for kind, path in written.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
