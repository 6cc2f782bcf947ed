"""Peak anonymous memory of loading a model lazily or eagerly; run as a script in a subprocess.

    python memory_probe.py lazy|resident|eager DTYPE MODEL_DIR

Prints one JSON line: the baseline RssAnon after imports, the peak above it, and the largest part.
RssAnon (not RSS or ru_maxrss) because those count the memory-mapped pages of the shards, which
the kernel can drop at will. A thread samples every millisecond; the main thread also samples
right after each onload, when the most is resident.
"""

from __future__ import annotations

import json
import sys
import threading
import time


def rss_anon_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class PeakSampler:
    def __init__(self) -> None:
        self.peak = rss_anon_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        self.peak = max(self.peak, rss_anon_bytes())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.001)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def main(mode: str, dtype: str, directory: str) -> None:
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401  (import cost is baseline)

    from prunekit.models.lazy import LazyModel
    from prunekit.models.loading import load_model

    torch.set_num_threads(1)
    baseline = rss_anon_bytes()
    largest_part = 0
    with PeakSampler() as sampler:
        if mode == "eager":
            loaded = load_model(directory, dtype=dtype, device="cpu")
            sampler.sample()
            del loaded
        else:
            lazy = LazyModel(directory, dtype=dtype, device="cpu")
            largest_part = max(lazy.part_bytes(part) for part in lazy.parts)
            for part in lazy.parts:
                lazy.onload(part)
                sampler.sample()
                if mode == "lazy":
                    lazy.release(part)
    result = {
        "baseline": baseline,
        "peak_above": sampler.peak - baseline,
        "largest_part": largest_part,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
