"""``prunekit demo``: the main job at a size that finishes in minutes on a slow CPU.

The demo is an ordinary ``prunekit prune`` run; only its settings are small. It prints the
command it runs, so a user can copy it, and after the tables it says what each small setting
costs and what a full-size run changes. The settings are sized for the slowest CPU we support
(2 cores, AVX2 only, fp32): docs/results/demo.md has the measured time.
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL = "smollm2-135m"


def demo_argv(model: str, out: Path) -> list[str]:
    """The ``prunekit prune`` arguments of the demo (what ``make demo`` runs)."""
    return [
        "prune",
        "--method",
        "blockpruner",
        "--model",
        model,
        "--ratio",
        "0.1",
        # Whole layers as candidates: 30 a step instead of 90 for blocks+layers, and at ratio
        # 0.1 on SmolLM2 the default search removes whole layers anyway (docs/results/
        # depth_targets.md: 4 attention + 4 MLP blocks).
        "--candidates",
        "layers",
        "--calib",
        "c4",
        "--n-samples",
        "4",
        "--seqlen",
        "128",
        "--ppl",
        "wikitext2",
        "--ppl-seqlen",
        "512",
        "--ppl-max-windows",
        "16",
        "--dtype",
        "auto",
        "--out",
        str(out),
        "--overwrite",
    ]


def full_size_notes(out: Path) -> list[str]:
    """What the demo's small settings change, and the command of a full-size run."""
    return [
        "[bold]This was a demo-sized run.[/] A full-size run changes:",
        "  - calibration: 4 x 128 C4 tokens here; use --n-samples 16 --seqlen 512 or more "
        "(a more reliable choice of what to remove, the search takes ~16x longer)",
        "  - candidates: whole layers here; the default (blocks+layers) may also remove a "
        "layer's attention or MLP alone, which matters at higher ratios",
        "  - evaluation: the first 16 WikiText-2 windows of 512 tokens here; PROTOCOL's "
        "number is every window at --ppl-seqlen 2048 (drop --ppl-max-windows)",
        "  - target: 10 % of the parameters; the README's tables go to 30 % and compare "
        "BlockPruner with FASP (width) and the baselines",
        "A full-size run (about an hour on a 2-core CPU, minutes on a GPU):",
        "  prunekit prune --method blockpruner --model smollm2-135m --ratio 0.2 "
        "--n-samples 16 --seqlen 512 --ppl wikitext2 --ppl-seqlen 2048 --out runs/bp20",
        f"The demo's plan, report.json and report.md are in {out}/; "
        f"`prunekit export {out} --out models/demo` saves the pruned model.",
    ]
