"""Measure a model's latency table on this machine (``prunekit profile``).

Each entry is timed on the real code path: a *probe* is the model itself (its embedding, final
norm and LM head, parameters shared, not copied) with its decoder layers replaced by ``k`` copies
of one of its own layers, cut by prunekit's own surgery to the shape being priced — attention
only (``remove_blocks`` of the MLPs), MLP only, narrowed value heads (``slice_value_channels``,
which installs the variable-head attention FASP models run) or a narrower MLP (``slice_mlp``).
Probes run through bench-speed's own prefill and decode functions
(``prunekit.evaluation.speed``), so the table prices exactly what ``bench-speed`` measures.

- fixed part = the probe with no layer;
- one block = (probe with ``k`` such blocks − fixed) / ``k``: ``k`` copies (each with its own
  weights, so nothing stays cached that would not in the real model) lift a block's time well
  above the timer's noise;
- layer overhead = (probe with ``k`` stock layers − fixed) / ``k`` − full attention − full MLP;
- anchor: the whole model is timed too, and every per-layer entry is scaled by the one factor
  that makes the model's predicted latency its measured one (``anchor_on_model``).

All probes are timed round-robin after a warm-up of each (one run of every probe, then the next
round), and each entry is a median, so a load change on a shared machine hits all entries alike.
"""

from __future__ import annotations

import copy
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from prunekit.errors import SettingsError
from prunekit.evaluation.speed import decode_fn, prefill_fn
from prunekit.latency.structure import ModelStructure, structure_of
from prunekit.latency.table import (
    PHASES,
    LatencyModelError,
    LatencyTable,
    PhaseTable,
    predict_latency,
)
from prunekit.models.adapters import BlockRef
from prunekit.models.lazy import EMBEDDINGS, HEAD, REST
from prunekit.models.loading import LoadedModel
from prunekit.surgery.depth import CONFIG_KEY, remove_blocks
from prunekit.surgery.width import slice_mlp, slice_value_channels

log = logging.getLogger(__name__)

# progress(label, done, total): one call per timed run (a progress line, a log, a test probe).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ProfileSettings:
    """The workload a table prices and how it is measured."""

    batch: int = 1
    prompt_len: int = 128
    gen_len: int = 32
    phases: tuple[str, ...] = PHASES
    multiple_of: int = 64  # the kernel-friendly MLP width multiple (FASP --multiple-of)
    grid_steps: int = 8  # widths at every 1/grid_steps of the full width
    layers_per_probe: int = 4
    runs: int = 3
    warmup: int = 1
    seed: int = 0

    def validate(self) -> None:
        for name in ("batch", "prompt_len", "gen_len", "multiple_of", "grid_steps", "runs"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.replace('_', '-')} must be at least 1")
        if self.layers_per_probe < 1:
            raise SettingsError("layers-per-probe must be at least 1")
        if self.warmup < 0:
            raise SettingsError("warmup must be 0 or more")
        unknown = [p for p in self.phases if p not in PHASES]
        if unknown or not self.phases:
            raise SettingsError(f"phases must be among {', '.join(PHASES)}, got {self.phases}")


# ---- the width grid -------------------------------------------------------------------------


def aligned_widths(full: int, multiple: int, steps: int) -> list[int]:
    """Every 1/steps of ``full`` rounded to ``multiple`` (at least one multiple), and ``full``."""
    widths = {max(multiple, round(full * k / steps / multiple) * multiple) for k in range(1, steps)}
    return [*sorted(w for w in widths if w < full), full]


def unaligned_widths(full: int, multiple: int, steps: int) -> list[int]:
    """Every 1/steps of ``full`` unrounded; a point that lands on a multiple moves just off it
    (by half a multiple and one), so the curve shows what an arbitrary width costs."""
    widths = set()
    for k in range(1, steps):
        width = round(full * k / steps)
        if width % multiple == 0:
            width -= multiple // 2 + 1
        if 0 < width < full and width % multiple:
            widths.add(width)
    return sorted(widths)


def value_widths(head_dim: int, steps: int) -> list[int]:
    """Value head sizes at every 1/steps of ``head_dim`` (FASP keeps any count per kv head)."""
    return sorted({max(1, round(head_dim * k / steps)) for k in range(1, steps + 1)})


