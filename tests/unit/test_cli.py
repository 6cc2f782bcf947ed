"""The command line: documented options, results, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.models.tiny import save_tiny

runner = CliRunner()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_eval_help_documents_every_option():
    result = runner.invoke(app, ["eval", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in (
        "--model",
        "--ppl",
        "--seqlen",
        "--max-windows",
        "--batch-size",
        "--dtype",
        "--device",
        "--json",
    ):
        assert option in result.output


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", str(tmp_path_factory.mktemp("tiny") / "llama"))


def test_eval_on_a_local_file(tiny_dir, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    out = tmp_path / "ppl.json"
    result = run_cli(
        "eval",
        tiny_dir,
        "--ppl",
        str(text),
        "--seqlen",
        "32",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    entry = data["ppl"][str(text)]
    assert entry["seqlen"] == 32 and entry["windows"] >= 2
    assert 1.0 < entry["ppl"] < 1e6


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "no-such-model"], "unknown model"),
        (["eval", "TINY", "--ppl", "wikitext9"], "unknown dataset"),
        (["eval", "TINY", "--seqlen", "100000"], "exceeds the model's context"),
        (["prune", "--method", "nope", "--model", "TINY"], "unknown method"),
    ],
)
def test_errors_are_one_line(tiny_dir, args, message):
    args = [tiny_dir if a == "TINY" else a for a in args]
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
