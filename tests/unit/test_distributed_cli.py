"""`torchrun --nproc-per-node 2 -m prunekit prune ...` as a user types it: one run directory and
one export (written by rank 0), one summary printed, the plan of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_streamed_depth import save_small_shards

pytestmark = pytest.mark.usefixtures("data_dir")

TORCHRUN = Path(sys.executable).with_name("torchrun")
ARGS = ["--method", "fasp", "--ratio", "0.2", "--calib", "wikitext2", "--n-samples", "3"]
ARGS += ["--seqlen", "24", "--device", "cpu", "--dtype", "fp32", "--ppl", "wikitext2"]
ARGS += ["--ppl-seqlen", "32", "--ppl-max-windows", "5"]


def prune(launcher: list[str], model: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNEKIT_PROGRESS": "0"}
    command = [*launcher, "prune", "--model", str(model), *ARGS]
    command += ["--out", str(out / "run"), "--save", str(out / "model")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_two_ranks_write_once_and_plan_as_one_process(tmp_path):
    model = save_small_shards("llama", tmp_path / "dense")
    two = prune([str(TORCHRUN), "--nproc-per-node", "2", "-m", "prunekit"], model, tmp_path / "2")
    assert two.returncode == 0, two.stderr[-2000:]
    one = prune([sys.executable, "-m", "prunekit"], model, tmp_path / "1")
    assert one.returncode == 0, one.stderr[-2000:]

    assert two.stdout.count("run directory:") == 1  # rank 1 prints nothing
    assert sorted(p.name for p in (tmp_path / "2").iterdir()) == ["model", "run"]
    report = json.loads((tmp_path / "2" / "run" / "report.json").read_text())
    assert report["distributed"]["world_size"] == 2
    assert report["distributed"]["backend"] == "gloo"
    assert sorted(w for ws in report["distributed"]["windows_by_rank"] for w in ws) == [0, 1, 2]
    alone = json.loads((tmp_path / "1" / "run" / "report.json").read_text())
    assert "distributed" not in alone
    plans = [json.loads((tmp_path / n / "run" / "plan.json").read_text()) for n in ("1", "2")]
    assert plans[0]["kept_channels"] == plans[1]["kept_channels"]
    nll = {
        side: [r["eval"][side]["ppl"]["wikitext2"]["nll_sum"] for r in (alone, report)]
        for side in ("dense", "pruned")
    }
    assert nll["dense"][0] == nll["dense"][1]  # batch sums gathered, added in order: same bits
    # The restored weights differ in the last bits (the statistics summed in another order).
    assert nll["pruned"][1] == pytest.approx(nll["pruned"][0], rel=1e-6)
