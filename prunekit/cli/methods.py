"""``prunekit methods``: the methods and the settings each takes."""

from __future__ import annotations

from rich.table import Table

from prunekit.cli.application import app, console
from prunekit.methods.settings import flag


@app.command("methods")
def methods_command() -> None:
    """List the pruning methods and the settings (prune flags) each one takes."""
    from prunekit.methods.catalogue import all_methods

    table = Table(
        title="methods",
        caption="Combine a depth and a width method with + (e.g. blockpruner+fasp, fasp+sleb): "
        "the stages run in that order; --depth-share splits --ratio between them.",
    )
    for col in ("name", "family", "settings", "what it does"):
        table.add_column(col)
    for m in all_methods():
        table.add_row(m.name, m.family, " ".join(flag(name) for name in m.takes), m.summary)
    console.print(table)
