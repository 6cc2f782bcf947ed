"""A greedy search's checkpoints in the run directory: RUN/plan.partial.json after every step,
read back by ``--resume``. The pipeline lends them to a resumable method (``Method.resumable``;
the ``SearchCheckpoints`` protocol of ``methods/registry.py``), which never touches a file."""

from __future__ import annotations

from pathlib import Path

from prunekit.errors import PlanError
from prunekit.methods.settings import MethodSettings
from prunekit.plan import PruningPlan
from prunekit.report.run_dir import PARTIAL_PLAN_FILE


class RunCheckpoints:
    """The partial plan of a search in ``run_dir``."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / PARTIAL_PLAN_FILE
        self.where = str(self.path)

    def resumed(self) -> PruningPlan:
        if not self.path.is_file():
            raise PlanError(f"nothing to resume: {self.path} does not exist")
        return PruningPlan.load(self.path)

    def save(self, plan: PruningPlan) -> None:
        plan.save(self.path)


def run_checkpoints(settings: MethodSettings) -> RunCheckpoints | None:
    """The checkpoints of a run with a run directory; None without one (nothing is kept)."""
    return RunCheckpoints(settings.run_dir) if settings.run_dir else None
