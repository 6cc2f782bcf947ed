"""What every width method shares: settings resolution, the run's records, and the driver.

A method is a ``SequentialMethod`` (its statistic and its decision); ``run_width_method`` loads
the calibration windows, runs the sequential engine with it and turns the records into a
``PruningPlan``, with the rewritten consumers' weights on it for the pipeline to save.

A method that decides globally (FLAP's threshold; ``GlobalMethod``) runs in two passes, in
memory and streamed alike: a recording pass over the dense model (no layer final), the global
decision (``finish``), then an apply pass that prunes each layer and hands it to the residency
as final. A streamed model so holds one layer at a time in both passes.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from prunekit.data import calibration_windows, check_seqlen, corpus_tokens
from prunekit.engine.executor import default_batch_size
from prunekit.engine.residency import Resident
from prunekit.engine.sequential import SequentialMethod, prune_without_data, sequential_pass
from prunekit.errors import SettingsError
from prunekit.methods.settings import (
    CalibrationSettings,
    ExecutionSettings,
    UniformWidth,
    WidthTarget,
)
from prunekit.methods.width.selection import kept_count
from prunekit.methods.width.structure import LayerUnits, layer_units
from prunekit.models.loading import LoadedModel, count_parameters
from prunekit.plan import PruningPlan
from prunekit.surgery.width import RESTORED_FILE

log = logging.getLogger(__name__)

# Below this many calibration tokens per restored column the least squares overfits
# (docs/algorithms.md, "FASP (width)": 4×1024 tokens made restoration worse than none on
# SmolLM2).
MIN_TOKENS_PER_COLUMN = 10.0


@dataclass
class CalibratedWidthSettings(WidthTarget, CalibrationSettings, ExecutionSettings):
    """What a width method that measures calibration statistics takes (FLAP's settings)."""


@dataclass
class UniformWidthSettings(WidthTarget, UniformWidth):
    """What a width method with one uniform column ratio and no data takes (magnitude's)."""


class GlobalMethod(SequentialMethod, Protocol):
    """A ``SequentialMethod`` that only records during the pass (``changes_blocks=False``) and
    decides across every layer at the end; ``finish`` returns the method that applies that
    decision layer by layer (through ``prune_without_data``)."""

    def finish(self) -> SequentialMethod: ...


class WidthRun:
    """The records of one width run: kept indices, rewritten consumers, per-layer notes."""

    def __init__(self, loaded: LoadedModel, settings: WidthTarget, sparsity: float | None):
        self.loaded = loaded
        self.settings = settings
        self.sparsity = sparsity
        self.kept: dict[str, dict] = {}
        self.notes: dict[str, dict] = {}
        self.rewritten: dict[str, nn.Linear] = {}
        # Per-group kept widths (layer, "mlp" | "attn") -> channels (per kv head for values),
        # set by an allocation before the pruning pass; None: the uniform ``sparsity``.
        self.widths: dict[tuple[int, str], int] | None = None
        self.extra: dict = {}  # method-specific plan fields (the allocation and its curves)
        self.tokens = 0
        self.residency = loaded.residency or Resident()
        # Of the base model, before any pruning (streamed: read from the shards slice by slice).
        self.identity = self.residency.identity(loaded)
        self._names = {id(m): n for n, m in loaded.model.named_modules()}

    @property
    def config(self):
        return self.loaded.model.config

    def targets(self, kind: str) -> bool:
        return kind in self.settings.targets

    def watched_consumers(self, layer: nn.Module, kind: str) -> dict[str, nn.Module]:
        """The consumer whose inputs a method scores in this block (none if not targeted)."""
        if not self.targets(kind):
            return {}
        adapter = self.loaded.adapter
        if kind == "mlp":
            return {"mlp": adapter.mlp_channels(layer).consumer}
        return {"attn": adapter.attention_channels(layer, self.config).o_proj}

    def keep(self, index: int, group: str, kept: list) -> None:
        self.kept.setdefault(str(index), {})[group] = kept

    def note(self, index: int, group: str, **values) -> None:
        self.notes.setdefault(str(index), {}).setdefault(group, {}).update(values)

    def rewrote(self, linear: nn.Linear) -> None:
        """Remember a consumer whose weights the method changed, to save beside the plan."""
        self.rewritten[self._names[id(linear)]] = linear

    def rewritten_tensors(self) -> dict[str, torch.Tensor]:
        """Final (sliced) weights and biases of the rewritten consumers, by parameter name."""
        tensors = {}
        for name, linear in self.rewritten.items():
            tensors[f"{name}.weight"] = linear.weight.detach().cpu()
            if linear.bias is not None:
                tensors[f"{name}.bias"] = linear.bias.detach().cpu()
        return tensors


def validate_width_settings(settings: WidthTarget) -> None:
    """The settings' own checks (types, ranges), then the target: one of sparsity and ratio."""
    settings.validate()
    if settings.sparsity is None and settings.ratio is None:
        raise SettingsError("width pruning needs --sparsity (column ratio) or --ratio (of params)")
    if settings.sparsity is not None and settings.ratio is not None:
        raise SettingsError("give --sparsity or --ratio, not both")


def removed_uniform(
    units: list[LayerUnits], sparsity: float, settings: UniformWidthSettings, attn_unit: str
) -> int:
    """Parameters a uniform per-layer column ratio removes (the same rounding as the methods)."""
    m, removed = settings.multiple_of, 0
    for u in units:
        if "mlp" in settings.targets:
            removed += (u.mlp_width - kept_count(u.mlp_width, sparsity, m)) * u.mlp_unit_params
        if "attn" in settings.targets and attn_unit == "value":
            dropped = u.v_head_dim - kept_count(u.v_head_dim, sparsity, m)
            removed += u.num_kv_heads * dropped * u.value_unit_params
        elif "attn" in settings.targets:
            dropped = u.num_kv_heads - kept_count(u.num_kv_heads, sparsity)
            removed += dropped * u.group_unit_params
    return removed


def sparsity_for_ratio(
    loaded: LoadedModel, settings: UniformWidthSettings, attn_unit: str
) -> float:
    """The smallest column ratio s whose achieved ratio_total reaches ``settings.ratio``."""
    units, total = layer_units(loaded), count_parameters(loaded.model)
    target = settings.ratio * total

    def reaches(s: float) -> bool:
        return removed_uniform(units, s, settings, attn_unit) >= target

    low, high = 0.0, 0.999
    if not reaches(high):
        best = removed_uniform(units, high, settings, attn_unit) / total
        raise SettingsError(
            f"--ratio {settings.ratio} is out of reach: pruning every prunable group of "
            f"{settings.targets} removes at most {best:.3f} of the parameters"
        )
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if reaches(mid) else (mid, high)
    return high


def calibration_data(loaded: LoadedModel, settings: CalibrationSettings) -> torch.Tensor:
    check_seqlen(settings.seqlen, loaded.model.config)
    tokens = corpus_tokens(loaded.tokenizer, settings.calib)
    bos = loaded.tokenizer.bos_token_id if loaded.adapter.bos_per_window else None
    return calibration_windows(
        tokens, settings.n_samples, settings.seqlen, settings.seed, bos_token_id=bos
    )


def run_width_method(
    name: str,
    loaded: LoadedModel,
    settings: WidthTarget,
    make: Callable[[WidthRun], SequentialMethod | GlobalMethod],
    attn_unit: str,
    needs_data: bool = True,
    before_pass: Callable[[WidthRun, torch.Tensor], None] | None = None,
) -> PruningPlan:
    """Resolve the sparsity, run the sequential engine with the method ``make`` builds, record.

    ``before_pass`` (an allocation) runs on the calibration windows before the pruning pass
    and may set ``run.widths``; the uniform sparsity is then not derived from a ratio target.
    A ``GlobalMethod`` (one with ``finish``) records, decides, then prunes in an apply pass.
    The statistics go ``settings.batch_size`` windows at a time.
    """
    validate_width_settings(settings)
    layer_units(loaded)  # structure check before any work
    sparsity = settings.sparsity
    if sparsity is None and attn_unit != "global" and before_pass is None:
        sparsity = sparsity_for_ratio(loaded, settings, attn_unit)
    run = WidthRun(loaded, settings, sparsity)
    method = make(run)
    decides_globally = hasattr(method, "finish")
    started = time.perf_counter()
    if needs_data:
        windows = calibration_data(loaded, settings)
        if before_pass is not None:
            before_pass(run, windows)
        run.tokens = sequential_pass(
            loaded,
            windows,
            method,
            batch_size=settings.batch_size or default_batch_size(loaded.device, len(windows)),
            residency=run.residency,
            finalizes=not decides_globally,
        )
    else:
        prune_without_data(loaded, method, residency=run.residency)
    if decides_globally:
        prune_without_data(loaded, method.finish(), residency=run.residency)
    seconds = time.perf_counter() - started
    return build_plan(name, run, seconds)


def build_plan(name: str, run: WidthRun, seconds: float) -> PruningPlan:
    loaded, settings = run.loaded, run.settings
    extra: dict = {
        "sparsity": run.sparsity,
        "calibration_tokens": run.tokens,
        "seconds": seconds,
        "shapes": layer_shapes(loaded),
        "layers": run.notes,
        "restored_weights": None,
    }
    if run.rewritten and run.residency.streamed:
        # The restored consumers went to the export layer by layer; keeping them for a
        # separate file would hold a third of the model in memory.
        extra["restored_weights_note"] = "in the streamed export only (not saved beside the plan)"
    elif run.rewritten:
        extra["restored_weights"] = RESTORED_FILE
    extra.update(restoration_summary(run))
    extra.update(run.extra)
    plan = PruningPlan(
        method=name,
        model=run.identity,
        settings=settings.record(),
        kept_channels=run.kept,
        extra=extra,
    )
    if extra["restored_weights"]:  # saved beside the plan by the pipeline (pipeline/apply.py)
        plan.rewritten_weights = run.rewritten_tensors()
    return plan


def restoration_summary(run: WidthRun) -> dict:
    """Tokens per restored column (min over consumers) and a warning when it is too few."""
    ratios = [
        group["tokens_per_column"]
        for layer in run.notes.values()
        for group in layer.values()
        if "tokens_per_column" in group
    ]
    if not ratios:
        return {}
    low = min(ratios)
    summary: dict = {"min_tokens_per_restored_column": low}
    if low < MIN_TOKENS_PER_COLUMN:
        message = (
            f"only {low:.1f} calibration tokens per restored column (< {MIN_TOKENS_PER_COLUMN:g}):"
            " the least-squares restoration may overfit; raise --n-samples or --seqlen"
        )
        warnings.warn(message, stacklevel=2)
        summary["warnings"] = [message]
    return summary


def layer_shapes(loaded: LoadedModel) -> dict[str, dict]:
    """Per-layer widths after pruning: what an export needs to rebuild the structure (a block a
    depth stage removed has no entries)."""
    model, adapter = loaded.model, loaded.adapter
    shapes: dict[str, dict] = {}
    for index, layer in enumerate(adapter.layers(model)):
        shape = shapes.setdefault(str(index), {})
        if adapter.has_block(layer, "mlp"):
            mlp = adapter.mlp_channels(layer)
            shape["intermediate_size"] = mlp.width
            shape["mlp_consumer_bias"] = mlp.consumer.bias is not None
        if adapter.has_block(layer, "attn"):
            attn = adapter.attention_channels(layer, model.config)
            shape.update(
                num_heads=attn.num_heads,
                num_kv_heads=attn.num_kv_heads,
                head_dim=attn.head_dim,
                v_head_dim=attn.v_head_dim,
                attn_consumer_bias=attn.o_proj.bias is not None,
            )
    return shapes
