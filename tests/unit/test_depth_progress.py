"""Progress a user can watch: per-candidate ticks with the best so far, kept step bar, logs."""

from __future__ import annotations

import logging
import math
import re

import pytest

from prunekit.methods.depth import search
from prunekit.methods.depth.common import block_units, unit_parameters
from prunekit.methods.depth.search import Target, greedy_search
from tests.unit.depth_helpers import one_thread  # noqa: F401
from tests.unit.test_depth_search import _runner

STEPS = 2


class RecordingBar:
    def __init__(self, desc: str | None, total: int, leave: bool = False, **kwargs) -> None:
        self.desc, self.total, self.leave = desc, total, leave
        self.n, self.postfixes, self.closed = kwargs.get("initial", 0), [], False

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfixes.append((self.n, s))

    def close(self) -> None:
        self.closed = True


def _search(naive: bool = False, desc: str | None = "blockpruner search"):
    runner = _runner("llama")
    units = block_units(runner, "both", set())
    target = Target(None, STEPS, 10**6)
    params = unit_parameters(runner, units)
    state = greedy_search(runner, units, params, target, "ppl", desc=desc, naive=naive)
    return units, state


@pytest.mark.parametrize("naive", [False, True])
def test_each_candidate_ticks_its_step_bar_with_the_best_so_far(naive: bool, monkeypatch) -> None:
    bars: list[RecordingBar] = []

    def recording_bar(*args, **kwargs) -> RecordingBar:
        bars.append(RecordingBar(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(search, "progress_bar", recording_bar)
    units, state = _search(naive)
    outer, steps = bars[0], bars[1:]
    assert outer.desc == "blockpruner search" and outer.leave and outer.total == STEPS
    assert outer.n == STEPS and outer.closed
    assert [bar.desc for bar in steps] == [f"step {k}" for k in range(1, STEPS + 1)]
    for k, (bar, entry) in enumerate(zip(steps, state.trajectory, strict=True)):
        candidates = len(units) - k
        assert bar.total == candidates and bar.n == candidates and bar.closed
        assert not bar.leave  # a finished step's bar makes room for the next
        # One postfix per candidate, each after its tick; the last names the step's winner.
        assert [n for n, _ in bar.postfixes] == list(range(1, candidates + 1))
        assert bar.postfixes[-1][1] == f"best {entry['removed']} ppl {entry['calib_ppl']:.4g}"
        assert all(re.fullmatch(r"best \S+ ppl [0-9.e+]+", s) for _, s in bar.postfixes)
    assert outer.postfixes[-1][1].startswith(f"removed {state.trajectory[-1]['removed']}")


def test_progress_on_stderr_shows_every_candidate(monkeypatch, capsys) -> None:
    monkeypatch.setenv("PRUNEKIT_PROGRESS", "1")
    units, state = _search()
    err = capsys.readouterr().err
    for k in range(1, STEPS + 1):
        candidates = len(units) - k + 1
        for n in range(1, candidates + 1):
            assert re.search(rf"step {k}:.*\b{n}/{candidates}\b", err), (k, n)
    winner = state.trajectory[0]
    assert f"best {winner['removed']} ppl {winner['calib_ppl']:.4g}" in err
    assert "blockpruner search: 100%" in err and f"{STEPS}/{STEPS}" in err


def test_no_bar_without_progress(monkeypatch, capsys) -> None:
    monkeypatch.setenv("PRUNEKIT_PROGRESS", "0")
    _search()
    assert capsys.readouterr().err == ""


def test_each_step_is_logged(caplog) -> None:
    with caplog.at_level(logging.INFO, logger=search.__name__):
        units, state = _search(desc=None)
    messages = [r.getMessage() for r in caplog.records if r.name == search.__name__]
    assert messages[0].startswith(f"depth search: {len(units)} candidates")
    for entry in state.trajectory:
        line = next(m for m in messages if m.startswith(f"step {entry['step']}: "))
        assert f"removed {entry['removed']}, calib ppl {entry['calib_ppl']:.4f}" in line
        heads = f"{entry['window_evals']} of {entry['naive_window_evals']} full LM heads"
        assert heads in line
    assert math.isfinite(state.trajectory[-1]["calib_ppl"])
