"""Typed settings per method (issue 25, point 5): each method declares its settings class, takes
exactly its fields, validates types and ranges there, records them in its plan, and a combined
method routes each field to the stage whose class has it. The old ``options`` dict is gone."""

from __future__ import annotations

import dataclasses
import itertools
import json
import warnings

import pytest

import prunekit
from prunekit.errors import SettingsError
from prunekit.methods.catalogue import all_methods, get_method
from prunekit.methods.combined import stage_settings
from prunekit.methods.depth.blockpruner import BlockPrunerSettings, LayerSearchSettings
from prunekit.methods.settings import (
    FLAG_NAMES,
    ChunkedExecutionSettings,
    MethodSettings,
    setting_default,
)
from prunekit.methods.width.fasp import FaspSettings
from prunekit.models.loading import from_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.pipeline.streamed import chunked_within
from prunekit.plan import PruningPlan
from tests.unit.depth_helpers import one_thread  # noqa: F401
from tests.unit.settings_helpers import text_calibration

DEPTH = [m.name for m in all_methods() if m.family == "depth"]
WIDTH = [m.name for m in all_methods() if m.family == "width"]


@pytest.fixture
def calib(tmp_path) -> dict:
    return text_calibration(tmp_path)


def tiny():
    return from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")


# ---- what a method takes is its class ------------------------------------------------------------
@pytest.mark.parametrize("name", DEPTH + WIDTH + ["blockpruner+fasp", "fasp+sleb"])
def test_a_method_takes_the_flag_fields_of_its_settings_class(name):
    method = get_method(name)
    assert issubclass(method.settings_type, MethodSettings)
    flags = [f.name for f in dataclasses.fields(method.settings_type) if f.name in FLAG_NAMES]
    assert set(method.takes) == set(flags) and set(method.takes) <= set(method.accepts)
    assert "run_dir" in method.accepts and "run_dir" not in method.takes
    # The CLI's defaults (one per flag) are every method's defaults.
    defaults = method.settings_type()
    for flag_name in method.takes:
        assert getattr(defaults, flag_name) == setting_default(flag_name), flag_name


@pytest.mark.parametrize(
    ("method", "given", "message"),
    [
        ("fasp", {"criterion": "kl"}, "criterion is not a setting of fasp; methods that take it: "),
        ("sleb", {"naive": True}, "naive is not a setting of sleb; methods that take it: blockp"),
        ("rm", {"candidates": "attn"}, "candidates is not a setting of rm; methods that take it"),
        ("magnitude", {"batch_size": 2}, "batch_size is not a setting of magnitude"),
        ("magnitude", {"calib": "c4"}, "calib is not a setting of magnitude"),
        ("flap", {"multiple_of": 8}, "multiple_of is not a setting of flap"),
        ("wanda-sp", {"allocation_cost": "output"}, "methods that take it: fasp$"),
        ("fasp", {"state_bytes": 1}, "state_bytes is not a setting of fasp; methods that take"),
        ("fasp", {"depth_share": 0.3}, "depth_share is a setting of combined methods"),
        ("blockpruner", {"sparsity": 0.2}, "sparsity is not a setting of blockpruner"),
        ("fasp", {"bogus": 1}, "unknown setting 'bogus'; fasp takes: ratio, sparsity"),
    ],
)
def test_a_setting_the_method_does_not_have_is_refused_in_one_line(method, given, message):
    with pytest.raises(SettingsError, match=message) as refused:
        get_method(method).make_settings(given)
    assert "\n" not in str(refused.value)


def test_every_method_refuses_every_setting_it_does_not_have():
    every = set(itertools.chain.from_iterable(m.accepts for m in all_methods()))
    for method in all_methods():
        for name in sorted(every - set(method.accepts)):
            with pytest.raises(SettingsError, match=f"{name}.* of {method.name}"):
                method.check_settings([name], spell=str)


