"""Predict the peak host and device memory of a pruning run from the model's config alone.

``plan_memory(config, MemorySettings(...))`` reads no weight: the shapes come from the config
(``prunekit.models.shapes``), the rest from the settings. The prediction is a list of named
terms, each the bytes one thing the run holds. This module holds none of them itself: each
engine pass declares its own terms beside its code (``engine/memory_terms.py`` is their
vocabulary, ``engine/passes.py`` their names), a method's record lists the passes it runs
(``Method.passes``), and ``plan_memory`` adds up

- the framework's imports and the run's slack (below), held for the whole run;
- the weights, resident or streamed (``engine.residency.weight_terms``): one layer in each
  phase a pass onloads one, and the fingerprint's samples at the start;
- streamed, the export sink's shard buffer (``engine.residency.sink_terms``) in the phases the
  passes write or copy the model;
- every pass's own terms: the width loop's calibration states, statistics, replay inputs,
  restoration and slicing copies (``engine/sequential.py``); the depth search's branches and
  the one-shot scores over chunks of windows (``engine/chunking.py``, the estimate the
  executor sizes its chunks with).

framework
    The imports (torch, transformers, tokenizers, prunekit): ~300 MiB of host memory measured with
    ``RssAnon``; on a GPU, the CUDA context and kernels (~0.5 GiB of device memory, not counted by
    ``torch.cuda.max_memory_allocated``). A small run slack (allocator, tokenizer state) beside it.

The peak is the terms held for the whole run plus the largest sum of one *phase* (start,
embedding, attention block, MLP block, head, search, export): phases do not overlap. On a CPU
the compute device is the host, so every term is host memory and the device peak is None. A
combined method's stages run one after the other on one model: its peak is the larger of theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from prunekit.engine.memory_terms import (
    ALWAYS,
    DTYPE_BYTES,
    MemorySettings,
    MemoryTerm,
    dtype_bytes,
)
from prunekit.engine.passes import pass_memory
from prunekit.engine.residency import (
    FINGERPRINT_BYTES_PER_SAMPLE,
    FINGERPRINT_SAMPLES,
    sink_terms,
    weight_terms,
)
from prunekit.memory.budget import MiB
from prunekit.models.families import model_shapes
from prunekit.models.shapes import ModelShapes

FRAMEWORK_HOST = 300 * MiB  # RssAnon after importing torch, transformers and prunekit
CUDA_CONTEXT = 512 * MiB
RUN_SLACK = 8 * MiB  # measured: a streamed FASP run of a tiny model grows RssAnon by 7-10 MB

__all__ = [
    "ALWAYS",
    "CUDA_CONTEXT",
    "DTYPE_BYTES",
    "FINGERPRINT_BYTES_PER_SAMPLE",
    "FINGERPRINT_SAMPLES",
    "FRAMEWORK_HOST",
    "RUN_SLACK",
    "MemoryPlan",
    "MemorySettings",
    "MemoryTerm",
    "plan_memory",
    "plan_memory_for",
]


@dataclass
class MemoryPlan:
    settings: MemorySettings
    shapes: ModelShapes
    terms: list[MemoryTerm] = field(default_factory=list)

    def peak(self, where: str) -> int | None:
        """Peak bytes on ``where`` ("host"/"device"); None for the device when it is the CPU."""
        if where == "device" and not self.on_gpu:
            return None
        held = [t for t in self.terms if t.where == where]
        always = sum(t.bytes for t in held if t.phase == ALWAYS)
        phases: dict[str, int] = {}
        for t in held:
            if t.phase != ALWAYS:
                phases[t.phase] = phases.get(t.phase, 0) + t.bytes
        return always + max(phases.values(), default=0)

    def peak_phase(self, where: str) -> str | None:
        sums: dict[str, int] = {}
        for t in self.terms:
            if t.where == where and t.phase != ALWAYS:
                sums[t.phase] = sums.get(t.phase, 0) + t.bytes
        return max(sums, key=sums.__getitem__) if sums else None

    def growth(self, where: str = "host") -> int:
        """The peak without the framework's imports: what a run adds to a started process."""
        framework = sum(
            t.bytes for t in self.terms if t.where == where and t.name.startswith("framework")
        )
        return (self.peak(where) or 0) - framework

    @property
    def on_gpu(self) -> bool:
        return self.settings.device.startswith("cuda")

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": {**self.settings.__dict__, "targets": list(self.settings.targets)},
            "parameters": self.shapes.total_params,
            "terms": [t.__dict__ for t in self.terms],
            "peak_host_bytes": self.peak("host"),
            "peak_device_bytes": self.peak("device"),
            "peak_host_phase": self.peak_phase("host"),
        }


def plan_memory(config: Any, settings: MemorySettings) -> MemoryPlan:
    """The memory terms of a run of ``settings`` on the model ``config`` describes: what the
    engine passes ``settings.method`` runs declare (``Method.passes``)."""
    from prunekit.methods.catalogue import get_method

    method = get_method(settings.method)
    if method.family == "combined":
        return _combined_plan(config, settings)
    dtype_bytes(settings.dtype)  # a bad dtype: one line, before any term
    shapes = model_shapes(config)
    plan = MemoryPlan(settings, shapes)
    # Under many processes every term is one rank's: its share of the windows (the settings
    # shown keep the whole run's n_samples).
    settings = replace(settings, n_samples=settings.rank_samples)
    declared = [pass_memory(name) for name in method.passes]
    layer_phases = tuple(dict.fromkeys(p for d in declared for p in d.layer_phases))
    sink_phases = tuple(dict.fromkeys(p for d in declared for p in d.sink_phases))
    terms = _framework_terms(plan.on_gpu)
    terms += weight_terms(shapes, settings, layer_phases)
    terms += sink_terms(shapes, settings, sink_phases)
    for declaration in declared:
        terms += declaration.terms(shapes, settings)
    plan.terms = [t for t in terms if t.bytes > 0]
    return plan


def _combined_plan(config: Any, settings: MemorySettings) -> MemoryPlan:
    """A combined method (``depth+width``): its stages run one after the other on one model, so
    its peak is the larger of theirs (on the compute device, else the host)."""
    plans = [
        plan_memory(config, replace(settings, method=stage)) for stage in settings.method.split("+")
    ]
    where = "device" if plans[0].on_gpu else "host"
    chosen = max(plans, key=lambda plan: (plan.peak(where) or 0, plan.peak("host") or 0))
    chosen.settings = settings
    return chosen


def plan_memory_for(spec: str, settings: MemorySettings) -> MemoryPlan:
    """``plan_memory`` for a model spec (alias, local directory, hub id, .gguf): config only."""
    from prunekit.models.loading import load_config

    return plan_memory(load_config(spec), settings)


def _framework_terms(on_gpu: bool) -> list[MemoryTerm]:
    terms = [
        MemoryTerm("framework (imports)", FRAMEWORK_HOST, "host", ALWAYS, "torch, transformers"),
        MemoryTerm("run slack", RUN_SLACK, "host", ALWAYS, "allocator, tokenizer state"),
    ]
    if on_gpu:
        terms.append(
            MemoryTerm("framework (CUDA context)", CUDA_CONTEXT, "device", ALWAYS, "kernels")
        )
    return terms
