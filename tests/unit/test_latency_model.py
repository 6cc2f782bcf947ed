"""The latency model: table bookkeeping, structure_of on every family, profile's shape, CLI.

No test here depends on a timing value: the bookkeeping uses tables of known numbers, and the
profile test checks what the table holds, not how fast anything ran.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from prunekit.errors import SettingsError
from prunekit.export.load import load_pruned
from prunekit.export.save import export_model
from prunekit.latency.command import check_lengths, default_output
from prunekit.latency.profile import (
    ProbeSpec,
    ProfileSettings,
    aligned_widths,
    build_probe,
    profile_model,
    unaligned_widths,
    value_widths,
)
from prunekit.latency.structure import LayerStructure, ModelStructure, structure_of
from prunekit.latency.table import (
    LatencyModelError,
    LatencyTable,
    PhaseTable,
    interpolate,
    predict_latency,
    predicted_speedup,
)
from prunekit.models.adapters import BlockRef
from prunekit.models.attention import has_variable_heads
from prunekit.models.loading import from_model
from prunekit.models.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer
from prunekit.surgery.depth import remove_blocks
from prunekit.surgery.width import slice_mlp, slice_value_channels
from tests.unit.cli_helpers import run_main

# ---- bookkeeping on a table of known numbers ---------------------------------------------------

FULL = LayerStructure(attn_heads=4, kv_heads=2, head_dim=16, v_head_dim=16, mlp_width=128)


def known_table() -> LatencyTable:
    phase = PhaseTable(
        fixed_s=10.0,
        attn={8: 2.0, 16: 3.0},
        mlp={64: 4.0, 128: 6.0},
        mlp_unaligned={40: 5.0, 100: 8.0},
        layer_overhead_s=-0.5,
    )
    return LatencyTable(
        model="known",
        device="cpu",
        dtype="fp32",
        batch=1,
        prompt_len=8,
        gen_len=2,
        hidden_size=64,
        vocab_size=320,
        attn_heads=4,
        kv_heads=2,
        head_dim=16,
        v_head_dim=16,
        mlp_width=128,
        multiple_of=64,
        phases={"prefill": phase, "decode": PhaseTable(1.0, {16: 0.1}, {128: 0.2}, {}, 0.0)},
    )


def structure(*layers: LayerStructure) -> ModelStructure:
    return ModelStructure(tuple(layers), hidden_size=64, vocab_size=320)


def test_predicted_latency_is_fixed_plus_every_entry():
    table = known_table()
    dense = structure(FULL, FULL, FULL)
    assert predict_latency(table, dense, "prefill") == pytest.approx(10 + 3 * (3 + 6 - 0.5))
    narrowed = structure(FULL.__class__(4, 2, 16, 8, 64), FULL)
    assert predict_latency(table, narrowed, "prefill") == pytest.approx(10 + (2 + 4 - 0.5) + 8.5)
    assert predict_latency(table, dense, "decode") == pytest.approx(1 + 3 * 0.3)


def test_removing_a_block_subtracts_exactly_its_entry_and_the_overhead():
    table = known_table()
    dense = structure(FULL, FULL, FULL)
    full = predict_latency(table, dense, "prefill")
    no_mlp = dense.with_layer(1, mlp_width=0)
    assert full - predict_latency(table, no_mlp, "prefill") == pytest.approx(6 - 0.5)
    no_attn = dense.with_layer(2, attn_heads=0, kv_heads=0)
    assert full - predict_latency(table, no_attn, "prefill") == pytest.approx(3 - 0.5)
    both = no_mlp.with_layer(1, attn_heads=0, kv_heads=0)
    assert predict_latency(table, both, "prefill") == pytest.approx(10 + 2 * 8.5)
    assert predicted_speedup(table, dense, both, "prefill") == pytest.approx(35.5 / 27)


def test_unaligned_widths_are_priced_on_their_own_curve():
    table = known_table()
    phase = table.phases["prefill"]
    aligned = structure(FULL.__class__(4, 2, 16, 16, 64))
    unaligned = structure(FULL.__class__(4, 2, 16, 16, 70))
    base = 10 + 3 - 0.5
    assert predict_latency(table, aligned, "prefill") == pytest.approx(base + 4.0)
    # 70 lies on the unaligned segment 40 -> 100 (5 s -> 8 s), not the aligned one.
    assert predict_latency(table, unaligned, "prefill") == pytest.approx(base + 6.5)
    assert phase.mlp_unaligned == {40: 5.0, 100: 8.0}


def test_an_unaligned_width_near_full_is_priced_toward_the_full_width():
    """Above the unaligned curve's last point (100) the price runs to the full width's entry
    (128: 6 s), not along the 40 -> 100 segment: one channel less than full costs about what
    full costs (the search once bought a predicted 1.5x prefill with a 1-channel FASP stage)."""
    table = known_table()
    base = predict_latency(table, structure(FULL), "prefill") - 6.0  # all but the MLP block
    mlp_at = {
        width: predict_latency(table, structure(FULL.__class__(4, 2, 16, 16, width)), "prefill")
        - base
        for width in (100, 114, 127)
    }
    assert mlp_at[100] == pytest.approx(8.0)
    assert mlp_at[114] == pytest.approx(7.0)  # halfway from 100 (8 s) to 128 (6 s)
    assert mlp_at[127] == pytest.approx(8.0 - 2.0 * 27 / 28)
    # The extrapolated segment 40 -> 100 would have said 5 + 87 / 20 = 9.35 s at 127.
    assert mlp_at[127] != pytest.approx(9.35)


def test_interpolation_is_exact_at_grid_points_and_monotone_between():
    points = {64: 1.0, 128: 2.0, 256: 5.0}
    for width, seconds in points.items():
        assert interpolate(points, width) == seconds
    assert interpolate(points, 96) == pytest.approx(1.5)
    assert interpolate(points, 192) == pytest.approx(3.5)
    values = [interpolate(points, w) for w in range(64, 257)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert interpolate(points, 32) == pytest.approx(0.5)  # the first segment, extended
    assert interpolate({8: 3.0}, 4) == 3.0


def test_a_structure_the_table_cannot_price_is_a_clear_error():
    table = known_table()
    with pytest.raises(LatencyModelError, match="heads"):
        predict_latency(table, structure(LayerStructure(2, 1, 16, 16, 128)), "prefill")
    with pytest.raises(LatencyModelError, match="hidden"):
        predict_latency(table, ModelStructure((FULL,), 32, 320), "prefill")
    del table.phases["decode"]
    with pytest.raises(LatencyModelError, match="decode"):
        predict_latency(table, structure(FULL), "decode")


def test_json_round_trip(tmp_path):
    table = known_table()
    table.machine = {"torch": torch.__version__, "cpu": "x"}
    path = table.save(tmp_path / "t.json")
    loaded = LatencyTable.load(path)
    assert loaded == table
    assert loaded.torch_version == torch.__version__
    dense = structure(FULL, FULL)
    assert predict_latency(loaded, dense, "prefill") == predict_latency(table, dense, "prefill")
    (tmp_path / "bad.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(LatencyModelError):
        LatencyTable.load(tmp_path / "bad.json")


# ---- the grid ---------------------------------------------------------------------------------


def test_width_grid_respects_the_multiple_and_ends_at_the_full_width():
    assert aligned_widths(1536, 64, 8) == [192, 384, 576, 768, 960, 1152, 1344, 1536]
    unaligned = unaligned_widths(1536, 64, 8)
    assert len(unaligned) == 7 and all(w % 64 for w in unaligned)
    assert aligned_widths(96, 64, 8) == [64, 96]
    assert value_widths(64, 8) == [8, 16, 24, 32, 40, 48, 56, 64]


# ---- structure_of -----------------------------------------------------------------------------


def tiny(family: str):
    return from_model(tiny_model(family), tiny_tokenizer(), spec=f"tiny-{family}")


def dense_layer(family: str) -> LayerStructure:
    heads, kv = (4, 4) if family == "opt" else (4, 2)
    return LayerStructure(heads, kv, 16, 16, 96)


def narrow(loaded, widths: dict[int, tuple[int, int]]) -> None:
    """Layer -> (mlp width, value head size), cut with the width surgery."""
    adapter, model = loaded.adapter, loaded.model
    for index, (mlp, value) in widths.items():
        layer = adapter.layers(model)[index]
        slice_mlp(adapter.mlp_channels(layer), list(range(mlp)))
        channels = adapter.attention_channels(layer, model.config)
        kept = [list(range(value))] * channels.num_kv_heads
        slice_value_channels(channels, kept, adapter)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_structure_of_dense_depth_and_width_pruned(family):
    loaded = tiny(family)
    full = dense_layer(family)
    assert structure_of(loaded) == ModelStructure((full,) * 4, 64, 320)
    remove_blocks(loaded, [BlockRef(0, "mlp"), BlockRef(2, "attn"), BlockRef(3, "attn")])
    remove_blocks(loaded, [BlockRef(3, "mlp")])  # layer 3 gone entirely
    narrow(loaded, {1: (40, 9)})
    no_attn = LayerStructure(0, 0, 0, 0, 96)
    no_mlp = LayerStructure(full.attn_heads, full.kv_heads, 16, 16, 0)
    narrowed = LayerStructure(full.attn_heads, full.kv_heads, 16, 9, 40)
    assert structure_of(loaded).layers == (no_mlp, narrowed, no_attn)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_structure_of_a_reloaded_per_layer_export(family, tmp_path):
    loaded = tiny(family)
    remove_blocks(loaded, [BlockRef(2, "mlp")])
    narrow(loaded, {0: (40, 12), 1: (64, 16)})
    expected = structure_of(loaded)
    result = export_model(loaded, tmp_path / "out")
    assert result.format == "prunekit"
    assert structure_of(load_pruned(tmp_path / "out")) == expected


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_structure_of_a_reloaded_uniform_width_export(family, tmp_path):
    loaded = tiny(family)
    for layer in loaded.adapter.layers(loaded.model):
        slice_mlp(loaded.adapter.mlp_channels(layer), list(range(48)))
    export_model(loaded, tmp_path / "out")
    reloaded = structure_of(load_pruned(tmp_path / "out"))
    assert [layer.mlp_width for layer in reloaded.layers] == [48] * 4


# ---- profile ----------------------------------------------------------------------------------

QUICK = ProfileSettings(
    prompt_len=8, gen_len=2, multiple_of=16, grid_steps=4, layers_per_probe=2, runs=1, warmup=0
)


def test_probes_are_the_model_cut_by_its_own_surgery():
    loaded = tiny("llama")
    attn = build_probe(loaded, ProbeSpec("attn", v_head_dim=8), copies=2)
    layers = loaded.adapter.layers(attn.model)
    assert structure_of(attn).layers == (LayerStructure(4, 2, 16, 8, 0),) * 2
    assert all(has_variable_heads(layer.self_attn) for layer in layers)
    mlp = build_probe(loaded, ProbeSpec("mlp", mlp_width=40), copies=3)
    assert structure_of(mlp).layers == (LayerStructure(0, 0, 0, 0, 40),) * 3
    fixed = build_probe(loaded, ProbeSpec("none"), copies=3)
    assert structure_of(fixed).layers == ()
    # The embedding is shared, not copied; each layer copy has its own weights.
    assert fixed.model.get_input_embeddings().weight is loaded.model.get_input_embeddings().weight
    pointers = {layer.mlp.up_proj.weight.data_ptr() for layer in loaded.adapter.layers(mlp.model)}
    assert len(pointers) == 3
    assert structure_of(loaded).layers == (dense_layer("llama"),) * 4  # the model is untouched


def test_profile_fills_every_entry_of_the_grid():
    loaded = tiny("llama")
    seen: list[tuple[str, int, int]] = []
    table = profile_model(loaded, QUICK, progress=lambda *a: seen.append(a))
    assert set(table.phases) == {"prefill", "decode"}
    for phase in table.phases.values():
        assert sorted(phase.attn) == value_widths(16, 4) == [4, 8, 12, 16]
        assert sorted(phase.mlp) == aligned_widths(96, 16, 4) == [32, 48, 64, 96]
        assert sorted(phase.mlp_unaligned) == unaligned_widths(96, 16, 4) == [24, 39, 72]
        values = [phase.fixed_s, phase.layer_overhead_s, *phase.attn.values(), *phase.mlp.values()]
        assert all(math.isfinite(v) for v in values) and phase.fixed_s > 0
    assert (table.mlp_width, table.v_head_dim, table.attn_heads, table.kv_heads) == (96, 16, 4, 2)
    assert (table.batch, table.prompt_len, table.gen_len, table.dtype) == (1, 8, 2, "fp32")
    assert table.machine["torch"] == torch.__version__
    # One call per timed run: 13 probes and the model itself, in 2 phases.
    assert seen[-1][1:] == (len(seen), 2 * 14)
    dense = structure_of(loaded)
    for name, phase in table.phases.items():
        anchor = phase.anchor
        if anchor["applied"]:  # the model's own prediction is its measured time
            assert predict_latency(table, dense, name) == pytest.approx(anchor["model_measured_s"])
        else:  # too noisy to scale: the raw entries are kept
            assert not 1 / 1.5 <= anchor["factor"] <= 1.5
    pruned = dense.with_layer(0, mlp_width=0)
    assert math.isfinite(predict_latency(table, pruned, "decode"))


def test_anchoring_scales_every_per_layer_entry_by_one_factor():
    from prunekit.latency.profile import anchor_on_model

    table = known_table()
    dense = structure(FULL, FULL)  # raw prediction 10 + 2 * 8.5 = 27
    anchored = anchor_on_model(table, dense, "prefill", measured_s=10 + 17 * 1.2)
    assert anchored.anchor["applied"] and anchored.anchor["factor"] == pytest.approx(1.2)
    assert anchored.fixed_s == 10.0
    assert anchored.attn == {8: pytest.approx(2.4), 16: pytest.approx(3.6)}
    assert anchored.mlp_unaligned[40] == pytest.approx(6.0)
    assert anchored.layer_overhead_s == pytest.approx(-0.6)
    implausible = anchor_on_model(table, dense, "prefill", measured_s=10 + 17 * 3)
    assert not implausible.anchor["applied"] and implausible.attn == table.phases["prefill"].attn


def test_the_grid_is_relative_to_the_widest_layer():
    from prunekit.latency.profile import source_layer_index

    loaded = tiny("llama")
    narrow(loaded, {0: (40, 9)})
    remove_blocks(loaded, [BlockRef(1, "mlp")])
    assert source_layer_index(loaded) == 2
    widest = build_probe(loaded, ProbeSpec("both"), copies=1)
    assert structure_of(widest).layers == (dense_layer("llama"),)


def test_profile_settings_are_checked():
    with pytest.raises(SettingsError, match="prompt-len"):
        ProfileSettings(prompt_len=0).validate()
    with pytest.raises(SettingsError, match="phases"):
        ProfileSettings(phases=("prefill", "train")).validate()
    with pytest.raises(SettingsError, match="positions"):
        check_lengths(ProfileSettings(prompt_len=250, gen_len=10), 256)
    check_lengths(ProfileSettings(prompt_len=250, gen_len=10, phases=("prefill",)), 256)


# ---- CLI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from prunekit.models.tiny import save_tiny

    return save_tiny("llama", str(tmp_path_factory.mktemp("tiny") / "llama"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "bogus"], "not a device"),
        (["--prompt-len", "0"], "--prompt-len"),
        (["--prompt-len", "250", "--gen-len", "10"], "exceeds the model's 256 positions"),
        (["--phases", "prefill,train"], "phases must be among"),
    ],
)
def test_cli_errors_are_one_line(args, message, tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, ["profile", tiny_dir, *args])
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error:") and message in err
    assert not list(tmp_path.glob("latency-*.json"))


def test_cli_writes_the_table_and_prints_its_entries(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["profile", tiny_dir, "--device", "cpu", "--dtype", "fp32", "--prompt-len", "8"]
    args += ["--gen-len", "2", "--runs", "1", "--layers-per-probe", "1", "--multiple-of", "16"]
    code, out, _ = run_main(monkeypatch, capsys, args)
    assert code == 0
    table = LatencyTable.load(tmp_path / "latency-llama.json")
    assert (table.prompt_len, table.gen_len, table.multiple_of) == (8, 2, 16)
    assert sorted(table.phases["decode"].mlp) == aligned_widths(96, 16, 8)
    assert "mlp unaligned" in out and "latency table saved" in out


def test_a_run_directory_profiles_its_base_model_and_keeps_the_table_beside_it(tmp_path):
    from prunekit.latency.command import profiled_spec
    from prunekit.plan import PruningPlan

    run = tmp_path / "run"
    run.mkdir()
    PruningPlan("sleb", {"spec": "some/base"}, removed_blocks=["1.attn"]).save(run / "plan.json")
    assert profiled_spec(str(run)) == ("some/base", run)
    assert profiled_spec("some/base") == ("some/base", None)


def test_default_output_beside_a_run_or_named_after_the_model(tmp_path):
    assert default_output("HuggingFaceTB/SmolLM2-135M", None).name == "latency-SmolLM2-135M.json"
    assert default_output("smollm2-135m", tmp_path) == tmp_path / "latency.json"


def test_a_probe_timed_below_the_fixed_part_gives_a_zero_entry_not_a_negative_one(caplog):
    # Timing noise on a busy machine can time a probe below the probe with no layer; a negative
    # entry would price a pruned model slower than one that keeps the block.
    from prunekit.latency.profile import ProbeSpec, phase_table

    specs = [
        ProbeSpec("attn", v_head_dim=16),
        ProbeSpec("attn", v_head_dim=8),
        ProbeSpec("mlp", mlp_width=64),
        ProbeSpec("mlp", mlp_width=32),
    ]
    medians = {
        "decode/fixed": 1.0,
        "decode/layer": 1.8,
        "decode/attn v16": 1.4,
        "decode/attn v8": 0.9,  # below the fixed part: noise
        "decode/mlp 64": 1.3,
        "decode/mlp 32": 1.1,
    }
    with caplog.at_level("WARNING"):
        table = phase_table(specs, medians, "decode", copies=2)
    assert table.attn == {16: pytest.approx(0.2), 8: 0.0}
    assert table.mlp == {64: pytest.approx(0.15), 32: pytest.approx(0.05)}
    assert "attn v8" in caplog.text
