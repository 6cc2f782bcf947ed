"""No-regression check of the one engine (issue 25, item 8), and the batch-size sweep (item 4).

Times, in one invocation and on the same machine, the in-memory BlockPruner search (K=2, 4 x 128
C4 tokens, the default criterion) and FASP (the default allocation, ratio 0.2) on SmolLM2-135M
with the code of an older commit (``--old``: a git worktree of it) and with this tree, each run
in a fresh subprocess, old and new alternating, ``--repeats`` times; then this tree at every
``--batch-sizes``. Plans must agree (removal order; kept channels). Writes
docs/results/engine_regression.md.

    git worktree add --detach /tmp/old 191cb91
    python bench/engine_regression.py --old /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from results_notes import NOTES_MARKER, kept_notes

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "engine_regression.md"

# One timed run, printed as JSON: the plan's identity and the seconds the method took.
RUN = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from prunekit.api import prune
from prunekit.models.loading import load_model
method, batch = sys.argv[1], int(sys.argv[2])
loaded = load_model("smollm2-135m", dtype="fp32", device="cpu")
settings = dict(calib="c4", n_samples=4, seqlen=128, seed=0)
if batch > 1:
    settings["batch_size"] = batch
if method == "blockpruner":
    settings["blocks"] = 2
else:
    settings["ratio"] = 0.2
started = time.perf_counter()
result = prune(loaded, method, **settings)
seconds = time.perf_counter() - started
plan = result.plan
key = plan.removed_blocks or plan.kept_channels
print(json.dumps({"seconds": seconds, "plan": key}))
"""


def run(tree: Path, method: str, batch: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, "-c", RUN, method, str(batch), str(threads)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tree,
    )
    if done.returncode != 0:
        raise SystemExit(f"{tree} {method} batch {batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="worktree of the older commit")
    parser.add_argument("--methods", nargs="+", default=["blockpruner", "fasp"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    old_commit = subprocess.run(
        ["git", "-C", str(args.old), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    new_commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    rows, sweep = [], []
    for method in args.methods:
        times: dict[str, list[float]] = {"old": [], "new": []}
        plans: dict[str, object] = {}
        for _ in range(args.repeats):
            for side, tree in (("old", args.old), ("new", ROOT)):
                result = run(tree, method, 1, args.threads)
                times[side].append(result["seconds"])
                plans[side] = result["plan"]
                print(f"{method} {side}: {result['seconds']:.1f} s", flush=True)
        old, new = statistics.median(times["old"]), statistics.median(times["new"])
        rows.append((method, old, new, plans["old"] == plans["new"]))
        for batch in args.batch_sizes:
            result = run(ROOT, method, batch, args.threads)
            sweep.append((method, batch, result["seconds"], result["plan"] == plans["new"]))
            print(f"{method} batch {batch}: {result['seconds']:.1f} s", flush=True)
    cpu = platform.processor() or platform.machine()
    lines = [
        "# One engine: no regression, and the batch-size sweep (CPU)",
        "",
        f"`python bench/engine_regression.py --old <worktree of {old_commit}>` on this tree "
        f"({new_commit}), {args.threads} threads, {cpu}, fp32, SmolLM2-135M in memory, "
        "4 x 128 C4 calibration tokens. BlockPruner: K=2, the default criterion (kl-per-param "
        "over blocks and layers); FASP: the default allocation, ratio_total 0.2. Each number is "
        f"the median of {args.repeats} fresh processes, old and new alternating; the method's "
        "own time (loading excluded).",
        "",
        f"| method | old {old_commit} (s) | new {new_commit} (s) | new / old | same plan |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [f"| {m} | {o:.1f} | {n:.1f} | {n / o:.2f} | {same} |" for m, o, n, same in rows]
    lines += [
        "",
        "## Batch sizes (this tree)",
        "",
        "| method | batch | seconds | same plan as batch 1 |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {m} | {b} | {s:.1f} | {same} |" for m, b, s, same in sweep]
    notes = kept_notes(OUT)
    OUT.write_text("\n".join(lines) + f"\n\n{NOTES_MARKER}\n\n{notes}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
