"""``--target-speedup`` streamed, and without copies of the model: on a tiny Llama the streamed
run (weights in their shards, one layer at a time) chooses the split the in-memory run chooses,
with the same losses and the same plan, and its export reloads to the same model."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import prunekit
from prunekit.export.load import load_pruned
from prunekit.latency.table import LatencyTable
from prunekit.methods.catalogue import get_method
from prunekit.models.loading import from_model
from prunekit.models.tiny import TINY_VOCAB, save_tiny, tiny_model, tiny_tokenizer
from prunekit.plan import PruningPlan
from prunekit.speedtarget.losses import shared_skeleton
from prunekit.speedtarget.prune import NOT_MEASURED_STREAMED, SPEED_METHOD, build_split
from prunekit.speedtarget.search import Split
from tests.unit.cli_helpers import invoke_quietly
from tests.unit.depth_helpers import one_thread  # noqa: F401
from tests.unit.test_speedtarget_cli import CALIB, HAND_TABLE, IDS, LAYERS, TARGET

# What the two runs may record differently: how the layers were run and how long it took.
RUN_ONLY = ("seconds", "run_dir", "search", "restored_weights", "restored_weights_note")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("speed-stream")
    calib = root / "calib.txt"
    text = tiny_tokenizer().decode(list(range(3, TINY_VOCAB)))
    calib.write_text(" ".join(text for _ in range(3)))
    table = root / "hand.json"
    table.write_text(json.dumps(HAND_TABLE))
    model = save_tiny("llama", str(root / "llama"), num_hidden_layers=LAYERS)
    return {"root": root, "calib": str(calib), "table": str(table), "model": model}


def calib_args(calib: str) -> list[str]:
    return ["--calib", calib, *(f"--{k.replace('_', '-')}={v}" for k, v in CALIB.items())]


@pytest.fixture(scope="module")
def runs(inputs) -> dict:
    """The same request in memory (Python API) and streamed (the CLI's --stream), both saved
    in the prunekit format (FASP's value channels narrow the heads)."""
    root = inputs["root"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memory = prunekit.prune(
            inputs["model"],
            target_speedup=TARGET,
            latency_table=inputs["table"],
            measure_speedup=False,
            candidates="attn",
            calib=inputs["calib"],
            device="cpu",
            dtype="float32",
            out=root / "memory",
            save=root / "memory-model",
            **CALIB,
        )
    args = ["prune", "--model", inputs["model"], "--target-speedup", str(TARGET), "--stream"]
    args += ["--latency-table", inputs["table"], "--candidates", "attn"]
    args += ["--out", str(root / "streamed"), "--save", str(root / "streamed-model")]
    args += ["--device", "cpu", "--dtype", "float32"]
    output = invoke_quietly([*args, *calib_args(inputs["calib"])])
    return {"memory": memory, "streamed": root / "streamed", "output": output, "root": root}


def without_run_details(value):
    """A plan or record without what depends on the residency and the clock."""
    if isinstance(value, dict):
        return {k: without_run_details(v) for k, v in value.items() if k not in RUN_ONLY}
    if isinstance(value, list):
        return [without_run_details(v) for v in value]
    return value


def test_streamed_chooses_the_split_and_plan_of_the_in_memory_run(runs):
    memory = runs["memory"]
    streamed_plan = PruningPlan.load(runs["streamed"] / "plan.json")
    record = json.loads((runs["streamed"] / "report.json").read_text())["speed_target"]
    expected = memory.report["speed_target"]
    # The same splits priced, the same losses measured (bit for bit), the same choice.
    for key in ("chosen", "depth_only", "width_only", "candidates", "loss_evaluations", "width"):
        assert record[key] == expected[key], key
    assert record["chosen"]["k"] > 0 and record["chosen"]["sparsity"] > 0  # a real mix
    assert [s.method for s in streamed_plan.stage_plans()] == ["blockpruner", "fasp"]
    mine, theirs = streamed_plan.to_dict(), memory.plan.to_dict()
    assert without_run_details(mine["stages"]) == without_run_details(theirs["stages"])
    assert mine["extra"]["speed_target"] == theirs["extra"]["speed_target"]
    # Streamed, the depth search and the width stage ran layer by layer.
    assert streamed_plan.stage_plans()[0].extra["search"]["engine"]["streamed"] is True


def test_the_streamed_export_reloads_to_the_in_memory_model(runs):
    root = runs["root"]
    expected = load_pruned(root / "memory-model", device="cpu")
    streamed = load_pruned(root / "streamed-model", device="cpu")
    with torch.no_grad():
        want = expected.model(IDS, use_cache=False).logits
        got = streamed.model(IDS, use_cache=False).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in streamed.model.parameters()) == sum(
        p.numel() for p in expected.model.parameters()
    )


def test_a_streamed_run_says_it_timed_nothing(runs):
    record = json.loads((runs["streamed"] / "report.json").read_text())["speed_target"]
    assert record["measurement"] is None and record["measured_speedup"] is None
    assert record["measurement_note"] == NOT_MEASURED_STREAMED
    # Rich wraps long lines: compare the words.
    words = " ".join(runs["output"].split())
    assert f"measured: {NOT_MEASURED_STREAMED}" in words
    report = json.loads((runs["streamed"] / "report.json").read_text())
    assert report["memory"]["mode"] == "streamed"


def test_a_streamed_run_profiles_its_table_from_one_layer(inputs, tmp_path):
    """No table given: the probes are built from the shards' embeddings, head and one layer;
    the whole model is never timed, so the table is not anchored on it (and says why)."""
    out = tmp_path / "run"
    args = ["prune", "--model", inputs["model"], "--target-speedup", "1.2", "--stream"]
    args += ["--phase", "prefill", "--prompt-len", "16", "--out", str(out)]
    args += ["--save", str(tmp_path / "model"), "--device", "cpu", "--dtype", "float32"]
    output = invoke_quietly([*args, *calib_args(inputs["calib"])])
    assert "latency table: profiled now" in output
    table = LatencyTable.load(out / "latency.json")
    assert list(table.phases) == ["prefill"] and table.prompt_len == 16
    anchor = table.phases["prefill"].anchor
    assert anchor["applied"] is False and "streamed" in anchor["reason"]
    assert table.phases["prefill"].fixed_s > 0 and table.mlp_width == 96
    record = json.loads((out / "report.json").read_text())["speed_target"]
    assert record["latency_table"]["profiled"] is True and record["predicted_speedup"] >= 1.2
    assert load_pruned(tmp_path / "model", device="cpu").model(IDS).logits.isfinite().all()


def test_a_split_is_scored_on_a_skeleton_that_shares_the_dense_weights(inputs):
    """In memory no split copies the model: the candidate shares every parameter, and building
    a split on it (depth surgery, then FASP) leaves the dense model's tensors as they were."""
    loaded = from_model(tiny_model("llama", num_hidden_layers=LAYERS), tiny_tokenizer(), "t")
    skeleton = shared_skeleton(loaded)
    dense = dict(loaded.model.named_parameters())
    shared = dict(skeleton.model.named_parameters())
    assert all(shared[name] is p for name, p in dense.items())
    before = {name: p.detach().clone() for name, p in dense.items()}
    depth_plan = prunekit.prune(
        from_model(tiny_model("llama", num_hidden_layers=LAYERS), tiny_tokenizer(), "t"),
        "blockpruner",
        blocks=2,
        calib=inputs["calib"],
        **CALIB,
    ).plan
    split = Split(2, tuple(depth_plan.removed_blocks), 0.3, 1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_split(get_method(SPEED_METHOD).make_settings(calib=inputs["calib"], **CALIB))(
            skeleton, split, depth_plan
        )
    assert len(list(skeleton.model.parameters())) < len(dense)  # the blocks are gone there
    assert dict(loaded.model.named_parameters()).keys() == dense.keys()
    assert all(torch.equal(p, before[name]) for name, p in loaded.model.named_parameters())
