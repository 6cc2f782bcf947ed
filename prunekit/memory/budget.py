"""One memory budget: sizes as the options spell them, and what a budget lets buffers hold.

``MemoryBudget`` holds ``--max-memory`` (the compute device; on a CPU the process's anonymous
memory) and ``--max-host-memory`` in bytes above the started process (the framework terms are
not counted against it). Other engines size their chunks and buffers from
``MemoryBudget.compute_limit`` and ``host_limit`` (the export's shards: ``shard_size_for``; row
slices: ``row_slice_bytes_for``); ``prunekit.memory.choice`` picks how a run fits it.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.errors import SettingsError

MiB = 2**20
GiB = 2**30
# Binary units for K/M/G/T and KiB/MiB/GiB/TiB, decimal for KB/MB/GB/TB (as disk and hub sizes).
MEMORY_UNITS = {
    "": 1,
    "B": 1,
    "K": 2**10,
    "M": 2**20,
    "G": 2**30,
    "T": 2**40,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
MIN_SHARD_SIZE = 1 * MiB
DEFAULT_ROW_SLICE_BYTES = 64 * MiB  # rows of a big tensor read at a time without a budget
SHARD_FRACTION = 16  # a budget gives the export's shard buffer this fraction of itself


def parse_memory_size(size: int | str, option: str = "--max-memory") -> int:
    """Bytes in a size such as 80MB, 2GiB, 24GB, 512M or a plain byte count."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        text = str(size).strip().replace(" ", "")
        number = text.rstrip("BbKkMmGgTtIi")
        unit = text[len(number) :].upper()
        try:
            value = int(float(number) * MEMORY_UNITS[unit])
        except (KeyError, ValueError):
            raise SettingsError(
                f"{option} {size!r} is not a size; use e.g. 80MB, 2GiB or 24GB"
            ) from None
    if value <= 0:
        raise SettingsError(f"{option} must be positive, got {size!r}")
    return value


def format_bytes(size: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", GiB), ("MiB", MiB)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 2**10:.0f} KiB"


@dataclass(frozen=True)
class MemoryBudget:
    """What a run may allocate, in bytes above the started process (the imports and the CUDA
    context are not counted); None: no limit.

    ``device`` (``--max-memory``) bounds the compute device; ``host`` (``--max-host-memory``)
    the host. On a CPU the compute device *is* the host: both bound the process's anonymous
    memory (RssAnon), the smaller one wins. Depth and width engines size their chunks and
    buffers from ``compute_limit``/``host_limit``.
    """

    device: int | None = None
    host: int | None = None

    @classmethod
    def parse(
        cls, max_memory: int | str | None = None, max_host_memory: int | str | None = None
    ) -> MemoryBudget:
        return cls(
            None if max_memory is None else parse_memory_size(max_memory, "--max-memory"),
            None
            if max_host_memory is None
            else parse_memory_size(max_host_memory, "--max-host-memory"),
        )

    @property
    def given(self) -> bool:
        return self.device is not None or self.host is not None

    def compute_limit(self, device: str) -> int | None:
        """Bytes the compute device may hold (on a CPU: the host's limit)."""
        return self.device if device.startswith("cuda") else self.host_limit(device)

    def host_limit(self, device: str) -> int | None:
        if device.startswith("cuda"):
            return self.host
        limits = [v for v in (self.device, self.host) if v is not None]
        return min(limits) if limits else None

    def as_dict(self) -> dict[str, int | None]:
        return {"device": self.device, "host": self.host}


def shard_size_for(budget: MemoryBudget, device: str, requested: int) -> int:
    """The export's shard size under a budget: a sixteenth of the host's, at most ``requested``
    (the shard buffer and its serialization live on the host beside the layer)."""
    limit = budget.host_limit(device)
    if limit is None:
        return requested
    return min(requested, max(MIN_SHARD_SIZE, limit // SHARD_FRACTION))


def row_slice_bytes_for(budget: MemoryBudget, device: str) -> int:
    """Bytes of one row slice of a big tensor (embedding, LM head) read under a budget."""
    limits = [v for v in (budget.compute_limit(device), budget.host_limit(device)) if v]
    if not limits:
        return DEFAULT_ROW_SLICE_BYTES
    return min(DEFAULT_ROW_SLICE_BYTES, max(MIN_SHARD_SIZE, min(limits) // SHARD_FRACTION))
