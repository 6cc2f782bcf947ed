"""The latency table of one model on one machine, and the latency it predicts for any structure.

A table holds, per phase (``prefill``: one forward over ``batch × prompt_len`` tokens;
``decode``: ``generate()`` of ``gen_len`` tokens after a ``prompt_len`` prompt), the seconds of

- the fixed part (embedding, final norm, LM head, and for decode ``generate()``'s own work);
- one attention block per value head size (``v_head_dim``) at the model's head counts;
- one MLP block per intermediate width, on two curves: widths that are a multiple of
  ``multiple_of`` (the kernels' friendly sizes) and widths that are not (often slower per
  channel, which is why FASP with ``--multiple-of 64`` is faster at the same ratio);
- ``layer_overhead_s``: what a layer that keeps both blocks costs beyond its two block entries
  (the entries were timed in layers holding one block; negative when one stock layer is cheaper
  than two half layers).

The per-layer entries are anchored on the whole profiled model (``anchor``): scaled by one
factor so that the model's own predicted latency equals its measured one. Block timings in a
short probe model and in the full stack differ by a few per cent (caches, allocator); one factor
for all of them keeps their ratios, which is what a speed-up depends on.

``predict_latency`` = fixed + Σ over layers (attention entry + MLP entry + overhead if both),
with linear interpolation between grid widths. ``prunekit.latency.profile`` measures the table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from prunekit.errors import SettingsError
from prunekit.latency.structure import LayerStructure, ModelStructure

Phase = Literal["prefill", "decode"]
PHASES: tuple[Phase, ...] = ("prefill", "decode")
TABLE_VERSION = 1


class LatencyModelError(SettingsError):
    """A latency table that cannot price a structure, or a file that is not a latency table."""


@dataclass
class PhaseTable:
    """Measured seconds of one phase. Keys are widths (channels); values are seconds."""

    fixed_s: float
    attn: dict[int, float]  # v_head_dim -> one attention block
    mlp: dict[int, float]  # aligned MLP width -> one MLP block
    mlp_unaligned: dict[int, float]  # MLP width not a multiple of multiple_of -> one MLP block
    layer_overhead_s: float = 0.0
    # How the per-layer entries were anchored on the whole model (profile.anchor_on_model).
    anchor: dict = field(default_factory=dict)

    def scaled(self, factor: float) -> PhaseTable:
        """The same table with every per-layer entry (not the fixed part) times ``factor``."""
        return PhaseTable(
            fixed_s=self.fixed_s,
            attn={k: v * factor for k, v in self.attn.items()},
            mlp={k: v * factor for k, v in self.mlp.items()},
            mlp_unaligned={k: v * factor for k, v in self.mlp_unaligned.items()},
            layer_overhead_s=self.layer_overhead_s * factor,
            anchor=dict(self.anchor),
        )

    def to_dict(self) -> dict:
        return {
            "fixed_s": self.fixed_s,
            "layer_overhead_s": self.layer_overhead_s,
            "anchor": self.anchor,
            "attn": {str(k): v for k, v in sorted(self.attn.items())},
            "mlp": {str(k): v for k, v in sorted(self.mlp.items())},
            "mlp_unaligned": {str(k): v for k, v in sorted(self.mlp_unaligned.items())},
        }

    @classmethod
    def from_dict(cls, data: dict) -> PhaseTable:
        def points(name: str) -> dict[int, float]:
            return {int(k): float(v) for k, v in data.get(name, {}).items()}

        return cls(
            fixed_s=float(data["fixed_s"]),
            attn=points("attn"),
            mlp=points("mlp"),
            mlp_unaligned=points("mlp_unaligned"),
            layer_overhead_s=float(data.get("layer_overhead_s", 0.0)),
            anchor=dict(data.get("anchor", {})),
        )


@dataclass
class LatencyTable:
    """What one model's blocks cost on one machine, device, dtype and workload shape."""

    model: str
    device: str
    dtype: str
    batch: int
    prompt_len: int
    gen_len: int
    # The profiled (full) shapes: the grid is relative to them.
    hidden_size: int
    vocab_size: int
    attn_heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int
    mlp_width: int
    multiple_of: int
    phases: dict[str, PhaseTable] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)  # cpu, threads, torch version, capability
    settings: dict = field(default_factory=dict)  # how it was measured (runs, probe layers)

    @property
    def torch_version(self) -> str:
        return str(self.machine.get("torch", ""))

    def phase(self, phase: str) -> PhaseTable:
        if phase not in self.phases:
            raise LatencyModelError(
                f"the latency table has no {phase!r} phase (it has: {', '.join(self.phases)})"
            )
        return self.phases[phase]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["phases"] = {name: table.to_dict() for name, table in self.phases.items()}
        return {"version": TABLE_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        data = dict(data)
        if data.pop("version", None) != TABLE_VERSION:
            raise LatencyModelError(f"not a version-{TABLE_VERSION} latency table")
        phases = {name: PhaseTable.from_dict(t) for name, t in data.pop("phases", {}).items()}
        return cls(**data, phases=phases)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        try:
            data = json.loads(Path(path).read_text())
            return cls.from_dict(data)
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as exc:
            raise LatencyModelError(f"cannot read latency table {path}: {exc}") from None

    def full_structure(self, num_layers: int) -> ModelStructure:
        """The dense structure of the profiled model with ``num_layers`` layers."""
        layer = LayerStructure(
            self.attn_heads, self.kv_heads, self.head_dim, self.v_head_dim, self.mlp_width
        )
        return ModelStructure((layer,) * num_layers, self.hidden_size, self.vocab_size)


def interpolate(points: dict[int, float], width: int) -> float:
    """Seconds at ``width``: exact at grid points, linear between them, and linear beyond the
    ends along the nearest segment (one point: that value)."""
    if not points:
        raise LatencyModelError("an empty latency curve cannot be interpolated")
    widths = sorted(points)
    if width in points or len(widths) == 1:
        return points.get(width, points[widths[0]])
    if width < widths[0]:
        lo, hi = widths[0], widths[1]
    elif width > widths[-1]:
        lo, hi = widths[-2], widths[-1]
    else:
        hi = next(w for w in widths if w > width)
        lo = widths[widths.index(hi) - 1]
    slope = (points[hi] - points[lo]) / (hi - lo)
    return points[lo] + slope * (width - lo)


def mlp_seconds(table: LatencyTable, phase: PhaseTable, width: int) -> float:
    """One MLP block of ``width`` channels: the aligned curve for multiples of the table's
    ``multiple_of`` (and the full width), the unaligned curve otherwise."""
    aligned = width % table.multiple_of == 0 or width == table.mlp_width
    if aligned or not phase.mlp_unaligned:
        return interpolate(phase.mlp, width)
    # The unaligned curve's widths stop a grid step below the full width; above its last point
    # it runs to the full width's entry. Extrapolated along its own last segment instead, a
    # width one channel short of full was priced like a whole grid step narrower (on SmolLM2
    # prefill: 7.8 ms instead of 12.8 ms per MLP, so a 1-channel FASP stage "bought" 1.5x).
    curve = dict(phase.mlp_unaligned)
    if table.mlp_width in phase.mlp:
        curve.setdefault(table.mlp_width, phase.mlp[table.mlp_width])
    return interpolate(curve, width)


def attn_seconds(table: LatencyTable, phase: PhaseTable, layer: LayerStructure) -> float:
    """One attention block; the table covers value-width pruning at the profiled head counts."""
    if (layer.attn_heads, layer.kv_heads, layer.head_dim) != (
        table.attn_heads,
        table.kv_heads,
        table.head_dim,
    ):
        raise LatencyModelError(
            f"attention with {layer.attn_heads} heads / {layer.kv_heads} kv heads of size "
            f"{layer.head_dim} is not in the latency table (profiled: {table.attn_heads} / "
            f"{table.kv_heads} of size {table.head_dim}; only value widths vary)"
        )
    return interpolate(phase.attn, layer.v_head_dim)


def layer_seconds(table: LatencyTable, phase: PhaseTable, layer: LayerStructure) -> float:
    """One decoder layer: its blocks' entries, plus the overhead when it keeps both."""
    seconds = 0.0
    if layer.has_attn:
        seconds += attn_seconds(table, phase, layer)
    if layer.has_mlp:
        seconds += mlp_seconds(table, phase, layer.mlp_width)
    if layer.has_attn and layer.has_mlp:
        seconds += phase.layer_overhead_s
    return seconds


def predict_latency(table: LatencyTable, structure: ModelStructure, phase: Phase) -> float:
    """Predicted seconds of ``phase`` for a model of ``structure`` (the table's workload)."""
    if (structure.hidden_size, structure.vocab_size) != (table.hidden_size, table.vocab_size):
        raise LatencyModelError(
            f"structure (hidden {structure.hidden_size}, vocab {structure.vocab_size}) is not the "
            f"profiled model's (hidden {table.hidden_size}, vocab {table.vocab_size})"
        )
    entries = table.phase(phase)
    return entries.fixed_s + sum(layer_seconds(table, entries, layer) for layer in structure.layers)


def predicted_speedup(
    table: LatencyTable, dense: ModelStructure, pruned: ModelStructure, phase: Phase
) -> float:
    """Predicted latency ratio dense / pruned (> 1: the pruned model is faster)."""
    return predict_latency(table, dense, phase) / predict_latency(table, pruned, phase)
