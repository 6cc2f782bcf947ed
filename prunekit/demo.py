"""``prunekit demo``: the main job at a size that finishes in minutes on a slow CPU.

The demo is an ordinary ``prunekit prune`` run; only its settings are small. It prints the
command it runs, so a user can copy it, and after the tables it says what each small setting
costs and what a full-size run changes. The settings are sized for the slowest CPU we support
(2 cores, AVX2 only, fp32); docs/results/demo.md has the measured time (``bench/demo_time.py``).
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL = "smollm2-135m"
RATIO = 0.1
# Whole layers as candidates: 30 a step instead of 90 for blocks+layers. At ratio 0.1 on SmolLM2
# the default search removes whole layers' worth anyway (docs/results/depth_targets.md: 4
# attention + 4 MLP blocks), and each step costs a third.
CANDIDATES = "layers"
CALIB_SAMPLES, CALIB_SEQLEN = 4, 128
EVAL_WINDOWS, EVAL_SEQLEN = 16, 512


def demo_argv(model: str, out: Path) -> list[str]:
    """The ``prunekit prune`` arguments of the demo (what ``make demo`` runs)."""
    return [
        *("prune", "--method", "blockpruner", "--model", model, "--ratio", str(RATIO)),
        *("--candidates", CANDIDATES),
        *("--calib", "c4", "--n-samples", str(CALIB_SAMPLES), "--seqlen", str(CALIB_SEQLEN)),
        *("--ppl", "wikitext2", "--ppl-seqlen", str(EVAL_SEQLEN)),
        *("--ppl-max-windows", str(EVAL_WINDOWS)),
        *("--out", str(out), "--overwrite"),
    ]


def full_size_notes(model: str, out: Path) -> list[str]:
    """What the demo's small settings change, and the command of a full-size run."""
    return [
        "This was a demo-sized run. A full-size run changes:",
        f"  - calibration: {CALIB_SAMPLES} x {CALIB_SEQLEN} C4 tokens here; --n-samples 16 "
        "--seqlen 512 (or more) gives a steadier choice of what to remove, and the search's "
        "time grows with the tokens",
        "  - candidates: whole layers here; the default (blocks+layers) may also remove a "
        "layer's attention or MLP alone (3x the candidates a step), which matters at higher "
        "ratios",
        f"  - evaluation: the first {EVAL_WINDOWS} WikiText-2 windows of {EVAL_SEQLEN} tokens "
        "here; the protocol's number is every window at --ppl-seqlen 2048 (drop "
        "--ppl-max-windows)",
        f"  - target: {RATIO:.0%} of the parameters; the README's tables go to 30 % and compare "
        "BlockPruner with FASP (width) and the baselines",
        "A full-size run (hours on a 2-core CPU; docs/results/depth_targets.md has search times):",
        f"  prunekit prune --method blockpruner --model {model} --ratio 0.2 --n-samples 16 "
        "--seqlen 512 --ppl wikitext2 --ppl-seqlen 2048 --out runs/bp20",
        f"The plan, report.json and report.md are in {out}/; "
        f"`prunekit export {out} --out models/demo` saves the pruned model.",
    ]