# ---- probes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSpec:
    """One timed shape: ``kind`` is none (no layer), both, attn or mlp, at the given widths."""

    kind: str
    v_head_dim: int = 0
    mlp_width: int = 0
    aligned: bool = True

    @property
    def label(self) -> str:
        if self.kind == "attn":
            return f"attn v{self.v_head_dim}"
        if self.kind == "mlp":
            return f"mlp {self.mlp_width}"
        return {"none": "fixed", "both": "layer"}[self.kind]


def source_layer_index(loaded: LoadedModel) -> int:
    """The widest layer that still has both blocks (the first of equals): the shapes the grid
    is relative to, so a pruned model is profiled at its widest layer's widths."""
    adapter, model = loaded.adapter, loaded.model
    candidates = [
        (_widths(loaded, layer), -index)
        for index, layer in enumerate(adapter.layers(model))
        if adapter.has_block(layer, "attn") and adapter.has_block(layer, "mlp")
    ]
    if not candidates:
        raise SettingsError("the model has no layer with both an attention and an MLP block")
    return -max(candidates)[1]


def _widths(loaded: LoadedModel, layer: nn.Module) -> tuple[int, int]:
    """(value channels, MLP width) of a layer with both blocks."""
    attn = loaded.adapter.attention_channels(layer, loaded.model.config)
    return attn.num_kv_heads * attn.v_head_dim, loaded.adapter.mlp_channels(layer).width


def empty_shell(loaded: LoadedModel) -> nn.Module:
    """The model with no decoder layer; every other parameter is shared with ``loaded``."""
    model, adapter = loaded.model, loaded.adapter
    layers = adapter.decoder(model).layers
    adapter.decoder(model).layers = nn.ModuleList()
    try:
        shell = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    finally:
        adapter.decoder(model).layers = layers
    setattr(shell.config, CONFIG_KEY, None)
    shell.config.num_hidden_layers = 0
    if getattr(shell.config, "layer_types", None) is not None:
        shell.config.layer_types = []
    return shell


def build_probe(loaded: LoadedModel, spec: ProbeSpec, copies: int) -> LoadedModel:
    """A probe model: the shell with ``copies`` copies of the source layer cut to ``spec``."""
    adapter = loaded.adapter
    source = source_layer_index(loaded)
    layer = adapter.layers(loaded.model)[source]
    shell = empty_shell(loaded)
    count = 0 if spec.kind == "none" else copies
    layers = [copy.deepcopy(layer) for _ in range(count)]  # own weights: real memory traffic
    for copied in layers:
        _narrow(copied, spec, loaded)
    adapter.decoder(shell).layers = nn.ModuleList(layers)
    shell.config.num_hidden_layers = count
    layer_types = getattr(loaded.model.config, "layer_types", None)
    if layer_types is not None:
        shell.config.layer_types = [layer_types[source]] * count
    _renumber(layers)
    probe = replace(loaded, model=shell.eval(), spec=f"probe {spec.label}", residency=None)
    removed = {"attn": "mlp", "mlp": "attn"}.get(spec.kind)
    if removed is not None:
        remove_blocks(probe, [BlockRef(i, removed) for i in range(count)])  # type: ignore[arg-type]
    return probe


def _narrow(layer: nn.Module, spec: ProbeSpec, loaded: LoadedModel) -> None:
    """Slice one layer copy to the probe's widths with the width surgery's own primitives."""
    adapter = loaded.adapter
    if spec.kind == "mlp":
        channels = adapter.mlp_channels(layer)
        if spec.mlp_width < channels.width:
            slice_mlp(channels, list(range(spec.mlp_width)))
    if spec.kind == "attn":
        channels = adapter.attention_channels(layer, loaded.model.config)
        if spec.v_head_dim < channels.v_head_dim:
            kept = [list(range(spec.v_head_dim))] * channels.num_kv_heads
            slice_value_channels(channels, kept, adapter)


def _renumber(layers: list[nn.Module]) -> None:
    """Cache slots follow the probe's own layer positions."""
    for index, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index


