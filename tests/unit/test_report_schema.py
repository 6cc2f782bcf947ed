"""report.json: every registered method writes the schema, and its run directory replays exactly."""

from __future__ import annotations

import copy
import json

import pytest

from prunekit import api
from prunekit.methods.catalogue import all_methods
from prunekit.models.loading import load_model
from prunekit.models.tiny import save_tiny
from prunekit.report.schema import ReportError, validate_report
from prunekit.runs import load_for_eval

EVAL = dict(eval_datasets=["wikitext2"], eval_seqlen=32, eval_max_windows=1)
CALIB = dict(ratio=0.1, calib="wikitext2", n_samples=2, seqlen=32)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> str:
    return save_tiny("llama", str(tmp_path_factory.mktemp("base") / "llama"))


def _load(spec: str):
    return load_model(spec, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def runs(base_dir, tmp_path_factory, data_dir):
    """One tiny run per registered method (shared by the tests below)."""
    root = tmp_path_factory.mktemp("runs")
    return {
        m.name: api.prune(_load(base_dir), m.name, out=root / m.name, **EVAL, **taken(m, CALIB))
        for m in all_methods()
    }


def taken(method, settings: dict) -> dict:
    """The settings ``method`` reads (a method refuses the others)."""
    return {k: v for k, v in settings.items() if k in method.takes}


@pytest.mark.parametrize("method", [m.name for m in all_methods()])
def test_report_of_every_method_validates(runs, method):
    result = runs[method]
    on_disk = json.loads((result.run_dir / "report.json").read_text())
    report = validate_report(on_disk)
    assert report.method == method
    assert set(report.eval) == {"dense", "pruned"}
    assert report.params.after < report.params.before
    assert report.params.ratio_total >= CALIB["ratio"]
    assert set(report.timings) >= {"prune", "eval_dense", "eval_pruned"}
    assert report.eval["pruned"].ppl["wikitext2"].seqlen == 32
    md = (result.run_dir / "report.md").read_text()
    assert "## Parameters" in md and "## Perplexity" in md


@pytest.mark.parametrize("method", [m.name for m in all_methods()])
def test_run_directory_replays_to_the_same_ppl(runs, method):
    result = runs[method]
    target = load_for_eval(str(result.run_dir), dtype="fp32", device="cpu")
    assert target.kind == "run"
    replayed = api.evaluate_ppl(target.loaded, ["wikitext2"], seqlen=32, max_windows=1)
    recorded = result.report["eval"]["pruned"]["ppl"]["wikitext2"]["ppl"]
    assert replayed["wikitext2"]["ppl"] == pytest.approx(recorded, rel=1e-5)


def test_run_directory_refuses_another_base_model(runs, tmp_path):
    from prunekit.errors import PlanError

    other = save_tiny("qwen2", str(tmp_path / "qwen2"))
    run_dir = next(iter(runs.values())).run_dir
    with pytest.raises(PlanError, match="the plan was made for another model"):
        load_for_eval(str(run_dir), base=other, dtype="fp32", device="cpu")


def test_validator_names_the_broken_fields(runs):
    report = copy.deepcopy(next(iter(runs.values())).report)
    del report["params"]["ratio_total"]
    report["eval"]["pruned"]["ppl"]["wikitext2"]["ppl"] = "low"
    with pytest.raises(ReportError) as info:
        validate_report(report)
    assert "params.ratio_total" in str(info.value)
    assert "eval.pruned.ppl.wikitext2.ppl" in str(info.value)
