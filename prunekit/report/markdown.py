"""report.md: one run's report for a human reader, rendered from report.json alone.

Everything shown comes from the report dict (plus the names of the PNGs beside it), so a report.md
can always be re-rendered from its report.json.
"""

from __future__ import annotations

from prunekit.report.formatting import fmt_acc, fmt_float, fmt_params, mean_or_none, table

NAN = float("nan")


def _params_section(params: dict) -> list[str]:
    rows = [
        [
            "total (embeddings included)",
            fmt_params(params.get("before")),
            fmt_params(params.get("after")),
            fmt_float(params.get("ratio_total"), 4),
        ],
        [
            "decoder layers",
            fmt_params(params.get("decoder_before")),
            fmt_params(params.get("decoder_after")),
            fmt_float(params.get("ratio_decoder"), 4),
        ],
    ]
    return ["## Parameters", "", *table(["", "before", "after", "ratio removed"], rows)]


def _stages_section(report: dict) -> list[str]:
    """A combined run: the split of the target and what each stage asked for and removed."""
    stages = report.get("stages") or []
    if not stages:
        return []
    split = report.get("split")
    note = (
        f"--ratio {split['ratio']} split with --depth-share {split['depth_share']}: the depth "
        "stage takes that fraction, the other stage the rest (its ratio from what the first "
        "really removed)."
        if split
        else "Each stage had its own target."
    )
    rows = []
    for number, stage in enumerate(stages, start=1):
        target = ", ".join(f"{k} {v:.4g}" for k, v in stage.get("target", {}).items())
        settings = ", ".join(f"{k} {v}" for k, v in stage.get("settings", {}).items())
        rows.append(
            [
                str(number),
                f"{stage['method']} ({stage['family']})",
                target or "–",
                fmt_params(stage.get("removed_params")),
                fmt_float(stage.get("ratio_of_stage_input"), 4),
                fmt_float(stage.get("ratio_total_after"), 4),
                settings or "–",
            ]
        )
    header = ["stage", "method", "target", "removed", "ratio of its input", "ratio_total after"]
    return [
        "## Stages",
        "",
        note + " Each stage ran on the model the stages before it left.",
        "",
        *table([*header, "settings"], rows, "lllrrrl"),
    ]


def _ppl_section(evals: dict) -> list[str]:
    datasets = sorted({d for side in evals.values() for d in side.get("ppl", {})})
    rows = []
    for dataset in datasets:
        dense = evals.get("dense", {}).get("ppl", {}).get(dataset, {})
        pruned = evals.get("pruned", {}).get("ppl", {}).get(dataset, {})
        ref = pruned or dense
        rows.append(
            [
                dataset,
                str(ref.get("seqlen")),
                str(ref.get("windows")),
                fmt_float(dense.get("ppl")),
                fmt_float(pruned.get("ppl")),
            ]
        )
    if not rows:
        return []
    header = ["dataset", "seqlen (tokens)", "windows", "dense ppl", "pruned ppl"]
    return ["## Perplexity (lower is better)", "", *table(header, rows)]


def _zeroshot_section(evals: dict) -> list[str]:
    sides = {
        s: evals[s]["zeroshot"] for s in ("dense", "pruned") if evals.get(s, {}).get("zeroshot")
    }
    if not sides:
        return []
    ref = sides.get("pruned") or sides["dense"]
    tasks = list(dict.fromkeys(t for z in sides.values() for t in z["tasks"]))
    entries = {t: next(z["tasks"][t] for z in sides.values() if t in z["tasks"]) for t in tasks}
    baselines = any(e.get("majority") is not None for e in entries.values())
    header = ["task", "metric", "items"] + (["majority answer (%)"] if baselines else [])
    for side in sides:
        header += [f"{side} acc (%)", f"{side} acc_norm (%)"]
    rows = []
    for task in tasks:
        entry = entries[task]
        row = [task, entry["average_metric"], str(entry["samples"])]
        row += [fmt_acc(entry.get("majority"))] if baselines else []
        for z in sides.values():
            t = z["tasks"].get(task, {})
            row += [
                fmt_acc(t.get("acc"), t.get("acc_stderr")),
                fmt_acc(t.get("acc_norm"), t.get("acc_norm_stderr")),
            ]
        rows.append(row)
    average = ["**average**", "acc_norm else acc", ""]
    if baselines:
        average += [fmt_acc(mean_or_none([e.get("majority") for e in entries.values()]))]
    for z in sides.values():
        average += [f"**{fmt_acc(z['average'])}**", ""]
    rows.append(average)
    limit = ref.get("limit")
    note = (
        f"0-shot, lm-eval {ref.get('lm_eval_version')}, tasks from {ref.get('source')}; "
        + (f"first {limit} items per task" if limit else "full task sets")
        + ". Average: acc_norm where the task has it, else acc (BlockPruner's convention)."
        + (
            " Majority answer: the accuracy of always giving the task's most frequent gold answer"
            " on these items; a score near it means the model is not reading the question."
            if baselines
            else ""
        )
    )
    align = "llr" + "r" * (len(header) - 3)
    return ["## Zero-shot accuracy (higher is better)", "", note, "", *table(header, rows, align)]


def _speed_target_section(report: dict) -> list[str]:
    """``--target-speedup`` runs: the chosen split beside the pure plans (speedtarget/report.py)."""
    if not report.get("speed_target"):
        return []
    from prunekit.speedtarget.report import speed_target_markdown

    return [speed_target_markdown(report["speed_target"]), ""]


def render_report_md(report: dict, images: list[str] | None = None) -> str:
    model = report.get("model", {})
    settings = report.get("settings", {})
    evals = report.get("eval", {})
    target = ", ".join(
        f"{k} {settings[k]}" for k in ("ratio", "blocks", "sparsity") if settings.get(k) is not None
    )
    if report.get("speed_target"):  # --target-speedup: the stages' targets were chosen for it
        target = f"speed-up {report['speed_target']['target']:g}× {report['speed_target']['phase']}"
    lines = [
        f"# prunekit run: {report.get('method')} on {model.get('spec')}",
        "",
        f"- method: **{report.get('method')}** ({report.get('family')})",
        f"- model: {model.get('spec')} ({model.get('model_type')}, "
        f"{model.get('num_hidden_layers')} layers, {model.get('dtype', '?')} on "
        f"{model.get('device', '?')})",
        f"- target: {target or '–'}; calibration: {settings.get('calib')}, "
        f"{settings.get('n_samples')} × {settings.get('seqlen')} tokens, "
        f"seed {settings.get('seed')}",
        "",
        *_params_section(report.get("params", {})),
        *_stages_section(report),
        *_speed_target_section(report),
        *_ppl_section(evals),
        *_zeroshot_section(evals),
    ]
    if images:
        lines += ["## Plots", ""]
        lines += [f"![{name.removesuffix('.png')}]({name})\n" for name in images]
    timings = report.get("timings", {})
    if timings:
        rows = [[k, f"{v:.1f}"] for k, v in timings.items()]
        lines += ["## Timings", "", *table(["phase", "seconds"], rows)]
    if settings:
        rows = [[k, f"`{v}`"] for k, v in settings.items()]
        lines += ["## All settings", "", *table(["setting", "value"], rows, "ll")]
    versions = report.get("versions", {})
    if versions:
        lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)