def probe_specs(loaded: LoadedModel, settings: ProfileSettings) -> list[ProbeSpec]:
    """The fixed part, a stock layer, and every attention and MLP width of the grid."""
    adapter = loaded.adapter
    layer = adapter.layers(loaded.model)[source_layer_index(loaded)]
    attn = adapter.attention_channels(layer, loaded.model.config)
    width = adapter.mlp_channels(layer).width
    steps, multiple = settings.grid_steps, settings.multiple_of
    specs = [ProbeSpec("none"), ProbeSpec("both")]
    specs += [ProbeSpec("attn", v_head_dim=v) for v in value_widths(attn.v_head_dim, steps)]
    specs += [ProbeSpec("mlp", mlp_width=w) for w in aligned_widths(width, multiple, steps)]
    specs += [
        ProbeSpec("mlp", mlp_width=w, aligned=False)
        for w in unaligned_widths(width, multiple, steps)
    ]
    return specs


# ---- timing -----------------------------------------------------------------------------------


def phase_runner(probe: LoadedModel, phase: str, settings: ProfileSettings) -> Callable[[], None]:
    """bench-speed's own prefill (last-position logits) or decode (``generate()``) run."""
    if phase == "prefill":
        return prefill_fn(probe, settings.batch, settings.prompt_len, settings.seed)
    return decode_fn(probe, settings.batch, settings.prompt_len, settings.gen_len, settings.seed)


