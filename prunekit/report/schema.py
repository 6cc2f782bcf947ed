"""report.json as code: one schema for every method, the function that builds it, its validator.

Every run writes the same shape (docs/report-schema.md), so ``prunekit report`` can compare runs of
any methods, and a test validates the report of every registered method. Fields a method adds are
allowed where the schema says ``extra="allow"`` (settings, model, ppl entries); the fields below
are the contract.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prunekit.errors import PrunekitError

SCHEMA_VERSION = 1


class ReportError(PrunekitError):
    """A report.json that does not follow the schema (or cannot be read)."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInfo(_Open):
    spec: str
    model_type: str
    num_hidden_layers: int
    num_parameters: int


class Settings(_Open):
    """Calibration, seed and target; methods add their own settings. The calibration is null
    for a method that reads none (magnitude)."""

    calib: str | None
    n_samples: int | None
    seqlen: int | None
    seed: int | None
    ratio: float | None  # target ratio_total
    blocks: int | None  # depth target
    sparsity: float | None  # width target


class Params(_Closed):
    before: int
    after: int
    decoder_before: int
    decoder_after: int
    ratio_total: float = Field(ge=0.0, le=1.0)
    ratio_decoder: float = Field(ge=0.0, le=1.0)


class PplEntry(_Open):
    ppl: float
    seqlen: int
    windows: int
    tokens: int
    max_windows: int | None
    source: str


class TaskEntry(_Open):
    acc: float
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None
    samples: int
    average_metric: Literal["acc", "acc_norm"]
    chance: float | None = None
    majority: float | None = None


class ZeroShotEntry(_Open):
    tasks: dict[str, TaskEntry]
    average: float
    limit: int | None
    num_fewshot: int
    source: str
    lm_eval_version: str


class ModelEval(_Closed):
    ppl: dict[str, PplEntry] = Field(default_factory=dict)
    zeroshot: ZeroShotEntry | None = None


class Versions(_Open):
    prunekit: str
    torch: str
    transformers: str | None
    lm_eval: str | None = Field(alias="lm-eval")


class Report(_Open):
    schema_version: Literal[1]
    method: str
    family: Literal["depth", "width", "combined"]  # combined: stages in ``stages``
    model: ModelInfo
    settings: Settings
    params: Params
    eval: dict[Literal["dense", "pruned"], ModelEval]
    timings: dict[str, float]
    versions: Versions


def validate_report(data: dict) -> Report:
    """The parsed report, or ReportError naming every field that breaks the schema."""
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ReportError(f"report does not follow the schema: {problems}") from None


def build_report(
    *,
    method: str,
    family: str,
    model: dict,
    settings: dict,
    params: dict,
    evals: dict[str, dict],
    timings: dict[str, float],
    versions: dict,
    extra: dict[str, Any] | None = None,
) -> dict:
    """The report dict every run writes; validated here so no run can write another shape."""
    report = {
        "schema_version": SCHEMA_VERSION,
        "method": method,
        "family": family,
        "model": model,
        "settings": settings,
        "params": params,
        "eval": evals,
        "timings": timings,
        "versions": versions,
        **(extra or {}),
    }
    validate_report(report)
    return report
