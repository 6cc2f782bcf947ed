"""``prunekit demo``: the demo's real command runs end to end (on a tiny model) and says what a
full-size run changes. Its time on SmolLM2 is measured by ``bench/demo_time.py``."""

from __future__ import annotations

import json
import shlex

from prunekit.demo import EVAL_WINDOWS, demo_argv
from prunekit.models.tiny import save_tiny
from tests.unit.cli_helpers import run_main


def test_demo_prunes_evaluates_and_says_what_full_size_changes(
    tmp_path, monkeypatch, capsys, data_dir
):
    model = save_tiny("llama", str(tmp_path / "tiny"), max_position_embeddings=512)
    out = tmp_path / "demo"
    code, stdout, stderr = run_main(
        monkeypatch, capsys, ["--verbose", "demo", "--model", model, "--out", str(out)]
    )
    assert code in (0, None), stderr
    printed = stdout.replace("\n", "")
    assert shlex.join(["prunekit", *demo_argv(model, out)]) in printed
    assert "perplexity: dense" in stdout and "perplexity: pruned" in stdout
    assert "demo-sized run" in stdout and f"--model {model}" in printed
    assert "INFO prunekit" in stderr  # --verbose before `demo` reaches the inner prune
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["ratio_total"] >= 0.1
    assert report["settings"]["candidates"] == "layers"
    for side in ("dense", "pruned"):
        assert report["eval"][side]["ppl"]["wikitext2"]["windows"] == EVAL_WINDOWS
