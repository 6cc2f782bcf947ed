"""The run directory: plan.json, report.json, report.md (and plots) of one pruning run.

report.json is written last: a directory without it is an unfinished run (a search may have
left plan.partial.json there to resume from).
"""

from __future__ import annotations

from pathlib import Path

from prunekit.errors import PlanError, SettingsError
from prunekit.plan import PruningPlan, write_json_atomic
from prunekit.report.markdown import render_report_md

PLAN_FILE = "plan.json"
PARTIAL_PLAN_FILE = "plan.partial.json"
REPORT_FILE = "report.json"
REPORT_MD_FILE = "report.md"
# What a run writes besides plots (*.png); the width methods' restored consumers are saved as
# prunekit.surgery.width.RESTORED_FILE (not imported: that module pulls in torch).
RESTORED_WEIGHTS_FILE = "restored.safetensors"
FINISHED_FILES = (PLAN_FILE, REPORT_FILE)
RUN_FILES = (PLAN_FILE, PARTIAL_PLAN_FILE, REPORT_FILE, REPORT_MD_FILE, RESTORED_WEIGHTS_FILE)


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


def run_files(run_dir: Path) -> list[Path]:
    """The files of a run in ``run_dir`` (those a new run there would replace)."""
    return [run_dir / n for n in RUN_FILES if (run_dir / n).exists()] + sorted(
        run_dir.glob("*.png")
    )


def check_run_target(out: str | Path | None, *, resume: bool, overwrite: bool) -> None:
    """Refuse an ``--out`` whose run would be lost: a new run never replaces one silently.

    A finished run (plan.json or report.json) is replaced only with ``overwrite``; an unfinished
    one (plan.partial.json) is continued with ``resume`` or replaced with ``overwrite``.
    """
    if out is None:
        if resume:
            raise PlanError("--resume needs --out: the run directory of the interrupted search")
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SettingsError(f"--out {out} is a file, not a directory")
    if resume and overwrite:
        raise SettingsError("give --resume or --overwrite, not both")
    finished = [n for n in FINISHED_FILES if (out / n).exists()]
    if resume:
        if finished:
            raise PlanError(
                f"nothing to resume: {out} holds a finished run ({finished[0]}); "
                "pass --overwrite to run it again"
            )
        if not (out / PARTIAL_PLAN_FILE).is_file():
            raise PlanError(f"nothing to resume: {out / PARTIAL_PLAN_FILE} does not exist")
        return
    if overwrite or not out.is_dir():
        return
    if finished:
        raise SettingsError(
            f"--out {out} holds a finished run ({finished[0]}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    if (out / PARTIAL_PLAN_FILE).is_file():
        raise SettingsError(
            f"--out {out} holds an unfinished run ({PARTIAL_PLAN_FILE}); continue it with "
            "--resume, or replace it with --overwrite"
        )
    others = run_files(out)
    if others:
        raise SettingsError(
            f"--out {out} holds {others[0].name}, which a run would replace; "
            "pass --overwrite, or choose another --out"
        )


def clear_run(run_dir: str | Path) -> None:
    """Delete a previous run's files (only those; anything else in the directory stays)."""
    for path in run_files(Path(run_dir)):
        path.unlink()
