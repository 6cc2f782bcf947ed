"""``prunekit.load``, the one loading entry point: every kind of spec (model, export, run) in
every residency (memory, streamed, dispatched) gives what its own loader gives; the old public
loaders are deprecated aliases of it. ``prune(stream=None)`` and ``evaluate(stream=None)``
decide in memory or streamed from the budget, as the CLI does."""

from __future__ import annotations

import pytest
import torch

import prunekit
from prunekit import api
from prunekit.engine.residency import is_streamed
from prunekit.errors import PlanError, SettingsError
from prunekit.evaluation.perplexity import perplexity
from prunekit.export.load import load_pruned
from prunekit.loader import load, spec_kind
from prunekit.memory import MemoryBudget
from prunekit.memory.choice import predicted_need
from prunekit.methods.catalogue import get_method
from prunekit.models.loading import load_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.pipeline.mode import choose_mode
from prunekit.replay import load_run

pytestmark = pytest.mark.usefixtures("data_dir")

CPU = {"dtype": "fp32", "device": "cpu"}
IDS = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
# A Llama of ~29 MB (fp32): big enough that one layer at a time needs less than all of it.
WIDE = dict(
    num_hidden_layers=16,
    hidden_size=256,
    intermediate_size=512,
    num_attention_heads=4,
    num_key_value_heads=2,
)
SHORTGPT = dict(blocks=2, n_samples=2, seqlen=32)


