"""`prunekit prune --save-gguf` and `prunekit export --format gguf` on a tiny saved model."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.models.tiny import TINY_VOCAB, save_tiny, tiny_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", str(tmp_path_factory.mktemp("tiny") / "llama"))


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(" ".join(tiny_tokenizer().decode(list(range(3, TINY_VOCAB))) for _ in range(3)))
    return str(path)


def tensors(path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


@pytest.fixture(scope="module")
def pruned(tiny_dir, calib, tmp_path_factory):
    """A SLEB run (one layer removed) saved with --save-gguf: (directory, CLI output)."""
    tmp_path = tmp_path_factory.mktemp("pruned")
    args = ["prune", "--method", "sleb", "--model", tiny_dir, "--blocks", "1", "--calib", calib]
    args += ["--n-samples", "2", "--seqlen", "32", "--out", str(tmp_path / "run")]
    saved = tmp_path / "pruned.gguf"
    result = runner.invoke(app, [*args, "--save-gguf", str(saved), "--gguf-type", "f32"])
    assert result.exit_code == 0, result.output
    return tmp_path, result.output


def test_prune_save_gguf_then_export_the_run_gives_the_same_file(pruned, tmp_path):
    run_root, output = pruned
    saved = run_root / "pruned.gguf"
    assert "llama architecture" in " ".join(output.split())
    report = json.loads((run_root / "pruned.report.json").read_text())
    assert report["export"]["arch"] == "llama" and len(report["export"]["layers"]) == 3
    assert report["method"] == "sleb"  # the run's report travels with the file
    card = (run_root / "README.md").read_text()  # the model card a GGUF repository shows
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "gguf" and "sleb" in front["tags"]

    exported = tmp_path / "exported.gguf"
    args = ["export", str(run_root / "run"), "--format", "gguf", "--out", str(exported)]
    result = runner.invoke(app, [*args, "--gguf-type", "f32"])
    assert result.exit_code == 0, result.output
    a, b = tensors(saved), tensors(exported)
    assert a.keys() == b.keys() and len(a) == 1 + 3 * 9 + 2  # embedding, 3 layers, norm, head
    assert all(np.array_equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize(
    ("out", "gguf_type", "message"),
    [
        ("m.gguf", "q4", "unknown --gguf-type 'q4'"),
        ("m.bin", "f16", "must end in .gguf"),
    ],
)
def test_export_gguf_refuses_before_loading(pruned, tmp_path, out, gguf_type, message):
    run = str(pruned[0] / "run")
    args = ["export", run, "--format", "gguf", "--out", str(tmp_path / out)]
    result = runner.invoke(app, [*args, "--gguf-type", gguf_type])
    assert result.exit_code != 0
    assert message in str(result.exception)
    assert list(tmp_path.iterdir()) == []


def test_save_gguf_refuses_stream(tiny_dir, tmp_path):
    args = ["prune", "--method", "fasp", "--model", tiny_dir, "--sparsity", "0.2", "--stream"]
    args += ["--save", str(tmp_path / "m"), "--save-gguf", str(tmp_path / "m.gguf")]
    result = runner.invoke(app, args)
    assert "--save-gguf does not stream" in str(result.exception)
