"""Markdown cells and tables shared by report.md, the comparison, the model card and the
speed-target section (``speedtarget/report.py``), which report.md embeds: a module of its own, so
the two renderers import it and not each other."""

from __future__ import annotations


def fmt_params(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f} M"


def fmt_float(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def mean_or_none(values: list[float | None]) -> float | None:
    """The mean, or None when any value (or all of them) is missing."""
    if not values or None in values:
        return None
    return sum(values) / len(values)


def fmt_acc(value: float | None, stderr: float | None = None) -> str:
    """Accuracy in percent, with its standard error when known: ``45.2 ± 1.0``."""
    if value is None:
        return "–"
    return f"{100 * value:.1f}" + (f" ± {100 * stderr:.1f}" if stderr is not None else "")


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    """A markdown table; ``align`` is one character per column: l or r (default: l then r...)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(rule) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
