"""Zero-shot task names: what the user types -> the lm-eval task that runs, offline or online.

Offline (``$PRUNEKIT_DATA_DIR`` or ``--task-data``), tasks come from the shared JSONL files and the
task YAMLs beside them (``tasks/lm_eval/*_local.yaml``). Those YAMLs hold a placeholder
``__TASK_DATA_DIR__`` because ``datasets`` resolves relative data paths against the working
directory, not the YAML: they are copied into a temporary folder with the absolute path filled
in, and that folder is lm-eval's ``include_path``. Online, the plain names are lm-eval's own tasks.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prunekit.errors import DataError, SettingsError

PLACEHOLDER = "__TASK_DATA_DIR__"
YAML_DIR = "lm_eval"


@dataclass(frozen=True)
class TaskSpec:
    """One zero-shot task: the plain name, its offline lm-eval task and the data file it reads."""

    name: str
    local_task: str
    data_file: str

    def lm_eval_task(self, offline: bool) -> str:
        """The lm-eval task that runs: the local YAML's offline, lm-eval's own online."""
        return self.local_task if offline else self.name


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("piqa", "piqa_local", "piqa_validation.jsonl"),
        TaskSpec("winogrande", "winogrande_local", "winogrande_xl_validation.jsonl"),
        TaskSpec("hellaswag", "hellaswag_local", "hellaswag_validation.jsonl"),
        TaskSpec("arc_easy", "arc_easy_local", "arc_easy_test.jsonl"),
        TaskSpec("arc_challenge", "arc_challenge_local", "arc_challenge_test.jsonl"),
        TaskSpec("boolq", "boolq_local", "boolq_validation.jsonl"),
    )
}
DEFAULT_TASKS = ("piqa", "winogrande", "hellaswag", "arc_easy", "arc_challenge", "boolq")


def known_tasks() -> list[str]:
    return list(TASKS)


def resolve_tasks(names: list[str]) -> list[TaskSpec]:
    """The specs of ``names`` in the order given; an unknown name lists the known ones."""
    if not names:
        raise SettingsError(f"name at least one task; known: {', '.join(known_tasks())}")
    specs = []
    for name in names:
        spec = TASKS.get(name.strip().lower())
        if spec is None:
            raise SettingsError(f"unknown task {name!r}; known: {', '.join(known_tasks())}")
        if spec not in specs:
            specs.append(spec)
    return specs


def offline_tasks_dir(task_data: str | Path | None = None) -> Path | None:
    """The folder holding the task JSONL files and ``lm_eval/``, or None to use the hub.

    ``task_data`` may name that folder itself or a data folder with ``tasks/`` inside (the layout
    of ``$PRUNEKIT_DATA_DIR``). Without it, ``$PRUNEKIT_DATA_DIR/tasks`` is used when set.
    """
    if task_data is None:
        root = os.environ.get("PRUNEKIT_DATA_DIR")
        if not root:
            return None
        return Path(root).expanduser().resolve() / "tasks"
    path = Path(task_data).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"--task-data: folder not found: {path}")
    return path / "tasks" if (path / "tasks" / YAML_DIR).is_dir() else path


def check_offline_files(tasks_dir: Path, specs: list[TaskSpec]) -> None:
    """Fail before loading anything when a task's data file or YAML is missing."""
    for spec in specs:
        for path in (tasks_dir / spec.data_file, tasks_dir / YAML_DIR / f"{spec.local_task}.yaml"):
            if not path.is_file():
                raise DataError(
                    f"task data missing for {spec.name!r}: {path} not found. The offline task "
                    "files are the tasks/ folder of the prunekit shared data (see its README): "
                    "point PRUNEKIT_DATA_DIR or --task-data at it, or unset PRUNEKIT_DATA_DIR to "
                    "use lm-eval's hub tasks online"
                )


def materialise_task_yamls(tasks_dir: Path, dest: Path | None = None) -> Path:
    """Copy ``tasks_dir/lm_eval`` into ``dest`` (a new temp folder by default), paths filled in.

    Every file is copied (not only the chosen tasks' YAMLs) because the YAMLs share
    ``local_utils.py``; lm-eval then indexes only this small folder.
    """
    dest = Path(dest) if dest else Path(tempfile.mkdtemp(prefix="prunekit-tasks-"))
    dest.mkdir(parents=True, exist_ok=True)
    for source in sorted((tasks_dir / YAML_DIR).iterdir()):
        if source.is_file():
            text = source.read_text(encoding="utf-8").replace(PLACEHOLDER, str(tasks_dir))
            (dest / source.name).write_text(text, encoding="utf-8")
    return dest
