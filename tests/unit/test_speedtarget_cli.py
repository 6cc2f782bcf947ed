"""``prune --target-speedup`` end to end on a tiny Llama: the latency table (hand-made, or
profiled on the fly), the search, the one combined plan, replay, export, report, refusals."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch

import prunekit
from prunekit.errors import SettingsError
from prunekit.evaluation.perplexity import windows_nll
from prunekit.export.load import load_pruned
from prunekit.latency.structure import structure_of
from prunekit.latency.table import LatencyTable, predict_latency
from prunekit.methods.catalogue import get_method
from prunekit.methods.combined import run_stages
from prunekit.methods.depth.calibration import held_out_settings_windows
from prunekit.methods.settings import CalibrationSettings
from prunekit.models.loading import from_model, load_model
from prunekit.models.tiny import TINY_VOCAB, save_tiny, tiny_model, tiny_tokenizer
from prunekit.pipeline.apply import run_stage
from prunekit.plan import PruningPlan
from prunekit.runs import load_for_eval
from prunekit.speedtarget.losses import depth_prefix_plan
from prunekit.speedtarget.prune import SPEED_METHOD, split_stages
from prunekit.speedtarget.search import Split, WidthRule, narrow, remove_blocks
from prunekit.surgery import apply_plan
from tests.unit.cli_helpers import invoke_quietly, run_main
from tests.unit.depth_helpers import one_thread  # noqa: F401

LAYERS = 6
TARGET = 1.4
IDS = torch.randint(0, TINY_VOCAB, (2, 16), generator=torch.Generator().manual_seed(7))
CALIB = {"n_samples": 2, "seqlen": 24, "seed": 0}


def us(value: float) -> float:
    return value * 1e-6


# A table written by hand for the tiny Llama (hidden 64, vocab 320, 4 heads / 2 KV heads of 16,
# MLP 96): each block a launch cost plus a cost per channel, so narrower is always cheaper.
HAND_TABLE = {
    "version": 1,
    "model": "tiny-llama",
    "device": "cpu",
    "dtype": "fp32",
    "batch": 1,
    "prompt_len": 32,
    "gen_len": 128,
    "hidden_size": 64,
    "vocab_size": TINY_VOCAB,
    "attn_heads": 4,
    "kv_heads": 2,
    "head_dim": 16,
    "v_head_dim": 16,
    "mlp_width": 96,
    "multiple_of": 1,
    "phases": {
        "decode": {
            "fixed_s": us(40.0),
            "layer_overhead_s": 0.0,
            "attn": {str(v): us(20.0 + 2.0 * v) for v in (1, 4, 8, 12, 16)},
            "mlp": {str(w): us(10.0 + w) for w in (1, 24, 48, 72, 96)},
            "mlp_unaligned": {},
        }
    },
    "machine": {},
    "settings": {},
}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, use_cache=False).logits


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny") / "llama"
    return save_tiny("llama", str(path), num_hidden_layers=LAYERS)


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(" ".join(tiny_tokenizer().decode(list(range(3, TINY_VOCAB))) for _ in range(3)))
    return str(path)


def calib_args(calib: str) -> list[str]:
    return ["--calib", calib, *(f"--{k.replace('_', '-')}={v}" for k, v in CALIB.items())]


@pytest.fixture(scope="module")
def hand_run(tiny_dir, calib, tmp_path_factory):
    """`prunekit prune --target-speedup 1.4 --latency-table hand.json --save` (prunekit format).

    Attention blocks only for the depth stage: on a random tiny model removing blocks barely
    hurts (MLPs least), so with every block a candidate the depth-only end always wins; with
    attention only, the loss along k has a valley inside (a few blocks, then width)."""
    root = tmp_path_factory.mktemp("speed")
    table = root / "hand.json"
    table.write_text(json.dumps(HAND_TABLE))
    out, save = root / "run", root / "model"
    args = ["prune", "--model", tiny_dir, "--target-speedup", str(TARGET)]
    args += ["--latency-table", str(table), "--out", str(out), "--save", str(save)]
    args += ["--save-format", "prunekit", "--device", "cpu", "--dtype", "float32"]
    args += ["--candidates", "attn"]
    output = invoke_quietly([*args, *calib_args(calib)])
    return {"out": out, "save": save, "table": LatencyTable.load(table), "output": output}


def replayed(tiny_dir: str, out):
    loaded = load_model(tiny_dir, device="cpu", dtype="float32")
    apply_plan(loaded, PruningPlan.load(out / "plan.json"), out)
    return loaded


def blocks_left(structure) -> list[tuple[int, int, int]]:
    """Per layer what the latency table prices: (KV heads, value width, MLP width), 0 if gone
    (the search's shapes keep a removed attention's head sizes; a pruned model's do not)."""
    return [
        (layer.kv_heads, layer.v_head_dim if layer.has_attn else 0, layer.mlp_width)
        for layer in structure.layers
    ]


def predicted_speedup_of(table: LatencyTable, dense, pruned, phase: str) -> float:
    return predict_latency(table, dense, phase) / predict_latency(table, pruned, phase)


def test_the_replayed_plan_reaches_the_target_with_the_chosen_split(hand_run, tiny_dir):
    out, table = hand_run["out"], hand_run["table"]
    report = json.loads((out / "report.json").read_text())
    record = report["speed_target"]
    plan = PruningPlan.load(out / "plan.json")
    assert plan.method == SPEED_METHOD == report["method"] and plan.version == 2
    chosen = record["chosen"]
    assert plan.extra["speed_target"]["k"] == chosen["k"]
    assert plan.extra["speed_target"]["sparsity"] == chosen["sparsity"]
    # The tiny model's losses make a mix win here: both stages are in the plan.
    assert chosen["k"] > 0 and chosen["sparsity"] > 0
    assert [s.method for s in plan.stage_plans()] == ["blockpruner", "fasp"]
    assert plan.stage_plans()[0].removed_blocks == chosen["removed_blocks"]
    # The pipeline saved the width stage's restored weights; the replayed depth prefix searched
    # nothing: no plots of it, no partial plan left.
    assert (out / "restored.safetensors").is_file() and not list(out.glob("*.png"))
    assert not (out / "plan.partial.json").exists()
    dense = structure_of(load_model(tiny_dir, device="cpu", dtype="float32"))
    pruned = structure_of(replayed(tiny_dir, out))
    speedup = predicted_speedup_of(table, dense, pruned, "decode")
    assert speedup >= TARGET
    assert speedup == pytest.approx(record["predicted_speedup"])
    priced = narrow(remove_blocks(dense, chosen["removed_blocks"]), chosen["sparsity"], WidthRule())
    assert blocks_left(pruned) == blocks_left(priced)


def test_the_replayed_model_is_the_one_the_search_measured(hand_run, tiny_dir, calib):
    """Its held-out calibration loss is the chosen split's recorded loss, and no pure plan beats
    it."""
    record = json.loads((hand_run["out"] / "report.json").read_text())["speed_target"]
    loaded = replayed(tiny_dir, hand_run["out"])
    settings = CalibrationSettings(calib=calib, **CALIB)
    nll, count = windows_nll(loaded, held_out_settings_windows(loaded, settings))
    assert nll / count == pytest.approx(record["chosen"]["calib_loss"], rel=1e-5)
    for pure in ("depth_only", "width_only"):
        assert record[pure] is not None
        assert record[pure]["predicted_speedup"] >= TARGET
        assert record["chosen"]["calib_loss"] <= record[pure]["calib_loss"]


def test_replay_eval_and_export_give_equal_logits(hand_run, tiny_dir):
    expected = logits(replayed(tiny_dir, hand_run["out"]).model)
    evaluated = load_for_eval(str(hand_run["out"]), device="cpu", dtype="float32")
    assert torch.equal(logits(evaluated.loaded.model), expected)
    reloaded = load_pruned(hand_run["save"], device="cpu")  # the --save of the run itself
    assert torch.allclose(logits(reloaded.model), expected, atol=1e-5, rtol=1e-4)


def test_report_and_output_show_the_split_beside_the_pure_plans(hand_run):
    out = hand_run["out"]
    record = json.loads((out / "report.json").read_text())["speed_target"]
    assert record["target"] == TARGET and record["phase"] == "decode"
    # Timed here against the dense model on the table's workload (interleaved medians).
    measured = record["measurement"]
    assert measured["workload"] == {"batch": 1, "prompt_len": 32, "gen_len": 128}
    assert measured["dense_s"] > 0 and measured["pruned_s"] > 0
    assert record["measured_speedup"] == measured["dense_s"] / measured["pruned_s"]
    assert f"measured:   {measured['speedup']:.3f}x" in hand_run["output"]
    assert record["latency_table"]["profiled"] is False
    assert record["latency_table"]["path"].endswith("hand.json")
    assert not (out / "latency.json").exists()
    markdown = (out / "report.md").read_text()
    assert f"- target: speed-up {TARGET:g}× decode;" in markdown
    assert "## Speed target" in markdown and "| chosen split |" in markdown
    assert "| depth only |" in markdown and "| width only |" in markdown
    output = hand_run["output"]
    chosen = record["chosen"]
    assert f"speed target {TARGET:g}x decode" in output
    assert f"chosen:     {chosen['k']} blocks + width sparsity {chosen['sparsity']:.4f}" in output
    for pure in ("depth_only", "width_only"):
        assert f"calib loss {record[pure]['calib_loss']:.4f}" in output


def test_a_split_builds_exactly_the_shape_it_was_priced_at(calib):
    """Both stages of a split: the depth prefix, then FASP at s on what it left."""
    loaded = from_model(tiny_model("llama", num_hidden_layers=LAYERS), tiny_tokenizer(), "t")
    dense = structure_of(loaded)
    settings = get_method(SPEED_METHOD).make_settings(calib=calib, **CALIB, multiple_of=4)
    depth_plan = prunekit.prune(
        from_model(tiny_model("llama", num_hidden_layers=LAYERS), tiny_tokenizer(), "t"),
        "blockpruner",
        blocks=3,
        calib=calib,
        **CALIB,
    ).plan
    blocks = tuple(depth_prefix_plan(depth_plan, 2).removed_blocks)
    split = Split(2, blocks, 0.3, 1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stages = split_stages(split, depth_plan, settings, None)
        run_stages(loaded, SPEED_METHOD, stages, {}, None, run_stage=run_stage)
    rule = WidthRule(multiple_of=4)
    priced = narrow(remove_blocks(dense, blocks), 0.3, rule)
    assert blocks_left(structure_of(loaded)) == blocks_left(priced)
    assert len(priced.layers) == LAYERS and priced.layers[1].v_head_dim < 16  # both stages

    # Every width too: the stage runs FASP's uniform allocation, whatever FASP's default.
    def widths(structure):
        return [
            (lay.mlp_width, lay.v_head_dim if lay.attn_heads else 0) for lay in structure.layers
        ]

    assert widths(structure_of(loaded)) == widths(priced)


def test_a_table_profiled_on_the_fly_is_saved_in_the_run(tiny_dir, calib, tmp_path):
    out = tmp_path / "run"
    args = ["prune", "--model", tiny_dir, "--target-speedup", "1.2", "--phase", "prefill"]
    args += ["--prompt-len", "16", "--out", str(out), "--device", "cpu", "--dtype", "float32"]
    output = invoke_quietly([*args, "--no-measure-speedup", *calib_args(calib)])
    assert "latency table: profiled now" in output and "measured:" not in output
    table = LatencyTable.load(out / "latency.json")
    assert list(table.phases) == ["prefill"]
    assert (table.batch, table.prompt_len, table.device, table.dtype) == (1, 16, "cpu", "fp32")
    record = json.loads((out / "report.json").read_text())["speed_target"]
    assert record["phase"] == "prefill" and record["latency_table"]["profiled"] is True
    assert record["measured_speedup"] is None and record["measurement"] is None
    dense = structure_of(load_model(tiny_dir, device="cpu", dtype="float32"))
    pruned = structure_of(replayed(tiny_dir, out))
    assert predicted_speedup_of(table, dense, pruned, "prefill") >= 1.2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ratio", "0.3"], "--target-speedup and --ratio together"),
        (["--blocks", "2"], "--target-speedup and --blocks together"),
        (["--sparsity", "0.2"], "--target-speedup and --sparsity together"),
        (["--depth-share", "0.5"], "--target-speedup and --depth-share together"),
        (["--method", "fasp"], "searches the split of blockpruner+fasp"),
        (["--allocation", "cost"], "--allocation cost is not searched"),
        (["--phase", "train"], "--phase must be one of prefill, decode"),
        (["--latency-table", "MISSING"], "is not a file"),
        (["--latency-table", "TABLE", "--prompt-len", "8"], "--prompt-len sets the workload"),
    ],
)
def test_refusals_are_one_line(monkeypatch, capsys, tiny_dir, tmp_path, extra, message):
    table = tmp_path / "t.json"
    table.write_text(json.dumps(HAND_TABLE))
    names = {"MISSING": str(tmp_path / "none.json"), "TABLE": str(table)}
    extra = [names.get(a, a) for a in extra]
    args = ["prune", "--model", tiny_dir, "--target-speedup", "1.5", "--out", str(tmp_path / "o")]
    code, _, err = run_main(monkeypatch, capsys, [*args, *extra])
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-speedup", "1.0"], "--target-speedup must be > 1"),
        (["--method", "fasp", "--sparsity", "0.2", "--phase", "decode"], "--phase applies to"),
        (["--ratio", "0.2"], "Missing option '--method'"),
    ],
)
def test_speed_options_alone_and_a_bad_target_are_refused(
    monkeypatch, capsys, tiny_dir, tmp_path, args, message
):
    code, _, err = run_main(monkeypatch, capsys, ["prune", "--model", tiny_dir, *args])
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err