def time_round_robin(
    runners: dict[str, Callable[[], None]],
    device: str,
    settings: ProfileSettings,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Median seconds of every runner, timed one run of each per round after a warm-up."""
    for run in runners.values():
        for _ in range(settings.warmup):
            run()
    _sync(device)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    total, done = settings.runs * len(runners), 0
    for _ in range(settings.runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            _sync(device)
            seconds[name].append(time.perf_counter() - start)
            done += 1
            if progress is not None:
                progress(name, done, total)
    return {name: statistics.median(values) for name, values in seconds.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def phase_table(
    specs: list[ProbeSpec], medians: dict[str, float], phase: str, copies: int
) -> PhaseTable:
    """Entries from the probes' medians of one phase (keys: ``phase/label``)."""
    fixed = medians[f"{phase}/fixed"]

    def block(spec: ProbeSpec) -> float:
        entry = (medians[f"{phase}/{spec.label}"] - fixed) / copies
        if entry < 0:
            # A block cannot cost less than nothing: the probe ran faster than the fixed part,
            # which only timing noise (a busy machine, too few --runs) can do. A negative entry
            # would make a pruned model look slower than one that keeps the block.
            log.warning(
                "%s %s probe timed below the fixed part (%.3g s): entry set to 0; "
                "profile on an idle machine or with more --runs",
                phase,
                spec.label,
                entry * copies,
            )
            return 0.0
        return entry

    attn = {s.v_head_dim: block(s) for s in specs if s.kind == "attn"}
    mlp = {s.mlp_width: block(s) for s in specs if s.kind == "mlp" and s.aligned}
    unaligned = {s.mlp_width: block(s) for s in specs if s.kind == "mlp" and not s.aligned}
    layer = block(ProbeSpec("both"))
    overhead = layer - attn[max(attn)] - mlp[max(mlp)]
    return PhaseTable(fixed, attn, mlp, unaligned, overhead)


# Anchoring is skipped (and recorded as such) when the probes and the model disagree by more
# than this factor either way: then the timings are too noisy to trust a single scale.
MAX_ANCHOR_FACTOR = 1.5


def anchor_on_model(
    table: LatencyTable, structure: ModelStructure, phase: str, measured_s: float
) -> PhaseTable:
    """``phase``'s entries scaled so that ``structure`` (the profiled model) predicts
    ``measured_s``; unscaled, with the reason recorded, when that takes an implausible factor."""
    raw = table.phases[phase]
    try:
        predicted = predict_latency(table, structure, phase)  # type: ignore[arg-type]
    except LatencyModelError as exc:  # e.g. a head-pruned model: its shapes are not in the grid
        raw.anchor = {"model_measured_s": measured_s, "applied": False, "reason": str(exc)}
        return raw
    layers = predicted - raw.fixed_s
    factor = (measured_s - raw.fixed_s) / layers if layers > 0 else float("nan")
    applied = 1 / MAX_ANCHOR_FACTOR <= factor <= MAX_ANCHOR_FACTOR
    anchored = raw.scaled(factor) if applied else raw.scaled(1.0)
    anchored.anchor = {
        "model_measured_s": measured_s,
        "model_predicted_raw_s": predicted,
        "factor": factor,
        "applied": applied,
    }
    return anchored


def machine_info(device: str) -> dict:
    """What the timings depend on besides the model."""
    info = {
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def profile_model(
    loaded: LoadedModel,
    settings: ProfileSettings,
    progress: Progress | None = None,
    anchor: bool = True,
) -> LatencyTable:
    """Time the fixed part, a stock layer and every grid width of one attention and one MLP
    block of ``loaded`` (on its device and dtype), for each phase of ``settings``.

    ``anchor=False``: the whole model is not timed and the entries stay as the probes measured
    them (``profile_streamed``: the model is not in memory)."""
    settings.validate()
    started = time.perf_counter()
    if loaded.residency is not None:
        raise SettingsError("profile needs the model in memory (not streamed)")
    copies = min(settings.layers_per_probe, loaded.adapter.num_layers(loaded.model))
    specs = probe_specs(loaded, settings)
    probes = {spec.label: build_probe(loaded, spec, copies) for spec in specs}
    runners = {
        f"{phase}/{label}": phase_runner(probe, phase, settings)
        for phase in settings.phases
        for label, probe in probes.items()
    }
    if anchor:
        runners.update(
            {f"{phase}/model": phase_runner(loaded, phase, settings) for phase in settings.phases}
        )
    medians = time_round_robin(runners, loaded.device, settings, progress)
    raw = {phase: phase_table(specs, medians, phase, copies) for phase in settings.phases}
    table = _table(loaded, settings, raw, copies)
    structure = structure_of(loaded)
    for phase in settings.phases:
        if not anchor:
            table.phases[phase].anchor = {"applied": False, "reason": NOT_ANCHORED}
            continue
        measured = medians[f"{phase}/model"]
        table.phases[phase] = anchor_on_model(table, structure, phase, measured)
    table.settings["seconds"] = round(time.perf_counter() - started, 2)
    return table


NOT_ANCHORED = "streamed: the whole model was not in memory to be timed"


def profile_streamed(
    loaded: LoadedModel, settings: ProfileSettings, progress: Progress | None = None
) -> LatencyTable:
    """``profile_model`` of a model whose weights stay in their shards (``loaded.residency`` is
    ``Streamed``): a probe needs only the embeddings, the final norm, the LM head and copies of
    one layer, so those are onloaded (on the run's device, in its dtype) while the probes are
    built and timed. A block's time depends on its shapes, not its values, so the probes time
    what the model's own layers would. Not anchored: the whole model never sits in memory."""
    lazy = loaded.residency.lazy
    source = source_layer_index(loaded)
    with lazy.onloaded(EMBEDDINGS, REST, HEAD, source):
        in_memory = replace(loaded, residency=None)
        return profile_model(in_memory, settings, progress, anchor=False)


def _table(
    loaded: LoadedModel, settings: ProfileSettings, phases: dict[str, PhaseTable], copies: int
) -> LatencyTable:
    adapter, config = loaded.adapter, loaded.model.config
    layer = adapter.layers(loaded.model)[source_layer_index(loaded)]
    attn = adapter.attention_channels(layer, config)
    return LatencyTable(
        model=loaded.spec,
        device=loaded.device,
        dtype=loaded.dtype_name,
        batch=settings.batch,
        prompt_len=settings.prompt_len,
        gen_len=settings.gen_len,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        attn_heads=attn.num_heads,
        kv_heads=attn.num_kv_heads,
        head_dim=attn.head_dim,
        v_head_dim=attn.v_head_dim,
        mlp_width=adapter.mlp_channels(layer).width,
        multiple_of=settings.multiple_of,
        phases=phases,
        machine=machine_info(loaded.device),
        settings={**asdict(settings), "layers_per_probe": copies},
    )
