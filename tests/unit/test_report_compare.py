"""`prunekit report`: one comparison (markdown, CSV, PNG) from the report.json of several runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.report.compare import comparison_rows, write_comparison
from prunekit.report.markdown import render_report_md
from prunekit.report.schema import ReportError, build_report


def _zeroshot(acc: float, majority: float | None = None) -> dict:
    task = {
        "acc": acc,
        "acc_stderr": 0.05,
        "acc_norm": acc + 0.02,
        "acc_norm_stderr": 0.05,
        "samples": 50,
        "average_metric": "acc_norm",
    }
    if majority is not None:
        task.update(chance=0.5, majority=majority)
    return {
        "tasks": {"piqa": task},
        "average": acc + 0.02,
        "limit": 50,
        "num_fewshot": 0,
        "source": "local files: /data/tasks",
        "lm_eval_version": "0.4.13",
    }


def _ppl(value: float) -> dict:
    return {
        "wikitext2": {
            "ppl": value,
            "seqlen": 512,
            "windows": 10,
            "tokens": 5110,
            "max_windows": 10,
            "source": "test",
        }
    }


def _report(method: str, family: str, ratio: float, ppl: float) -> dict:
    before = 1_000_000
    return build_report(
        method=method,
        family=family,
        model={
            "spec": "tiny",
            "model_type": "llama",
            "num_hidden_layers": 4,
            "num_parameters": before,
        },
        settings={
            "calib": "c4",
            "n_samples": 8,
            "seqlen": 256,
            "seed": 0,
            "ratio": ratio,
            "blocks": None,
            "sparsity": None,
        },
        params={
            "before": before,
            "after": int(before * (1 - ratio)),
            "decoder_before": 800_000,
            "decoder_after": int(800_000 - before * ratio),
            "ratio_total": ratio,
            "ratio_decoder": before * ratio / 800_000,
        },
        evals={
            "dense": {"ppl": _ppl(20.0), "zeroshot": _zeroshot(0.70)},
            "pruned": {"ppl": _ppl(ppl), "zeroshot": _zeroshot(0.60)},
        },
        timings={"prune": 1.0},
        versions={"prunekit": "0.1.0", "torch": "2", "transformers": "5", "lm-eval": "0.4.13"},
    )


@pytest.fixture
def run_dirs(tmp_path) -> list[Path]:
    dirs = []
    for name, method, family, ratio, ppl in [
        ("bp20", "blockpruner", "depth", 0.2, 35.0),
        ("bp30", "blockpruner", "depth", 0.3, 60.0),
        ("fasp20", "fasp", "width", 0.2, 30.0),
    ]:
        d = tmp_path / name
        d.mkdir()
        (d / "report.json").write_text(json.dumps(_report(method, family, ratio, ppl)))
        dirs.append(d)
    return dirs


def test_rows_have_one_dense_line_then_runs(run_dirs):
    rows = comparison_rows(run_dirs)
    assert [r.label for r in rows] == ["dense", "bp20", "bp30", "fasp20"]
    assert rows[0].ratio_total == 0.0 and rows[0].ppl["wikitext2"] == 20.0
    assert rows[1].acc["piqa"] == pytest.approx(0.62)  # acc_norm, the task's average metric


def test_comparison_files(run_dirs, tmp_path):
    pytest.importorskip("matplotlib")
    written = write_comparison(run_dirs, tmp_path / "out")
    md = written["markdown"].read_text()
    assert "| fasp20 | fasp | 0.200 | 0.80 M | 30.00 | 62.0 | 62.0 |" in md
    assert "wikitext2 ppl (seqlen 512, first 10 windows)" in md and "first 50 items" in md
    assert "![wikitext2 perplexity vs ratio_total](ppl_vs_ratio.png)" in md
    rows = list(csv.DictReader(written["csv"].open()))
    assert [r["run"] for r in rows] == ["dense", "bp20", "bp30", "fasp20"]
    assert float(rows[2]["ppl_wikitext2"]) == 60.0
    assert written["plot"].stat().st_size > 10_000


def test_plot_is_skipped_without_matplotlib(run_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    written = write_comparison(run_dirs, tmp_path / "out")
    assert "plot" not in written and "matplotlib" in capsys.readouterr().err
    assert "ppl_vs_ratio.png" not in written["markdown"].read_text()


def test_a_broken_report_is_refused(run_dirs):
    (run_dirs[0] / "report.json").write_text(json.dumps({"method": "x"}))
    with pytest.raises(ReportError, match="does not follow the schema"):
        comparison_rows(run_dirs)


def test_run_markdown_shows_dense_and_pruned_zeroshot_and_plots():
    md = render_report_md(_report("fasp", "width", 0.2, 30.0), images=["layer_map.png"])
    assert "| piqa | acc_norm | 50 | 70.0 ± 5.0 | 72.0 ± 5.0 | 60.0 ± 5.0 | 62.0 ± 5.0 |" in md
    assert "first 50 items per task" in md
    assert "![layer_map](layer_map.png)" in md


def _with_majority(run_dir: Path, majority: float) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    for side, acc in (("dense", 0.70), ("pruned", 0.60)):
        report["eval"][side]["zeroshot"] = _zeroshot(acc, majority)
    (run_dir / "report.json").write_text(json.dumps(report))


def test_majority_baseline_row_when_runs_scored_the_same_items(run_dirs, tmp_path):
    for d in run_dirs:
        _with_majority(d, 0.55)
    md = write_comparison(run_dirs, tmp_path / "out")["markdown"].read_text()
    assert "| majority answer | baseline |  |  |  | 55.0 | 55.0 |" in md
    assert "most frequent gold answer" in md
    run_md = render_report_md(json.loads((run_dirs[0] / "report.json").read_text()))
    assert "| piqa | acc_norm | 50 | 55.0 | 70.0 ± 5.0 |" in run_md


def test_no_majority_row_without_baselines(run_dirs, tmp_path):
    md = write_comparison(run_dirs, tmp_path / "out")["markdown"].read_text()
    assert "majority answer" not in md


def test_cli_report(run_dirs, tmp_path):
    out = tmp_path / "cmp"
    result = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", "report", *map(str, run_dirs), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "comparison.md").is_file() and (out / "comparison.csv").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", "report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "no report.json" in bad.stderr
