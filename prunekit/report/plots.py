"""Plots of a run (optional extra ``plot``): without matplotlib they are skipped with a notice."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from prunekit.models.adapters import BLOCK_KINDS, BlockRef
from prunekit.plan import PruningPlan

log = logging.getLogger(__name__)

CALIB_PLOT = "calib_ppl.png"
LAYER_MAP_PLOT = "layer_map.png"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: plots skipped (pip install 'prunekit[plot]' for matplotlib)", file=sys.stderr)
        return None
    return plt


def write_depth_plots(run_dir: str | Path, plan: PruningPlan, num_layers: int) -> list[Path]:
    """Calibration ppl vs removed blocks, and a layer map of what went; returns the files."""
    plt = _pyplot()
    if plt is None or not plan.trajectory:
        return []
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _calibration_curve(plt, plan, run_dir / CALIB_PLOT),
        _layer_map(plt, plan, num_layers, run_dir / LAYER_MAP_PLOT),
    ]
    return written


def _calibration_curve(plt, plan: PruningPlan, path: Path) -> Path:
    steps = plan.trajectory
    blocks = [sum(len(s["blocks"]) for s in steps[: i + 1]) for i in range(len(steps))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(blocks, [s["calib_ppl"] for s in steps], marker="o")
    ax.set_xlabel("blocks removed")
    ax.set_ylabel("calibration perplexity")
    ax.set_yscale("log")
    ax.set_title(f"{plan.method}: ratio_total {steps[-1]['ratio_total']:.3f}")
    for x, s in zip(blocks, steps, strict=True):
        ax.annotate(s["removed"], (x, s["calib_ppl"]), fontsize=6, rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _layer_map(plt, plan: PruningPlan, num_layers: int, path: Path) -> Path:
    """A 2 x L grid: removed blocks coloured by the step that removed them."""
    import numpy as np

    step_of = {}
    for step in plan.trajectory:
        for text in step["blocks"]:
            step_of[BlockRef.parse(text)] = step["step"]
    grid = np.full((len(BLOCK_KINDS), num_layers), np.nan)
    for block, step in step_of.items():
        grid[BLOCK_KINDS.index(block.kind), block.layer] = step
    fig, ax = plt.subplots(figsize=(max(6, num_layers * 0.25), 2.2))
    image = ax.imshow(grid, aspect="auto", cmap="viridis_r")
    ax.set_yticks(range(len(BLOCK_KINDS)), list(BLOCK_KINDS))
    ax.set_xticks(range(num_layers))
    ax.tick_params(axis="x", labelsize=6)
    ax.set_xlabel("layer (white: kept; colour: removal step)")
    fig.colorbar(image, ax=ax, label="step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
