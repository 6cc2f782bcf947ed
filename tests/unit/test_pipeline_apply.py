"""Methods decide, the pipeline executes (issue 25): a depth method returns its plan and leaves
the model alone; a width method hands its rewritten weights over and writes no file;
``pipeline.apply`` carries both out and writes the run's files."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
from safetensors.torch import load_file

from prunekit.methods.catalogue import get_method
from prunekit.models.loading import count_parameters, from_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.pipeline.apply import NOT_SAVED, run_method, run_stage
from prunekit.plan import PruningPlan
from prunekit.report.run_dir import PARTIAL_PLAN_FILE
from tests.unit.depth_helpers import one_thread  # noqa: F401
from tests.unit.settings_helpers import text_calibration


@pytest.fixture
def calib(tmp_path) -> dict:
    return text_calibration(tmp_path)


def _tiny():
    return from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")


def test_a_depth_method_decides_and_the_pipeline_carries_it_out(calib, tmp_path) -> None:
    loaded = _tiny()
    dense = count_parameters(loaded.model)
    method = get_method("sleb")  # a greedy search (checkpoints), on few candidates: fast
    decided = method.prune(loaded, method.make_settings(blocks=1, **calib))
    assert count_parameters(loaded.model) == dense  # the decision only
    assert len(decided.removed_blocks) == 2 and "kept_layers" not in decided.extra

    run = tmp_path / "run"
    plan = run_method(method, loaded, method.make_settings(blocks=1, run_dir=str(run), **calib))
    assert plan.removed_blocks == decided.removed_blocks
    assert count_parameters(loaded.model) < dense
    assert plan.extra["kept_layers"] == loaded.model.config.prunekit_depth["kept_layers"]
    assert plan.extra["num_layers_before"] == 4
    # The final plan where the search checkpointed, and its plots beside it.
    assert (
        PruningPlan.load(run / PARTIAL_PLAN_FILE).extra["kept_layers"] == plan.extra["kept_layers"]
    )
    assert {p.name for p in run.glob("*.png")} == {"calib_ppl.png", "layer_map.png"}


def test_a_width_method_hands_its_rewritten_weights_to_the_pipeline(calib, tmp_path) -> None:
    run = tmp_path / "run"
    settings = get_method("fasp").make_settings(
        sparsity=0.3, allocation="uniform", run_dir=str(run), **calib
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few tokens per restored column on a tiny run
        plan = get_method("fasp").prune(_tiny(), settings)
        assert not run.exists()  # the method wrote nothing
        handed = {name: tensor.clone() for name, tensor in plan.rewritten_weights.items()}
        assert handed and all(name.endswith((".weight", ".bias")) for name in handed)
        assert plan.extra["restored_weights"] == "restored.safetensors"
        assert "rewritten_weights" not in plan.to_dict()  # not plan data

        saved = run_stage(get_method("fasp"), _tiny(), settings)
        unsaved = run_stage(
            get_method("fasp"), _tiny(), dataclasses.replace(settings, run_dir=None)
        )
    on_disk = load_file(str(run / saved.extra["restored_weights"]))
    assert sorted(on_disk) == sorted(handed)
    assert all(on_disk[name].equal(handed[name]) for name in handed)  # same run, same ops
    assert saved.rewritten_weights == {} and "restored_weights_note" not in saved.extra
    assert unsaved.extra["restored_weights_note"] == NOT_SAVED
