"""Measured peak memory of a run: host anonymous memory (RssAnon) and CUDA allocations.

``PeakMemory`` starts after the imports (a run creates it when it starts) and records how far
the process grew above that baseline: a small thread reads ``RssAnon`` from /proc/self/status
every few milliseconds. RssAnon, not RSS or ``ru_maxrss``: those count the pages of memory-mapped
weight shards, which the kernel may drop at will and which a budget does not bound. On CUDA the
device peak is ``torch.cuda.max_memory_allocated`` above the allocation at the start (the CUDA
context and the caching allocator's reserve are not counted, as the memory model does not).

No global state: each run owns its sampler. Where /proc/self/status has no RssAnon (not Linux)
the host peak is None.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch

STATUS_FILE = Path("/proc/self/status")
SAMPLE_SECONDS = 0.002


def rss_anon_bytes() -> int | None:
    """The process's resident anonymous memory in bytes (None where the kernel does not say)."""
    try:
        with STATUS_FILE.open() as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class MeasuredPeaks:
    """Peaks above the start of the measurement, in bytes (None: not measurable here)."""

    host: int | None
    host_baseline: int | None
    device: int | None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "host_peak_bytes": self.host,
            "host_baseline_bytes": self.host_baseline,
            "device_peak_bytes": self.device,
        }


class PeakMemory:
    """``with PeakMemory(device) as peaks: ...`` then ``peaks.result()``; or start()/stop()."""

    def __init__(self, device: str | torch.device = "cpu", interval: float = SAMPLE_SECONDS):
        self.device = torch.device(device)
        self.interval = interval
        self.baseline = rss_anon_bytes()
        self._peak = self.baseline
        self._device_start = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prunekit-peak-memory", daemon=True)
        self._measured: MeasuredPeaks | None = None

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_available()

    def start(self) -> PeakMemory:
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self._device_start = torch.cuda.memory_allocated(self.device)
        if self.baseline is not None:
            self._thread.start()
        return self

    def sample(self) -> None:
        """Read RssAnon now (the thread does it every ``interval``; callers may add points)."""
        now = rss_anon_bytes()
        if now is not None and self._peak is not None:
            self._peak = max(self._peak, now)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> MeasuredPeaks:
        """Stop sampling; the peaks so far (the same object on a second call)."""
        if self._measured is None:
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join()
            self.sample()
            device = None
            if self.on_cuda:
                device = torch.cuda.max_memory_allocated(self.device) - self._device_start
            host = None if self._peak is None else self._peak - (self.baseline or 0)
            self._measured = MeasuredPeaks(host, self.baseline, device)
        return self._measured

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