# ---- types and ranges live on the class ----------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "given", "message"),
    [
        ("fasp", {"ratio": "0.2"}, "--ratio must be a number or None, got '0.2'"),
        ("fasp", {"n_samples": 2.5}, "--n-samples must be an integer, got 2.5"),
        ("fasp", {"restore": "no"}, "^restore must be True or False, got 'no'"),
        ("fasp", {"targets": "mlp"}, "--targets must be a list of strings"),
        ("fasp", {"batch_size": True}, "--batch-size must be an integer or None, got True"),
        ("blockpruner", {"protect_layers": [0, "1"]}, "--protect-layers must be a list of int"),
        ("blockpruner", {"exhaustive": 1}, "--exhaustive must be True or False, got 1"),
        ("blockpruner", {"state_bytes": 1.5}, "^state_bytes must be an integer or None"),
        ("fasp", {"allocation_cost": 3}, "^allocation_cost must be a string"),
    ],
)
def test_types_are_checked_against_the_annotations(method, given, message):
    with pytest.raises(SettingsError, match=message):
        get_method(method).make_settings(given)


@pytest.mark.parametrize(
    ("method", "given", "message"),
    [
        ("fasp", {"ratio": 1.0}, r"--ratio must be in \(0, 1\), got 1.0"),
        ("fasp", {"sparsity": -0.1}, r"--sparsity must be in \[0, 1\)"),
        ("fasp", {"targets": ["qk"]}, "--targets must be a subset of mlp,attn"),
        ("fasp", {"damping": -1.0}, "--damping must be >= 0"),
        ("fasp", {"allocation": "global"}, "--allocation must be uniform or cost"),
        ("fasp", {"allocation_cost": "input"}, "allocation_cost must be one of residual, output"),
        ("wanda-sp", {"multiple_of": 0}, "--multiple-of must be at least 1"),
        ("flap", {"seqlen": 1}, "--seqlen must be at least 2 tokens"),
        ("sleb", {"blocks": 0}, "--blocks must be at least 1"),
        ("sleb", {"criterion": "cos"}, "--criterion must be one of ppl, ppl-per-param"),
        ("sleb", {"windows": "third"}, "windows must be one of first-half, second-half"),
        ("rm-block", {"candidates": "heads"}, "--candidates must be one of attn, mlp"),
        ("blockpruner", {"max_memory": 0}, "max_memory must be at least 1 byte"),
        ("blockpruner+fasp", {"depth_share": 1.0}, r"--depth-share must be in \(0, 1\)"),
        ("blockpruner+fasp", {"damping": -1.0}, "--damping must be >= 0"),
        ("blockpruner+fasp", {"criterion": "cos"}, "--criterion must be one of"),
    ],
)
def test_ranges_are_checked_by_the_group_that_declares_the_field(method, given, message):
    with pytest.raises(SettingsError, match=message):
        get_method(method).make_settings(given)


def test_prune_refuses_the_old_options_dict_in_one_line():
    # Refused before any model loads (the spec names no model on this machine).
    with pytest.raises(SettingsError, match="options= is gone: pass each entry as its own") as e:
        prunekit.prune("no-such-model", "blockpruner", blocks=1, options={"state_bytes": 1})
    assert "state_bytes=" in str(e.value) and "\n" not in str(e.value)


# ---- the plan records the settings ---------------------------------------------------------------
def test_a_width_plan_records_its_settings_and_they_rebuild_the_same_settings(calib):
    fasp = get_method("fasp")
    settings = fasp.make_settings(sparsity=0.3, batch_size=2, allocation_cost="output", **calib)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few tokens per restored column on a tiny model
        plan = fasp.prune(tiny(), settings)
    saved = PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict()))).settings
    assert saved == {**settings.record(), "allocation": "cost"}  # the default that ran
    assert saved["allocation_cost"] == "output" and saved["batch_size"] == 2
    assert "options" not in saved and "criterion" not in saved  # only FASP's own fields
    assert fasp.make_settings(saved).record() == saved  # the record rebuilds the settings