def test_the_python_api_takes_the_same_request(tiny_dir, calib, tmp_path):
    with pytest.raises(SettingsError, match="--ratio together"):
        prunekit.prune(tiny_dir, target_speedup=1.5, ratio=0.2, calib=calib)
    with pytest.raises(SettingsError, match="name a pruning method"):
        prunekit.prune(tiny_dir, calib=calib)
    table = tmp_path / "hand.json"
    table.write_text(json.dumps(HAND_TABLE))  # decode only
    loaded = from_model(tiny_model("llama", num_hidden_layers=LAYERS), tiny_tokenizer(), "t")
    with pytest.raises(SettingsError, match="no 'prefill' phase"):
        prunekit.prune(loaded, target_speedup=1.5, phase="prefill", latency_table=table, **CALIB)


def test_a_cpu_table_timed_with_other_threads_is_flagged(caplog):
    from types import SimpleNamespace

    from prunekit.speedtarget.prune import warn_if_other_threads

    threads = torch.get_num_threads()
    cpu = SimpleNamespace(device=torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="prunekit"):
        warn_if_other_threads(SimpleNamespace(machine={"threads": threads + 1}), cpu)
    assert f"timed with {threads + 1} CPU threads, this run has {threads}" in caplog.text
    caplog.clear()
    # Negative controls: the same thread count, or a GPU run, say nothing.
    with caplog.at_level(logging.WARNING, logger="prunekit"):
        warn_if_other_threads(SimpleNamespace(machine={"threads": threads}), cpu)
        gpu = SimpleNamespace(device=torch.device("cuda"))
        warn_if_other_threads(SimpleNamespace(machine={"threads": threads + 1}), gpu)
    assert caplog.text == ""
