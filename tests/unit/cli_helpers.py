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


def invoke_quietly(args: list[str]) -> str:
    """``prunekit ARGS`` in process (typer's runner), warnings silenced (a tiny run has few
    tokens per restored column); its output, after asserting it exited 0."""
    import warnings

    from typer.testing import CliRunner

    from prunekit import cli

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(cli.app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output
