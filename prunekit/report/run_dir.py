"""The run directory: plan.json, report.json, report.md (and plots) of one pruning run.

report.json is written last: a directory without it is an unfinished run (a search may have
left plan.partial.json there to resume from).
"""

from __future__ import annotations

from pathlib import Path

from prunekit.plan import PruningPlan, write_json_atomic
from prunekit.report.markdown import render_report_md

PLAN_FILE = "plan.json"
PARTIAL_PLAN_FILE = "plan.partial.json"
REPORT_FILE = "report.json"
REPORT_MD_FILE = "report.md"


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_images(run_dir: Path) -> list[str]:
    """The PNG plots in a run directory (file names), embedded in report.md."""
    return sorted(p.name for p in run_dir.glob("*.png"))


def write_report_md(run_dir: str | Path, report: dict) -> Path:
    """(Re)render report.md from the report and the plots present now (call after new plots)."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT_MD_FILE
    write_text_atomic(path, render_report_md(report, images=run_images(run_dir)))
    return path


def write_run_dir(run_dir: str | Path, plan: PruningPlan, report: dict) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan.save(run_dir / PLAN_FILE)
    write_report_md(run_dir, report)
    write_json_atomic(run_dir / REPORT_FILE, report)
    (run_dir / PARTIAL_PLAN_FILE).unlink(missing_ok=True)
    return run_dir


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / PLAN_FILE).is_file()
