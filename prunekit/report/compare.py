"""``prunekit report``: one comparison across run directories (markdown, CSV, a ppl-vs-ratio PNG).

Rows are built from the runs' report.json files only (validated against the schema), so runs of
any method, made at any time, compare side by side. The dense model appears once per base model,
taken from the first run that evaluated it.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from prunekit.report.markdown import fmt_acc, fmt_float, fmt_params, mean_or_none, table
from prunekit.report.run_dir import REPORT_FILE
from prunekit.report.schema import ReportError, validate_report

PLOT_DATASET = "wikitext2"
MARKDOWN_FILE = "comparison.md"
CSV_FILE = "comparison.csv"
PLOT_FILE = "ppl_vs_ratio.png"


@dataclass
class Row:
    """One line of the comparison: the dense model or one pruned run."""

    label: str
    method: str
    model: str
    ratio_total: float
    params: int
    ppl: dict[str, float] = field(default_factory=dict)
    ppl_seqlen: dict[str, int] = field(default_factory=dict)
    ppl_windows: dict[str, int | None] = field(default_factory=dict)  # None: the full test set
    acc: dict[str, float] = field(default_factory=dict)  # acc_norm where the task has it, else acc
    majority: dict[str, float] = field(default_factory=dict)  # always the most frequent answer
    average: float | None = None
    limit: int | None = None


def read_report(run_dir: str | Path) -> dict:
    path = Path(run_dir) / REPORT_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{run_dir}: no {REPORT_FILE} (not a finished run directory)") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from None
    try:
        validate_report(data)
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from None
    return data


def _row(label: str, method: str, report: dict, side: str, ratio: float, params: int) -> Row:
    evaluated = report["eval"].get(side, {})
    zeroshot = evaluated.get("zeroshot") or {}
    tasks = zeroshot.get("tasks", {})
    ppl = evaluated.get("ppl", {})
    return Row(
        label=label,
        method=method,
        model=report["model"]["spec"],
        ratio_total=ratio,
        params=params,
        ppl={d: e["ppl"] for d, e in ppl.items()},
        ppl_seqlen={d: e["seqlen"] for d, e in ppl.items()},
        ppl_windows={d: e.get("max_windows") and e.get("windows") for d, e in ppl.items()},
        acc={t: e[e["average_metric"]] for t, e in tasks.items()},
        majority={t: e["majority"] for t, e in tasks.items() if e.get("majority") is not None},
        average=zeroshot.get("average"),
        limit=zeroshot.get("limit"),
    )


def comparison_rows(run_dirs: list[str | Path]) -> list[Row]:
    """A dense row per base model (when any run evaluated it), then one row per run."""
    dense: dict[str, Row] = {}
    pruned: list[Row] = []
    for run_dir in run_dirs:
        report = read_report(run_dir)
        params = report["params"]
        spec = report["model"]["spec"]
        if "dense" in report["eval"] and spec not in dense:
            dense[spec] = _row("dense", "dense", report, "dense", 0.0, params["before"])
        row = _row(Path(run_dir).name, report["method"], report, "pruned", 0.0, params["after"])
        row.ratio_total = params["ratio_total"]
        pruned.append(row)
    return [*dense.values(), *sorted(pruned, key=lambda r: (r.method, r.ratio_total))]


def _columns(rows: list[Row]) -> tuple[list[str], list[str]]:
    datasets = sorted({d for r in rows for d in r.ppl})
    tasks = list(dict.fromkeys(t for r in rows for t in r.acc))
    return datasets, tasks


def _ppl_setting(rows: list[Row], dataset: str, seqlen: int) -> str:
    """'seqlen 512, first 32 windows' when every run used the same subset, else 'seqlen 512'."""
    windows = {r.ppl_windows.get(dataset) for r in rows if dataset in r.ppl}
    if len(windows) == 1 and (count := windows.pop()) is not None:
        return f"seqlen {seqlen}, first {count} windows"
    return f"seqlen {seqlen}"


def render_markdown(rows: list[Row], plot: str | None = None) -> str:
    datasets, tasks = _columns(rows)
    seqlens = {d: next(r.ppl_seqlen[d] for r in rows if d in r.ppl_seqlen) for d in datasets}
    header = ["run", "method", "ratio_total", "params"]
    header += [f"{d} ppl ({_ppl_setting(rows, d, seqlens[d])})" for d in datasets]
    header += [f"{t} (%)" for t in tasks] + (["avg (%)"] if tasks else [])
    body = []
    for r in rows:
        line = [r.label, r.method, f"{r.ratio_total:.3f}", fmt_params(r.params)]
        line += [fmt_float(r.ppl.get(d)) for d in datasets]
        line += [fmt_acc(r.acc.get(t)) for t in tasks]
        line += [fmt_acc(r.average)] if tasks else []
        body.append(line)
    body += _majority_row(rows, tasks, len(datasets))
    models = sorted({r.model for r in rows})
    limits = sorted({r.limit for r in rows if r.acc}, key=lambda v: (v is None, v))
    lines = [
        "# prunekit comparison",
        "",
        f"Model: {', '.join(models)}. ratio_total = fraction of all parameters removed "
        "(embeddings and LM head included). Perplexity: lower is better.",
        "",
    ]
    if tasks:
        limit_text = ", ".join("full sets" if v is None else f"first {v} items" for v in limits)
        lines.append(
            f"Zero-shot accuracy in %, higher is better ({limit_text} per task); acc_norm where "
            "the task has it, else acc; avg = their mean (BlockPruner's convention)."
        )
        if body and body[-1][0] == MAJORITY_LABEL:
            lines.append(
                f"`{MAJORITY_LABEL}`: the accuracy of always giving each task's most frequent "
                "gold answer on the same items; a model near it is not reading the question."
            )
    lines += ["", *table(header, body, "ll" + "r" * (len(header) - 2))]
    if plot:
        lines += [f"![{PLOT_DATASET} perplexity vs ratio_total]({plot})", ""]
    return "\n".join(lines)


MAJORITY_LABEL = "majority answer"


def _majority_row(rows: list[Row], tasks: list[str], datasets: int) -> list[list[str]]:
    """The always-the-most-frequent-answer baseline, when every run scored the same items."""
    scored = [r for r in rows if r.acc]
    if not tasks or len({r.limit for r in scored}) != 1:
        return []
    majority = [next((r.majority[t] for r in scored if t in r.majority), None) for t in tasks]
    average = mean_or_none(majority)
    if average is None:
        return []
    cells = [fmt_acc(m) for m in majority]
    return [[MAJORITY_LABEL, "baseline", "", ""] + [""] * datasets + cells + [fmt_acc(average)]]


def write_csv(rows: list[Row], path: Path) -> None:
    datasets, tasks = _columns(rows)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["run", "method", "model", "ratio_total", "params"]
            + [f"ppl_{d}" for d in datasets]
            + [f"acc_{t}" for t in tasks]
            + ["acc_average", "zeroshot_limit"]
        )
        for r in rows:
            writer.writerow(
                [r.label, r.method, r.model, f"{r.ratio_total:.6f}", r.params]
                + [r.ppl.get(d, "") for d in datasets]
                + [r.acc.get(t, "") for t in tasks]
                + [r.average if r.average is not None else "", r.limit or ""]
            )


def write_plot(rows: list[Row], path: Path) -> Path | None:
    """WikiText-2 ppl vs ratio_total, one line per method, the dense model as a dashed line."""
    points = [r for r in rows if PLOT_DATASET in r.ppl and math.isfinite(r.ppl[PLOT_DATASET])]
    if not points:
        print(f"note: no {PLOT_DATASET} perplexity in these runs; plot skipped", file=sys.stderr)
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: plot skipped (pip install 'prunekit[plot]' for matplotlib)", file=sys.stderr)
        return None
    from matplotlib.ticker import FuncFormatter, LogLocator

    seqlen = points[0].ppl_seqlen[PLOT_DATASET]
    dense = next((r for r in points if r.method == "dense"), None)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if dense is not None:
        ax.axhline(dense.ppl[PLOT_DATASET], color="gray", linestyle="--", linewidth=1)
        ax.plot([0.0], [dense.ppl[PLOT_DATASET]], "o", color="gray", label="dense")
    for method in sorted({r.method for r in points} - {"dense"}):
        mine = sorted((r for r in points if r.method == method), key=lambda r: r.ratio_total)
        # Each line starts at the dense model: a method with one run still reads as a trend.
        line = ([dense] if dense is not None else []) + mine
        (handle,) = ax.plot(
            [r.ratio_total for r in line],
            [r.ppl[PLOT_DATASET] for r in line],
            marker="o",
            label=method,
        )
        for r in mine:
            ax.annotate(
                f"{r.ppl[PLOT_DATASET]:.1f}",
                (r.ratio_total, r.ppl[PLOT_DATASET]),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
                color=handle.get_color(),
            )
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=(2, 3, 5)))
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("ratio_total (fraction of all parameters removed)")
    ax.set_ylabel(f"WikiText-2 perplexity (seqlen {seqlen}, log scale)")
    ax.set_title(f"Perplexity vs pruning ratio — {', '.join(sorted({r.model for r in points}))}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_comparison(run_dirs: list[str | Path], out: str | Path) -> dict[str, Path]:
    """Write comparison.md, comparison.csv and (with matplotlib) ppl_vs_ratio.png into ``out``."""
    if not run_dirs:
        raise ReportError("name at least one run directory")
    rows = comparison_rows(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    plot = write_plot(rows, out / PLOT_FILE)
    if plot:
        written["plot"] = plot
    write_csv(rows, out / CSV_FILE)
    written["csv"] = out / CSV_FILE
    (out / MARKDOWN_FILE).write_text(render_markdown(rows, PLOT_FILE if plot else None))
    written["markdown"] = out / MARKDOWN_FILE
    return written