def test_engine_knobs_change_no_decision_and_are_not_recorded(calib):
    blockpruner = get_method("blockpruner")
    plain = blockpruner.prune(tiny(), blockpruner.make_settings(blocks=2, **calib))
    chunked = blockpruner.prune(
        tiny(), blockpruner.make_settings(blocks=2, state_bytes=1, batch_size=1, **calib)
    )
    assert chunked.removed_blocks == plain.removed_blocks
    assert chunked.settings == plain.settings  # search settings: what decides the result
    assert "state_bytes" not in chunked.settings and "max_memory" not in chunked.settings
    halved = blockpruner.make_settings(blocks=2, windows="first-half", **calib)
    half = blockpruner.prune(tiny(), halved)
    assert half.settings == {**plain.settings, "windows": "first-half"}  # it decides: recorded
    assert "state_bytes" not in BlockPrunerSettings(state_bytes=7).record()


def test_the_report_names_the_calibration_as_null_for_magnitude(calib, tmp_path):
    result = prunekit.prune(tiny(), "magnitude", sparsity=0.2, out=tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["settings"]["calib"] is None and report["settings"]["blocks"] is None
    assert report["settings"]["sparsity"] == 0.2 and result.plan.settings["multiple_of"] == 1


# ---- a combined method's class and its stages ----------------------------------------------------
@pytest.mark.parametrize(("depth", "width"), itertools.product(DEPTH, WIDTH))
def test_every_pair_combines_into_one_class_with_both_stages_fields(depth, width):
    for first, second in ((depth, width), (width, depth)):
        combined = get_method(f"{first}+{second}")
        names = set(combined.settings_type.names())
        assert names == {
            *get_method(depth).settings_type.names(),
            *get_method(width).settings_type.names(),
            "depth_share",
        }
        assert get_method(f"{first}+{second}").settings_type is combined.settings_type


def test_each_stage_gets_its_own_class_with_its_own_fields():
    combined = get_method("blockpruner+fasp").make_settings(
        ratio=0.3,
        criterion="ppl",
        multiple_of=4,
        allocation="uniform",
        calib="wikitext2",
        naive=True,
        state_bytes=64,
        allocation_cost="output",
        run_dir="RUN",
    )
    depth = stage_settings(get_method("blockpruner"), combined, ratio=0.15)
    width = stage_settings(get_method("fasp"), combined, sparsity=0.2)
    assert type(depth) is BlockPrunerSettings and type(width) is FaspSettings
    assert (depth.ratio, depth.criterion, depth.naive, depth.state_bytes) == (0.15, "ppl", True, 64)
    assert (width.ratio, width.sparsity, width.multiple_of) == (None, 0.2, 4)
    assert (width.allocation, width.allocation_cost) == ("uniform", "output")
    assert depth.calib == width.calib == "wikitext2" and depth.run_dir == width.run_dir == "RUN"
    assert not hasattr(width, "criterion") and not hasattr(depth, "multiple_of")
    # A layer-level stage gets no candidate set; a stage's bad value is refused there too.
    sleb = stage_settings(get_method("sleb"), combined, blocks=1)
    assert type(sleb) is LayerSearchSettings and not hasattr(sleb, "candidates")
    with pytest.raises(SettingsError, match="--damping must be >= 0"):
        stage_settings(get_method("fasp"), combined, damping=-1.0)


def test_a_combined_run_records_each_stage_with_its_own_settings(calib):
    result = prunekit.prune(
        tiny(), "sleb+magnitude", ratio=0.3, depth_share=0.6, multiple_of=2, **calib
    )
    depth, width = result.plan.extra["stages"]
    assert depth["settings"]["calib"] == calib["calib"] and "multiple_of" not in depth["settings"]
    assert width["settings"] == {"targets": ["mlp", "attn"], "multiple_of": 2}
    assert result.plan.settings["depth_share"] == 0.6 and "options" not in result.plan.settings


def test_the_streamed_budget_reaches_the_depth_runner_only_where_it_has_one():
    blockpruner, fasp = get_method("blockpruner"), get_method("fasp")
    assert chunked_within(blockpruner.make_settings(), 1000).max_memory == 1000
    kept = blockpruner.make_settings(max_memory=10)
    assert chunked_within(kept, 1000).max_memory == 10  # the caller's own value stays
    width = fasp.make_settings()
    assert chunked_within(width, 1000) is width and not isinstance(width, ChunkedExecutionSettings)
    combined = get_method("fasp+blockpruner").make_settings()
    assert chunked_within(combined, 1000).max_memory == 1000  # for its depth stage
