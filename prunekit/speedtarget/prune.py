"""``prune --target-speedup S``: the latency table, the split search, and the one combined plan.

``api.prune`` calls ``check_speed_request`` before the model loads (the refusals) and
``prune_for_speed`` in place of the method's own ``prune``. That function

1. loads the latency table (``--latency-table``) or profiles one on the fly on the run's own
   device and dtype, for the one phase asked (decode: batch 1, bench-speed's 32-token prompt,
   32 new tokens; prefill: one 2048-token prompt), unless the workload is given;
2. runs ``search_for_speed`` (the depth search, the splits priced by the table, a few built and
   measured on the calibration windows);
3. builds the chosen split on the model itself with the same stages the search measured: the
   first k steps of the depth search replayed, then FASP at s_k on what they left. The result
   is one combined plan (plan.json ``stages``; a split with k = 0 or s = 0 has one stage), so
   the run replays, exports and evaluates like any ``blockpruner+fasp`` run.

The same three steps run streamed (the model's weights in their shards, ``--stream``): the
table is profiled from one layer and the embeddings and head (``profile_streamed``), the depth
search and the width stages stream as every method does, each scored split is built on a lazy
skeleton of its own (``losses.py``), and the chosen one is written to the export as it is made.
No step copies the model's weights.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunekit.engine.residency import is_streamed
from prunekit.errors import SettingsError
from prunekit.latency.profile import ProfileSettings, profile_model, profile_streamed
from prunekit.latency.structure import structure_of
from prunekit.latency.table import LatencyModelError, LatencyTable, predict_latency
from prunekit.methods.catalogue import get_method
from prunekit.methods.combined import SEPARATOR, run_stages, stage_settings
from prunekit.methods.registry import Method, StageRunner
from prunekit.methods.settings import MethodSettings, flag
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.apply import run_stage
from prunekit.pipeline.streamed_stages import StreamedStages
from prunekit.plan import PruningPlan
from prunekit.speedtarget.losses import depth_prefix_plan, shared_skeleton
from prunekit.speedtarget.measure import measure_speedup
from prunekit.speedtarget.report import speed_target_record
from prunekit.speedtarget.run import search_for_speed
from prunekit.speedtarget.search import PHASES, Split, check_target

log = logging.getLogger(__name__)

DEPTH_METHOD, WIDTH_METHOD = "blockpruner", "fasp"
SPEED_METHOD = f"{DEPTH_METHOD}{SEPARATOR}{WIDTH_METHOD}"
DEFAULT_PHASE = "decode"
# The speed target sets both stages' targets; a parameter target beside it is a contradiction.
REFUSED_SETTINGS = ("ratio", "blocks", "sparsity", "depth_share")
# The workload a table profiled on the fly prices: bench-speed's decode case (batch 1 after a
# 32-token prompt; 32 new tokens, not bench-speed's 128: the cost per token is the same and the
# profile takes a quarter of the time) and the prefill case (one 2048-token prompt).
WORKLOADS = {
    "decode": {"batch": 1, "prompt_len": 32, "gen_len": 32},
    "prefill": {"batch": 1, "prompt_len": 2048, "gen_len": 1},
}
WORKLOAD_KEYS = ("batch", "prompt_len", "gen_len")
TABLE_FILE = "latency.json"  # a table profiled on the fly, written into the run directory


@dataclass(frozen=True)
class SpeedRequest:
    """What ``--target-speedup`` asks: S, the phase, and where its latency table comes from."""

    target: float
    phase: str = DEFAULT_PHASE
    latency_table: str | Path | None = None  # None: profile one on the fly
    workload: dict = dataclasses.field(default_factory=dict)  # batch, prompt_len, gen_len
    # Time the pruned model against the dense one once built (in memory only; the dense side is
    # a skeleton keeping the weights the pruning replaced, not a copy).
    measure: bool = True

    def check(self) -> None:
        check_target(self.target)
        if self.phase not in PHASES:
            raise SettingsError(f"--phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        unknown = [k for k in self.workload if k not in WORKLOAD_KEYS]
        if unknown:
            raise SettingsError(f"unknown latency workload setting {unknown[0]!r}")
        for key, value in self.workload.items():
            if not isinstance(value, int) or value < 1:
                raise SettingsError(f"{flag(key)} must be a positive integer, got {value!r}")
        if self.latency_table is not None:
            if self.workload:
                raise SettingsError(
                    f"{flag(next(iter(self.workload)))} sets the workload of a latency table "
                    "profiled on the fly; --latency-table already has its own"
                )
            if not Path(self.latency_table).is_file():
                raise SettingsError(f"--latency-table {self.latency_table} is not a file")

    def profile_settings(self) -> ProfileSettings:
        """The phase's default workload, overridden by what was given."""
        workload = {**WORKLOADS[self.phase], **self.workload}
        return ProfileSettings(phases=(self.phase,), **workload)


