"""The memory model: a run's peak host and device memory predicted from the config alone.

- ``terms``: the named terms of a run (``plan_memory``, ``MemorySettings``, ``MemoryPlan``);
- ``budget``: ``--max-memory``/``--max-host-memory`` (``MemoryBudget``, sizes, shard and
  row-slice sizes under a budget);
- ``choice``: in memory or streamed under a budget (``choose_run``), report.json's record.

Family facts (parameter counts, rotary tables, MLP matrices) come from the family records
through ``prunekit.models.shapes``; nothing here tests a family.
"""

from prunekit.memory.budget import (
    DEFAULT_ROW_SLICE_BYTES,
    MEMORY_UNITS,
    MIN_SHARD_SIZE,
    SHARD_FRACTION,
    GiB,
    MemoryBudget,
    MiB,
    format_bytes,
    parse_memory_size,
    row_slice_bytes_for,
    shard_size_for,
)
from prunekit.memory.choice import (
    RunChoice,
    batch_fits,
    choose_run,
    memory_record,
    predicted_need,
    shortfall,
)
from prunekit.memory.terms import (
    ALWAYS,
    CUDA_CONTEXT,
    DTYPE_BYTES,
    FINGERPRINT_BYTES_PER_SAMPLE,
    FINGERPRINT_SAMPLES,
    FRAMEWORK_HOST,
    RUN_SLACK,
    MemoryPlan,
    MemorySettings,
    MemoryTerm,
    plan_memory,
    plan_memory_for,
)

__all__ = [
    "ALWAYS",
    "CUDA_CONTEXT",
    "DEFAULT_ROW_SLICE_BYTES",
    "DTYPE_BYTES",
    "FINGERPRINT_BYTES_PER_SAMPLE",
    "FINGERPRINT_SAMPLES",
    "FRAMEWORK_HOST",
    "MEMORY_UNITS",
    "MIN_SHARD_SIZE",
    "RUN_SLACK",
    "SHARD_FRACTION",
    "GiB",
    "MemoryBudget",
    "MemoryPlan",
    "MemorySettings",
    "MemoryTerm",
    "MiB",
    "RunChoice",
    "batch_fits",
    "choose_run",
    "format_bytes",
    "memory_record",
    "parse_memory_size",
    "plan_memory",
    "plan_memory_for",
    "predicted_need",
    "row_slice_bytes_for",
    "shard_size_for",
    "shortfall",
]
