"""Prefill and decode throughput, dense and pruned side by side (docs/protocol.md, "Speed").

Speed-ups are only meaningful when both models are measured on the same machine in the same
state, so every case runs the models *interleaved*: warm-up of each, then run r of model A, run r
of model B, ... and the median over runs is reported. Prefill is one forward over the prompt with
only the last position's logits (what ``generate()`` computes), decode is ``generate()`` with the
KV cache for exactly ``new_tokens`` tokens after a short prompt.

Peak memory comes from one more, untimed run of each model: on a CPU it is sampled by a thread,
which would compete with the timed work for the cores (two on the machines here).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

from prunekit.models.loading import LoadedModel


@dataclass
class SpeedSettings:
    prefill_shapes: list[tuple[int, int]] = field(default_factory=lambda: [(1, 2048), (8, 512)])
    decode_batches: list[int] = field(default_factory=lambda: [1, 16])
    new_tokens: int = 128
    decode_prompt: int = 32  # prompt tokens before decoding (its prefill is inside the timing)
    runs: int = 5  # timed prefill runs per model (median reported)
    decode_runs: int = 5
    warmup: int = 1
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CaseResult:
    case: str  # "prefill 1x2048" or "decode b16 x128"
    model: str
    seconds: list[float]
    tokens: int  # tokens processed (prefill) or generated (decode) per run
    # Peak above the pre-run level (CPU: sampled RSS; CUDA: allocated), from a separate untimed run.
    peak_memory_mb: float | None

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.median_s

    def to_dict(self) -> dict:
        return {
            "case": self.case,
            "model": self.model,
            "median_s": self.median_s,
            "tokens_per_s": self.tokens_per_s,
            "seconds": self.seconds,
            "tokens": self.tokens,
            "peak_memory_mb": self.peak_memory_mb,
        }


def _rss_bytes() -> int | None:
    try:
        pages = int(open("/proc/self/statm").read().split()[1])  # noqa: SIM115
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


# The CPU memory sampler's thread name (tests check it never runs during a timed run).
SAMPLER_THREAD = "prunekit-peak-memory"
SAMPLE_INTERVAL_S = 0.005


@contextmanager
def peak_memory(device: str) -> Iterator[dict]:
    """Peak memory above the level at entry, in MB: CUDA allocator stats, or sampled CPU RSS."""
    out: dict = {"mb": None}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield out
        torch.cuda.synchronize()
        out["mb"] = (torch.cuda.max_memory_allocated() - start) / 2**20
        return
    start = _rss_bytes()
    if start is None:
        yield out
        return
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_INTERVAL_S):
            peak[0] = max(peak[0], _rss_bytes() or 0)

    thread = threading.Thread(target=sample, name=SAMPLER_THREAD, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes() or 0)
        out["mb"] = (peak[0] - start) / 2**20


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prefill_fn(loaded: LoadedModel, batch: int, length: int, seed: int) -> Callable[[], None]:
    """One timed prefill: a forward over random tokens, last-position logits only."""
    generator = torch.Generator().manual_seed(seed)
    vocab = loaded.model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, length), generator=generator).to(loaded.device)

    def run() -> None:
        with torch.inference_mode():
            loaded.model(input_ids=ids, use_cache=False, logits_to_keep=1)

    return run


def decode_fn(
    loaded: LoadedModel, batch: int, prompt: int, new_tokens: int, seed: int
) -> Callable[[], None]:
    """One timed decode: greedy generate() of exactly ``new_tokens`` tokens with the KV cache."""
    generator = torch.Generator().manual_seed(seed)
    vocab = loaded.model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, prompt), generator=generator).to(loaded.device)
    mask = torch.ones_like(ids)
    pad = getattr(loaded.tokenizer, "pad_token_id", None) or 0

    def run() -> None:
        with torch.inference_mode():
            loaded.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad,
            )

    return run


def run_interleaved(
    case: str,
    runners: dict[str, Callable[[], None]],
    devices: dict[str, str],
    tokens: int,
    runs: int,
    warmup: int,
) -> list[CaseResult]:
    """Time every runner ``runs`` times, alternating between them after a warm-up of each.

    Peak memory is measured afterwards in one untimed run per runner, so no sampler runs while
    the clock does.
    """
    for name, run in runners.items():
        for _ in range(warmup):
            run()
        _sync(devices[name])
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_number in range(runs):
        # Each round starts with the next model: no model always runs first (after the others'
        # allocations) or last, so a position effect spreads over all of them.
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name]()
            _sync(devices[name])
            seconds[name].append(time.perf_counter() - start)
    peaks = {name: untimed_peak_memory(run, devices[name]) for name, run in runners.items()}
    return [CaseResult(case, name, seconds[name], tokens, peaks[name]) for name in runners]


def untimed_peak_memory(run: Callable[[], None], device: str) -> float | None:
    """Peak memory (MB above the level before) of one run of ``run``, not timed."""
    with peak_memory(device) as peak:
        run()
        _sync(device)
    return peak["mb"]


def measure_speed(models: dict[str, LoadedModel], settings: SpeedSettings) -> list[CaseResult]:
    """Every prefill and decode case of ``settings`` for every model, interleaved per case."""
    devices = {name: m.device for name, m in models.items()}
    results: list[CaseResult] = []
    for batch, length in settings.prefill_shapes:
        runners = {n: prefill_fn(m, batch, length, settings.seed) for n, m in models.items()}
        results += run_interleaved(
            f"prefill {batch}x{length}",
            runners,
            devices,
            batch * length,
            settings.runs,
            settings.warmup,
        )
    for batch in settings.decode_batches:
        runners = {
            n: decode_fn(m, batch, settings.decode_prompt, settings.new_tokens, settings.seed)
            for n, m in models.items()
        }
        results += run_interleaved(
            f"decode b{batch} x{settings.new_tokens}",
            runners,
            devices,
            batch * settings.new_tokens,
            settings.decode_runs,
            settings.warmup,
        )
    return results


def speedups(results: list[CaseResult], baseline: str) -> dict[str, dict[str, float]]:
    """{case: {model: throughput ratio vs ``baseline``}} (> 1 means faster than the baseline)."""
    base = {r.case: r.tokens_per_s for r in results if r.model == baseline}
    return {
        case: {r.model: r.tokens_per_s / base[case] for r in results if r.case == case}
        for case in base
    }


def environment(models: dict[str, LoadedModel]) -> dict:
    """What the numbers depend on: threads, dtype and device per model, versions."""
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "models": {
            name: {
                "spec": m.spec,
                "dtype": m.dtype_name,
                "device": m.device,
                "parameters": sum(p.numel() for p in m.model.parameters()),
                "weight_mb": sum(p.numel() * p.element_size() for p in m.model.parameters())
                / 2**20,
            }
            for name, m in models.items()
        },
    }


def speed_report(models: dict[str, LoadedModel], settings: SpeedSettings, baseline: str) -> dict:
    results = measure_speed(models, settings)
    return {
        "settings": settings.to_dict(),
        "environment": environment(models),
        "results": [r.to_dict() for r in results],
        "speedup": speedups(results, baseline),
        "baseline": baseline,
    }


SPEED_COLUMNS = ("case", "model", "median s", "tokens/s", "speed-up", "peak MB", "dtype", "device")


def speed_rows(report: dict) -> list[tuple[str, ...]]:
    """The report as table rows (CLI and docs), one per case and model."""
    models = report["environment"]["models"]
    rows = []
    for r in report["results"]:
        info = models[r["model"]]
        peak = "" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        rows.append(
            (
                r["case"],
                r["model"],
                f"{r['median_s']:.3f}",
                f"{r['tokens_per_s']:.1f}",
                f"{report['speedup'][r['case']][r['model']]:.2f}x",
                peak,
                info["dtype"],
                info["device"],
            )
        )
    return rows


def bench_speed(
    model: str,
    baseline: str | None,
    settings: SpeedSettings,
    *,
    dtype: str | None = None,
    device: str | None = None,
    attn_implementation: str | None = None,
) -> dict:
    """Load a pruned model and its dense baseline in the same dtype and measure both.

    ``baseline`` defaults to the base model named in the export's report.json.
    """
    from prunekit.export.load import base_spec_of
    from prunekit.loader import load

    attn = {"attn_implementation": attn_implementation}
    pruned = load(model, dtype=dtype, device=device, **attn)
    baseline = baseline or base_spec_of(model)
    dense = load(baseline, dtype=pruned.dtype, device=pruned.device, **attn)
    return speed_report({"dense": dense, "pruned": pruned}, settings, baseline="dense")