@dataclass
class SpeedPrune:
    """What ``prune_for_speed`` made: the plan, the report record, and the table it used."""

    plan: PruningPlan
    record: dict  # report.json's speed_target
    table: LatencyTable
    profiled: bool  # the table was measured in this run (and should be saved with it)
    profile_s: float = 0.0


def check_speed_request(method: Method, given: Mapping[str, Any], request: SpeedRequest) -> None:
    """Refuse, before any model loads, what ``--target-speedup`` cannot honour (one line each):
    another method, a parameter target beside it, per-layer FASP widths (the search prices one
    uniform width per split)."""
    request.check()
    if method.name != SPEED_METHOD:
        raise SettingsError(
            f"--target-speedup searches the split of {SPEED_METHOD} (depth then width); "
            f"got --method {method.name}"
        )
    for name in given:
        if name in REFUSED_SETTINGS:
            raise SettingsError(
                f"--target-speedup and {flag(name)} together: the speed target chooses both "
                f"stages' targets; drop {flag(name)}"
            )
    if given.get("allocation") not in (None, "uniform"):
        raise SettingsError(
            "--target-speedup prices one uniform width per split; --allocation "
            f"{given['allocation']} is not searched"
        )


def latency_table(loaded: LoadedModel, request: SpeedRequest) -> tuple[LatencyTable, bool]:
    """(the table, whether it was profiled now): the given file, or this machine's profile of
    ``loaded`` on its own device and dtype for the requested phase. Under many processes rank 0
    reads or profiles it and the others receive it (every rank searches with the same prices)."""
    world = loaded.world
    if world is not None and world.distributed:
        return world.broadcast(_latency_table(loaded, request) if world.is_main else None)
    return _latency_table(loaded, request)


def _latency_table(loaded: LoadedModel, request: SpeedRequest) -> tuple[LatencyTable, bool]:
    if request.latency_table is not None:
        table = LatencyTable.load(request.latency_table)
        table.phase(request.phase)  # a table without the phase: one line, before any search
        if (table.device, table.dtype) != (str(loaded.device), loaded.dtype_name):
            log.warning(
                "warning: the latency table was measured on %s %s, this run is %s %s",
                table.device,
                table.dtype,
                loaded.device,
                loaded.dtype_name,
            )
        warn_if_other_threads(table, loaded)
        return table, False
    settings = request.profile_settings()
    log.info(
        "no --latency-table: profiling %s %s (batch %d, prompt %d%s) on %s %s",
        loaded.spec,
        request.phase,
        settings.batch,
        settings.prompt_len,
        f", {settings.gen_len} new tokens" if request.phase == "decode" else "",
        loaded.device,
        loaded.dtype_name,
    )
    if is_streamed(loaded):  # the probes need one layer, the embeddings and the head only
        return profile_streamed(loaded, settings), True
    return profile_model(dataclasses.replace(loaded, residency=None), settings), True


def warn_if_other_threads(table: LatencyTable, loaded: LoadedModel) -> None:
    """A CPU table holds for the thread count it was timed with: at 1 thread instead of 2 a
    SmolLM2 split predicted 1.50x faster decode measured 1.23x (the fixed part and the blocks do
    not scale alike)."""
    timed_with = table.machine.get("threads")
    if str(loaded.device) != "cpu" or timed_with is None:
        return
    if timed_with != torch.get_num_threads():
        log.warning(
            "warning: the latency table was timed with %d CPU threads, this run has %d: its "
            "predictions may not hold here (profile again, or match OMP_NUM_THREADS)",
            timed_with,
            torch.get_num_threads(),
        )


