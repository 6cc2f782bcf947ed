"""report.md: the run's report for a human reader."""

from __future__ import annotations


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def render_report_md(report: dict) -> str:
    model = report.get("model", {})
    params = report.get("params", {})
    lines = [
        f"# prunekit run: {report.get('method')} on {model.get('spec')}",
        "",
        "## Parameters",
        "",
        "| | before | after | ratio |",
        "|---|---:|---:|---:|",
        f"| total | {_fmt_params(params.get('before', 0))} | {_fmt_params(params.get('after', 0))} "
        f"| {params.get('ratio_total', 0):.4f} |",
        f"| decoder layers | {_fmt_params(params.get('decoder_before', 0))} "
        f"| {_fmt_params(params.get('decoder_after', 0))} | {params.get('ratio_decoder', 0):.4f} |",
        "",
    ]
    evals = report.get("eval", {})
    ppl_rows = []
    for dataset in sorted({d for side in evals.values() for d in side.get("ppl", {})}):
        dense = evals.get("dense", {}).get("ppl", {}).get(dataset, {})
        pruned = evals.get("pruned", {}).get("ppl", {}).get(dataset, {})
        ref = pruned or dense
        ppl_rows.append(
            f"| {dataset} | {ref.get('seqlen')} | {ref.get('windows')} "
            f"| {dense.get('ppl', float('nan')):.2f} | {pruned.get('ppl', float('nan')):.2f} |"
        )
    if ppl_rows:
        lines += [
            "## Perplexity",
            "",
            "| dataset | seqlen | windows | dense | pruned |",
            "|---|---:|---:|---:|---:|",
            *ppl_rows,
            "",
        ]
    settings = report.get("settings", {})
    if settings:
        lines += ["## Settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in settings.items()]
        lines.append("")
    timings = report.get("timings", {})
    if timings:
        lines += ["## Timings (s)", "", "| phase | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
        lines.append("")
    versions = report.get("versions", {})
    if versions:
        lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)
