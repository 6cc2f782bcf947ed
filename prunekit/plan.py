"""A pruning plan: what to remove, as plain JSON-serialisable data (docs/design.md, principle 1).

Scoring produces a plan; applying it is a separate deterministic step (``prunekit.surgery``).
Depth plans list removed blocks in removal order with the trajectory of the search; width plans
list kept channel indices per layer and group. A combined plan (``blockpruner+fasp``) holds
ordered ``stages``, each a whole plan of one method: stage k was made on the model the stages
before it left, so its layer indices and its recorded model identity are those of that model
(after a depth stage: the surviving layers renumbered 0..n-1). A plan records the identity of the
model it was made for, and refuses to be applied to another.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prunekit.errors import PlanError

PLAN_VERSION = 1  # a plan of one method (removed blocks or kept channels)
# A plan with ordered stages. Older prunekit versions refuse it rather than replay none of it
# (they would ignore the unknown ``stages`` field); single-method plans keep version 1.
STAGED_PLAN_VERSION = 2
READABLE_PLAN_VERSIONS = (PLAN_VERSION, STAGED_PLAN_VERSION)

log = logging.getLogger(__name__)


@dataclass
class PruningPlan:
    method: str
    model: dict  # LoadedModel.identity() of the base model
    settings: dict = field(default_factory=dict)
    # depth: ordered "layer.kind" strings (original layer indices), e.g. ["12.attn", "20.mlp"]
    removed_blocks: list[str] = field(default_factory=list)
    # depth: one entry per search step: {"block", "calib_ppl", "ratio_total", ...}
    trajectory: list[dict] = field(default_factory=list)
    # width: {"<layer>": {"mlp": [kept...], "attn_v": [[kept per kv head]...]}}
    kept_channels: dict = field(default_factory=dict)
    # method-specific extras (scores, statistics, file names of restored weights...)
    extra: dict = field(default_factory=dict)
    complete: bool = True
    version: int = PLAN_VERSION
    # combined: the sub-plans (``to_dict()`` of each), applied in order; each stage's layer
    # indices refer to the model the stages before it left (see the module docstring)
    stages: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.stages:
            self.version = STAGED_PLAN_VERSION
        # Not plan data (no field: never saved, compared or copied by ``replace``): the final
        # weights of the consumers a width method rewrote, by parameter name, which the method
        # hands to the pipeline to save beside the plan (``extra["restored_weights"]``).
        self.rewritten_weights: dict[str, Any] = {}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        if data.get("version") not in READABLE_PLAN_VERSIONS:
            readable = " or ".join(str(v) for v in READABLE_PLAN_VERSIONS)
            raise PlanError(f"plan version {data.get('version')!r} is not {readable}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def stage_plans(self) -> list[PruningPlan]:
        """The stages of a combined plan, in the order they apply (empty for a one-method plan)."""
        return [PruningPlan.from_dict(stage) for stage in self.stages]

    def all_removed_blocks(self) -> list[str]:
        """Blocks removed by this plan or its depth stages, as "layer.kind" strings in the
        numbering of the stage that removed them (the base model's when no depth stage came
        after a renumbering: a width stage keeps every layer)."""
        blocks = list(self.removed_blocks)
        for stage in self.stage_plans():
            blocks += stage.all_removed_blocks()
        return blocks

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanError(f"plan not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def check_model(self, identity: dict, *, force: bool = False) -> dict | None:
        """Refuse a model whose structure or weights differ from the one the plan was made for.

        A structural difference always raises. Different weights (the fingerprint, see
        ``prunekit.models.fingerprint``) raise unless ``force``; then a warning is logged and the
        mismatch is returned so the caller can record it. Plans or models without a fingerprint
        (old plan.json files, weights not materialised) are checked on structure only.
        """
        keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "num_parameters")
        diff = [k for k in keys if self.model.get(k) != identity.get(k)]
        if diff:
            detail = ", ".join(
                f"{k}: plan {self.model.get(k)} vs model {identity.get(k)}" for k in diff
            )
            raise PlanError(f"the plan was made for another model ({detail})")
        return self._check_weights(identity, force)

    def _check_weights(self, identity: dict, force: bool) -> dict | None:
        from prunekit.models.fingerprint import describe, fingerprints_match

        recorded, loaded = self.model.get("fingerprint"), identity.get("fingerprint")
        if not recorded or not loaded or fingerprints_match(recorded, loaded):
            return None
        message = (
            f"the plan was made for other weights: plan base {self.model.get('spec')!r} "
            f"{describe(recorded)} vs loaded {identity.get('spec')!r} {describe(loaded)}"
        )
        if not force:
            raise PlanError(f"{message}; pass --force (force=True) to apply it anyway")
        log.warning("warning: %s; applied anyway (--force)", message)
        return {
            "plan_model": {"spec": self.model.get("spec"), "fingerprint": recorded},
            "loaded_model": {"spec": identity.get("spec"), "fingerprint": loaded},
        }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside ``path`` and rename it: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