def replaying(depth: Method, prefix: PruningPlan) -> Method:
    """The depth stage of a split: the first k steps of the one depth search, replayed (the
    greedy search is prefix-consistent, so this is the plan a k-block search makes). Like any
    depth method it only decides: the stage runner removes the blocks."""

    def replay(_loaded: LoadedModel, _settings: MethodSettings) -> PruningPlan:
        return prefix

    return dataclasses.replace(depth, prune=replay, resumable=False)


def split_stages(
    split: Split, depth_plan: PruningPlan, settings: MethodSettings, run_dir: str | None
) -> list[tuple[Method, MethodSettings]]:
    """The (method, settings) stages that build ``split``: the depth prefix (k > 0), then the
    width method at s_k (s_k > 0; its restored weights go to ``run_dir`` when given)."""
    depth, width = get_method(DEPTH_METHOD), get_method(WIDTH_METHOD)
    stages = []
    if split.k:
        prefix = depth_prefix_plan(depth_plan, split.k)
        # No run directory: the replay searched nothing (no checkpoint, no plots of it).
        depth_settings = stage_settings(depth, settings, blocks=split.k)
        depth_settings = dataclasses.replace(depth_settings, run_dir=None)
        stages.append((replaying(depth, prefix), depth_settings))
    if split.sparsity > 0:
        width_settings = stage_settings(width, settings, sparsity=split.sparsity)
        # The search priced one uniform width: the stage must build exactly that.
        width_settings = dataclasses.replace(width_settings, run_dir=run_dir, allocation="uniform")
        stages.append((width, width_settings))
    return stages


def build_split(settings: MethodSettings) -> Callable[..., None]:
    """``build(candidate, split, depth_plan[, run_stage=])`` for the search: the split's stages
    on a candidate (``losses.py``: never a copy of the weights; nothing written to the run
    directory)."""

    def build(
        candidate: LoadedModel,
        split: Split,
        depth_plan: PruningPlan,
        run_stage: StageRunner = run_stage,
    ) -> None:
        stages = split_stages(split, depth_plan, settings, None)
        run_stages(candidate, SPEED_METHOD, stages, {}, None, run_stage=run_stage)

    return build


def prune_for_speed(
    loaded: LoadedModel, settings: MethodSettings, request: SpeedRequest
) -> SpeedPrune:
    """Search the split that reaches ``request.target`` and prune ``loaded`` to it in place."""
    started = time.perf_counter()
    table, profiled = latency_table(loaded, request)
    profile_s = time.perf_counter() - started if profiled else 0.0
    dense = structure_of(loaded)

    def predict(structure) -> float:
        return predict_latency(table, structure, request.phase)  # type: ignore[arg-type]

    if not predict(dense) > 0:  # a table timed on a very noisy machine can price nonsense
        raise LatencyModelError(
            f"the latency table predicts {predict(dense):.3g} s for the dense model; "
            "profile it again (more --runs, a quieter machine)"
        )

    # The depth search only decides (the model stays as it was) and only its prefix is kept: no
    # checkpoint or plots of it in the run directory (they would show blocks the chosen split
    # does not remove).
    search = search_for_speed(
        loaded,
        dataclasses.replace(settings, run_dir=None),
        request.target,
        request.phase,
        dense,
        predict,
        build_split(settings),
        DEPTH_METHOD,
    )
    chosen = search.result.chosen
    log.info(
        "speed target %gx %s: %d depth steps + width sparsity %.4f (predicted %.3fx)",
        request.target,
        request.phase,
        chosen.k,
        chosen.sparsity,
        chosen.speedup,
    )
    stages = split_stages(chosen, search.depth_plan, settings, settings.run_dir)
    record_settings = {
        **settings.record(),
        "target_speedup": request.target,
        "phase": request.phase,
    }
    plan, measurement = build_chosen(loaded, stages, record_settings, table, request)
    plan.extra["speed_target"] = chosen_record(search.result.chosen, request)
    if measurement is not None:
        log.info(
            "measured %.3fx %s (predicted %.3fx)",
            measurement["speedup"],
            request.phase,
            chosen.speedup,
        )
    record = speed_target_record(search.result, measurement and measurement["speedup"])
    record["measurement"] = measurement
    if request.measure and measurement is None:
        record["measurement_note"] = NOT_MEASURED_STREAMED
    record["latency_table"] = table_record(table, request, profiled)
    return SpeedPrune(plan, record, table, profiled, profile_s)


