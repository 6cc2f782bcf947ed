"""The rich tables and one-line summaries the commands print."""

from __future__ import annotations

from rich.table import Table

from prunekit.cli.application import console


def ppl_table(title: str, results: dict[str, dict]) -> Table:
    table = Table(title=title)
    for col in ("dataset", "ppl", "seqlen", "windows", "tokens", "seconds"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['ppl']:.3f}",
            str(r["seqlen"]),
            str(r["windows"]),
            str(r["tokens"]),
            f"{r['seconds']:.1f}",
        )
    return table


def zeroshot_table(title: str, result: dict) -> Table:
    table = Table(title=title)
    for col in ("task", "items", "acc", "acc_norm", "majority answer", "seconds"):
        table.add_column(col, justify="left" if col == "task" else "right")

    def pct(value: float | None, err: float | None = None) -> str:
        if value is None:
            return "–"
        return f"{100 * value:.1f}" + ("" if err is None else f" ± {100 * err:.1f}")

    for name, t in result["tasks"].items():
        table.add_row(
            name,
            str(t["samples"]),
            pct(t["acc"], t["acc_stderr"]),
            pct(t["acc_norm"], t["acc_norm_stderr"]),
            pct(t.get("majority")),
            f"{t['seconds']:.0f}",
        )
    table.add_row("average", "", "", f"{100 * result['average']:.1f}", "", "")
    table.caption = (
        f"lm-eval {result['lm_eval_version']}, {result['source']}, limit {result['limit']}; "
        "average: acc_norm where the task has it, else acc; majority answer: the accuracy of "
        "always giving the most frequent gold answer"
    )
    return table


def print_eval(title: str, result: dict) -> None:
    if result.get("ppl"):
        console.print(ppl_table(f"perplexity: {title}", result["ppl"]))
    if result.get("zeroshot"):
        console.print(zeroshot_table(f"zero-shot: {title}", result["zeroshot"]))


def print_gguf(result) -> None:
    console.print(
        f"model saved: {result.path} (gguf, {result.arch} architecture, {result.gguf_type}, "
        f"{result.file_bytes / 2**20:.1f} MiB; report {result.report_path.name})"
    )


def print_params(title: str, params: dict) -> None:
    console.print(
        f"[bold]{title}[/]: {params['before'] / 1e6:.2f} M -> {params['after'] / 1e6:.2f} M "
        f"parameters (ratio_total {params['ratio_total']:.4f})"
    )