@pytest.fixture(scope="module")
def text(data_dir, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("text") / "wiki.txt"
    path.write_text((data_dir / "corpora" / "wikitext2_test.txt").read_text()[:20_000])
    return str(path)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dense") / "llama"
    tiny_model("llama").save_pretrained(directory, max_shard_size="50KB")
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pruned(dense, text, tmp_path_factory):
    """A run directory and the export of the same run (FASP, uniform MLP widths: stock format)."""
    root = tmp_path_factory.mktemp("pruned")
    result = prunekit.prune(
        str(dense),
        "fasp",
        out=root / "run",
        save=root / "export",
        sparsity=0.3,
        targets=["mlp"],
        allocation="uniform",
        n_samples=2,
        seqlen=32,
        calib=text,
        **CPU,
    )
    return {"run": root / "run", "export": root / "export", "logits": logits(result.loaded)}


def logits(loaded) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(IDS).logits


def test_every_kind_in_memory_is_what_its_loader_gives(dense, pruned):
    model = load(str(dense), **CPU)
    assert (model.origin, model.origin_path) == ("model", None)
    torch.testing.assert_close(logits(model), logits(load_model(str(dense), **CPU)))

    export = load(pruned["export"], **CPU)
    assert (export.origin, export.origin_path) == ("export", str(pruned["export"]))
    torch.testing.assert_close(logits(export), logits(load_pruned(pruned["export"], **CPU)))

    run = load(pruned["run"], **CPU)
    assert (run.origin, run.origin_path) == ("run", str(pruned["run"]))
    torch.testing.assert_close(logits(run), logits(load_run(pruned["run"], **CPU)))
    # The run replayed and the export are the model the prune made.
    torch.testing.assert_close(logits(run), pruned["logits"])
    torch.testing.assert_close(logits(export), pruned["logits"])
    assert [spec_kind(p) for p in (dense, pruned["export"], pruned["run"])] == [
        "model",
        "export",
        "run",
    ]


def test_streamed_and_dispatched(dense, pruned, text, tmp_path):
    expected = perplexity(load(str(dense), **CPU), text, 32, 3, 1).nll_sum
    for spec in (str(dense), pruned["export"]):
        streamed = load(spec, residency="streamed", **CPU)
        assert is_streamed(streamed)
        assert {p.device.type for p in streamed.model.parameters()} == {"meta"}
    streamed = load(str(dense), residency="streamed", **CPU)
    got = api.evaluate_ppl(streamed, [text], seqlen=32, max_windows=3)[text]["nll_sum"]
    assert got == pytest.approx(expected, rel=1e-5)

    dispatched = load(
        str(dense),
        residency="dispatched",
        max_memory="50KB",
        offload_folder=tmp_path / "off",
        **CPU,
    )
    assert "disk" in set(dispatched.model.hf_device_map.values())
    torch.testing.assert_close(logits(dispatched), logits(load(str(dense), **CPU)))


def test_requests_load_cannot_honour_are_refused_in_one_line(dense, pruned, tmp_path):
    with pytest.raises(SettingsError, match="residency must be one of memory, streamed"):
        load(str(dense), residency="gpu")
    with pytest.raises(SettingsError, match="is a run directory"):
        load(pruned["run"], residency="streamed")
    with pytest.raises(SettingsError, match="apply to residency='dispatched' only"):
        load(str(dense), max_memory="1GB")
    with pytest.raises(SettingsError, match="needs offload_folder"):
        load(str(dense), residency="dispatched")
    with pytest.raises(PlanError, match="only applies to a run directory"):
        load(str(dense), base="smollm2-135m")
    with pytest.raises(SettingsError, match="is a run directory"):
        prunekit.prune(str(pruned["run"]), "shortgpt", blocks=1, n_samples=2, seqlen=32)


def test_old_loaders_are_deprecated_aliases(dense, pruned):
    from prunekit.export.load import load_for_inference
    from prunekit.runs import load_for_eval

    with pytest.warns(DeprecationWarning, match="prunekit.load"):
        streamed = api.open_streamed(str(dense), **CPU)
    assert is_streamed(streamed)
    with pytest.warns(DeprecationWarning, match="prunekit.load"):
        target = load_for_eval(str(pruned["run"]), **CPU)
    assert (target.kind, target.path) == ("run", str(pruned["run"]))
    assert target.describe()["kind"] == "run"
    torch.testing.assert_close(logits(target.loaded), pruned["logits"])
    with pytest.warns(DeprecationWarning, match="prunekit.load"):
        exported = load_for_inference(str(pruned["export"]), device="cpu")
    torch.testing.assert_close(logits(exported), pruned["logits"])


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """The wide Llama's directory and a budget below its in-memory need, above its streamed one."""
    directory = tmp_path_factory.mktemp("wide") / "llama"
    tiny_model("llama", **WIDE).save_pretrained(directory, max_shard_size="1MB")
    tiny_tokenizer().save_pretrained(directory)
    options = get_method("shortgpt").make_settings(SHORTGPT)
    in_memory = choose_mode(
        str(directory), get_method("shortgpt"), options, MemoryBudget(), stream=False, **CPU
    )
    return directory, int(predicted_need(in_memory.plan)["host"] * 0.7)


def test_prune_stream_none_streams_under_a_small_budget(wide, text, tmp_path):
    directory, budget = wide
    result = prunekit.prune(
        str(directory),
        "shortgpt",
        save=tmp_path / "pruned",
        budget=MemoryBudget(device=budget),
        calib=text,
        **SHORTGPT,
        **CPU,
    )
    assert result.report["memory"]["mode"] == "streamed"
    assert result.report["memory"]["budget"] == {"device": budget, "host": None}
    assert {p.device.type for p in result.model.parameters()} == {"meta"}
    assert result.plan.removed_blocks
    # Streaming is decided from the budget, so it is refused in one line without a save.
    with pytest.raises(SettingsError, match="streaming layer by layer needs save"):
        prunekit.prune(
            str(directory),
            "shortgpt",
            budget=MemoryBudget(device=budget),
            calib=text,
            **SHORTGPT,
            **CPU,
        )


def test_prune_stream_none_stays_in_memory_without_a_budget_or_when_loaded(wide, text):
    directory, budget = wide
    result = prunekit.prune(str(directory), "shortgpt", calib=text, **SHORTGPT, **CPU)
    assert result.report["memory"]["mode"] == "in-memory"
    assert {p.device.type for p in result.model.parameters()} == {"cpu"}
    # A model already in memory runs in memory: a budget it does not fit is refused as an
    # in-memory run (not streamed, which would need its files).
    loaded = load(str(directory), **CPU)
    with pytest.raises(SettingsError, match="in memory on the host"):
        prunekit.prune(
            loaded, "shortgpt", budget=MemoryBudget(device=budget), calib=text, **SHORTGPT
        )


def test_evaluate_stream_none_streams_a_spec_with_a_budget(dense, text, monkeypatch):
    calls = []
    real = api.evaluate_from_files

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "evaluate_from_files", spy)
    settings = dict(ppl=[text], seqlen=32, max_windows=3, **CPU)
    in_memory = api.evaluate(str(dense), **settings)["ppl"][text]
    assert calls == []
    streamed = api.evaluate(str(dense), max_memory="1GB", **settings)["ppl"][text]
    assert calls == [str(dense)]
    assert streamed["nll_sum"] == pytest.approx(in_memory["nll_sum"], rel=1e-5)
    # A loaded model is evaluated as it is (layer by layer when loaded streamed).
    loaded = load(str(dense), residency="streamed", **CPU)
    again = api.evaluate(loaded, ppl=[text], seqlen=32, max_windows=3, max_memory="1GB")
    assert calls == [str(dense)]
    assert again["ppl"][text]["nll_sum"] == pytest.approx(in_memory["nll_sum"], rel=1e-5)