# A streamed run times nothing: neither the dense nor the pruned model may fit in memory.
NOT_MEASURED_STREAMED = (
    "not timed: a streamed run holds neither model in memory; time the export with "
    "`prunekit bench-speed`"
)


def build_chosen(
    loaded: LoadedModel,
    stages: list[tuple[Method, MethodSettings]],
    record_settings: dict,
    table: LatencyTable,
    request: SpeedRequest,
) -> tuple[PruningPlan, dict | None]:
    """Prune ``loaded`` to the chosen split; (its plan, the measured speed-up or None).

    Streamed, the stages run like any streamed combined method's (the last one writes the
    export). In memory ``loaded`` is pruned in place; to time it against the dense model, a
    skeleton of the dense model (``losses.shared_skeleton``: its own modules, the weights
    shared) is kept aside first. Pruning replaces ``loaded``'s parameters, so the skeleton keeps
    the dense ones it shares: the dense model is timed without a copy of its weights (only the
    tensors pruning replaced stay alive, until the timing is done)."""
    if is_streamed(loaded):
        with StreamedStages(loaded, len(stages)) as streamed:
            plan = run_stages(
                loaded, SPEED_METHOD, stages, record_settings, None, run_stage=streamed.run_stage
            )
        return plan, None
    # Rank 0 alone times the models (the others' timings would not be recorded).
    timed = request.measure and (loaded.world is None or loaded.world.is_main)
    dense = shared_skeleton(loaded) if timed else None
    plan = run_stages(loaded, SPEED_METHOD, stages, record_settings, None, run_stage=run_stage)
    if dense is None:
        return plan, None
    return plan, measure_speedup(dense, loaded, table, request.phase)


def chosen_record(chosen: Split, request: SpeedRequest) -> dict:
    """plan.json's note of the split it holds (the stages are the plan itself)."""
    return {
        "target": request.target,
        "phase": request.phase,
        "k": chosen.k,
        "removed_blocks": list(chosen.removed_blocks),
        "sparsity": chosen.sparsity,
        "predicted_speedup": chosen.speedup,
    }


def table_record(table: LatencyTable, request: SpeedRequest, profiled: bool) -> dict:
    """Which latency table priced the splits, and the workload it times."""
    return {
        "path": TABLE_FILE if profiled else str(request.latency_table),
        "profiled": profiled,
        "model": table.model,
        "device": table.device,
        "dtype": table.dtype,
        "batch": table.batch,
        "prompt_len": table.prompt_len,
        "gen_len": table.gen_len,
    }


def save_profiled_table(outcome: SpeedPrune, run_dir: str | Path | None) -> Path | None:
    """Write a table profiled in this run as RUN/latency.json (None: nothing to write)."""
    if not outcome.profiled or run_dir is None:
        return None
    return outcome.table.save(Path(run_dir) / TABLE_FILE)


def speed_summary(record: dict) -> list[str]:
    """The lines the CLI prints: the chosen split, its predicted speed-up, the pure plans."""

    def describe(entry: dict | None) -> str:
        if entry is None:
            return "does not reach the target"
        ppl = entry["calib_ppl"]
        return (
            f"{entry['k']} blocks + width sparsity {entry['sparsity']:.4f}, predicted "
            f"{entry['predicted_speedup']:.3f}x, calib loss "
            + ("–" if entry["calib_loss"] is None else f"{entry['calib_loss']:.4f}")
            + ("" if ppl is None else f" (ppl {ppl:.3f})")
        )

    table = record.get("latency_table", {})
    source = "profiled now" if table.get("profiled") else table.get("path", "?")
    lines = [
        f"speed target {record['target']:g}x {record['phase']} (latency table: {source})",
        f"  chosen:     {describe(record['chosen'])}",
        f"  depth only: {describe(record['depth_only'])}",
        f"  width only: {describe(record['width_only'])}",
    ]
    measured = record.get("measurement")
    if record.get("measurement_note"):
        lines.append(f"  measured:   {record['measurement_note']}")
    if measured:
        lines.append(
            f"  measured:   {measured['speedup']:.3f}x (dense {measured['dense_s']:.4g} s, "
            f"pruned {measured['pruned_s']:.4g} s; medians of {measured['runs']} interleaved runs)"
        )
    return lines
