"""Running the CLI's real entry point in-process, for tests of its output and exit codes."""

from __future__ import annotations

import sys

from prunekit import cli


def run_main(monkeypatch, capsys, args: list[str]) -> tuple[int, str, str]:
    """``prunekit ARGS`` through ``cli.main`` (which maps errors to one line): (code, out, err)."""
    monkeypatch.setattr(sys, "argv", ["prunekit", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
