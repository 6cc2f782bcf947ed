"""Speed timing runs with no memory sampler alive; peak memory comes from a separate run."""

from __future__ import annotations

import mmap
import threading

from prunekit.evaluation.speed import SAMPLER_THREAD, run_interleaved

RUNS, WARMUP = 3, 1
HELD_MB = 64


def sampler_alive() -> bool:
    return any(t.name == SAMPLER_THREAD for t in threading.enumerate())


def recording_runner(seen: list[bool]):
    """A run that notes whether the sampler thread exists, then holds HELD_MB for a while."""

    def run() -> None:
        seen.append(sampler_alive())
        # Fresh pages from the kernel, touched: a tensor could come from heap memory an earlier
        # test freed but the allocator kept resident, and RSS would not move.
        block = mmap.mmap(-1, HELD_MB * 2**20)
        block.write(b"\x01" * len(block))
        threading.Event().wait(0.05)  # long enough for several 5 ms samples
        block.close()

    return run


def test_timed_runs_have_no_sampler_thread_and_peak_memory_is_still_reported():
    seen = {"a": [], "b": []}
    runners = {name: recording_runner(calls) for name, calls in seen.items()}
    results = run_interleaved("case", runners, {"a": "cpu", "b": "cpu"}, 1, RUNS, WARMUP)

    for name, calls in seen.items():
        # warm-up, then the timed runs, then exactly one untimed memory run with the sampler on
        assert calls == [False] * (WARMUP + RUNS) + [True], name
    assert not sampler_alive()
    for result in results:
        assert len(result.seconds) == RUNS
        # RSS is sampled, and a freed block may return to a pool: allow some slack below 64 MB
        assert result.peak_memory_mb is not None and result.peak_memory_mb > HELD_MB / 2


def test_each_round_starts_with_the_next_model():
    """No model always runs first: the timed order rotates by one each round."""
    order: list[str] = []
    runners = {name: (lambda name=name: order.append(name)) for name in "abc"}
    run_interleaved("case", runners, dict.fromkeys("abc", "cpu"), 1, runs=3, warmup=0)
    timed = order[:9]  # then one untimed memory run each, in the given order
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert order[9:] == ["a", "b", "c"]
