"""Evaluation of models bigger than memory: perplexity layer by layer from the shards equals the
in-memory perplexity; zero-shot on the model dispatched by accelerate equals the in-memory one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit.api import evaluate_streamed, open_streamed, prune_streamed
from prunekit.engine.chunking import chunk_memory
from prunekit.errors import SettingsError
from prunekit.evaluation.dispatched import load_dispatched
from prunekit.evaluation.perplexity import perplexity
from prunekit.evaluation.streamed import perplexity_streamed
from prunekit.export.load import load_pruned
from prunekit.models.lazy import LazyModel
from prunekit.models.loading import load_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("data_dir")

SEQLEN, WINDOWS, BATCH = 32, 6, 2
# Same windows, same kernels, same order of work per window: only a reduction order a kernel
# picks for another batch layout may differ.
REL = 1e-5


@pytest.fixture(scope="module")
def text(data_dir, tmp_path_factory) -> str:
    """The start of WikiText-2's test text: enough for the windows, quick to tokenize."""
    path = tmp_path_factory.mktemp("text") / "wiki.txt"
    path.write_text((data_dir / "corpora" / "wikitext2_test.txt").read_text()[:20_000])
    return str(path)


def save_sharded(family: str, directory: Path, **overrides) -> Path:
    tiny_model(family, **overrides).save_pretrained(directory, max_shard_size="50KB")
    tiny_tokenizer().save_pretrained(directory)
    return directory


def budget_for_windows(directory: Path, windows: int, dtype: str = "fp32") -> int:
    """A budget that holds exactly ``windows`` windows per chunk (and not one more)."""
    lazy = LazyModel(directory, dtype=dtype, device="cpu")
    memory = chunk_memory(lazy, SEQLEN, BATCH)
    return memory.fixed + windows * memory.per_window + memory.per_window // 2


def in_memory_ppl(directory: Path, text: str, dtype: str = "fp32"):
    loaded = load_model(str(directory), dtype=dtype, device="cpu")
    return perplexity(loaded, text, SEQLEN, WINDOWS, BATCH)


def test_streamed_perplexity_equals_in_memory(text, family, tmp_path):
    source = save_sharded(family, tmp_path / family)
    expected = in_memory_ppl(source, text)
    streamed = open_streamed(str(source), dtype="fp32", device="cpu")
    budget = budget_for_windows(source, BATCH)
    got = perplexity_streamed(streamed, text, SEQLEN, WINDOWS, BATCH, max_memory=budget)
    assert got.streamed == {
        "chunk_windows": BATCH,
        "chunks": WINDOWS // BATCH,
        "max_memory": budget,
    }
    assert (got.tokens, got.windows, got.nll_head) == (
        expected.tokens,
        expected.windows,
        expected.nll_head,
    )
    assert got.nll_sum == pytest.approx(expected.nll_sum, rel=REL)
    assert got.ppl == pytest.approx(expected.ppl, rel=REL)
    assert streamed.residency.lazy.onloaded_bytes() == 0  # every part released


def test_streamed_perplexity_equals_in_memory_in_bf16(text, tmp_path):
    """bf16 weights, fp32 head copy per chunk: still the in-memory numbers."""
    source = save_sharded("llama", tmp_path / "llama")
    expected = in_memory_ppl(source, text, "bf16")
    streamed = open_streamed(str(source), dtype="bf16", device="cpu")
    budget = budget_for_windows(source, BATCH, "bf16")
    got = perplexity_streamed(streamed, text, SEQLEN, WINDOWS, BATCH, max_memory=budget)
    assert got.streamed["chunks"] == WINDOWS // BATCH
    assert got.nll_sum == pytest.approx(expected.nll_sum, rel=REL)


def test_each_layer_is_read_once_per_chunk(text, tmp_path, monkeypatch):
    source = save_sharded("llama", tmp_path / "llama")
    streamed = open_streamed(str(source), dtype="fp32", device="cpu")
    lazy = streamed.residency.lazy
    reads: list = []
    onload = lazy.onload
    monkeypatch.setattr(lazy, "onload", lambda *parts: (reads.extend(parts), onload(*parts)))
    for windows_per_chunk, chunks in ((BATCH, 3), (WINDOWS, 1)):
        reads.clear()
        budget = budget_for_windows(source, windows_per_chunk)
        perplexity_streamed(streamed, text, SEQLEN, WINDOWS, BATCH, max_memory=budget)
        assert [reads.count(i) for i in range(lazy.num_layers)] == [chunks] * lazy.num_layers
        # Every part is read whole from the files: nothing stayed resident between chunks.
        assert lazy.onloaded_bytes() == 0


def test_no_budget_is_one_chunk_and_a_too_small_budget_is_refused(text, tmp_path):
    source = save_sharded("llama", tmp_path / "llama")
    streamed = open_streamed(str(source), dtype="fp32", device="cpu")
    whole = perplexity_streamed(streamed, text, SEQLEN, WINDOWS, BATCH)
    assert whole.streamed["chunks"] == 1
    too_small = budget_for_windows(source, 0)
    with pytest.raises(SettingsError, match="cannot hold one layer-major batch"):
        perplexity_streamed(streamed, text, SEQLEN, WINDOWS, BATCH, max_memory=too_small)


def test_cli_eval_stream_matches_in_memory_and_bad_budgets_are_one_line(
    text, tmp_path, monkeypatch, capsys
):
    source = save_sharded("qwen2", tmp_path / "qwen2")
    expected = in_memory_ppl(source, text)
    common = [str(source), "--ppl", text, "--seqlen", str(SEQLEN), "--max-windows", str(WINDOWS)]
    common += ["--ppl-batch-size", str(BATCH), "--dtype", "fp32", "--device", "cpu"]
    out = tmp_path / "eval.json"
    budget = budget_for_windows(source, BATCH)
    code = run_cli(monkeypatch, "eval", *common, "--max-memory", f"{budget}", "--json", str(out))
    assert code == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["mode"] == "streamed"
    ppl = record["ppl"][text]
    assert ppl["streamed"]["chunks"] == WINDOWS // BATCH
    assert ppl["nll_sum"] == pytest.approx(expected.nll_sum, rel=REL)
    for budget_text, message in (("lots", "is not a size"), ("1KB", "budget of")):
        capsys.readouterr()
        assert run_cli(monkeypatch, "eval", *common, "--max-memory", budget_text) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_stream_refuses_a_run_directory(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text("{}")
    assert run_cli(monkeypatch, "eval", str(run), "--stream") == 2
    assert "run directory" in capsys.readouterr().err
    # An export keeps plan.json beside its config and weights: it is a model, streamed as one
    # (this one has no weights, so it fails later, and not as a run directory).
    (run / "config.json").write_text("{}")
    assert run_cli(monkeypatch, "eval", str(run), "--stream") != 0
    assert "run directory" not in capsys.readouterr().err


def test_exports_stock_format_streams_and_prunekit_format_is_refused(text, tmp_path):
    source = save_sharded("llama", tmp_path / "dense")
    settings = dict(sparsity=0.3, n_samples=2, seqlen=32, calib=text, dtype="fp32")
    stock, shim = tmp_path / "stock", tmp_path / "shim"
    # Uniform MLP widths (FASP's cost allocation would make them per-layer: prunekit format).
    uniform = dict(targets=["mlp"], allocation="uniform")
    prune_streamed(str(source), "fasp", save=stock, device="cpu", **uniform, **settings)
    prune_streamed(str(source), "fasp", save=shim, device="cpu", **settings)
    expected = perplexity(load_pruned(stock, dtype="fp32", device="cpu"), text, 32, 4, 2)
    got = evaluate_streamed(
        str(stock),
        ppl=[text],
        seqlen=32,
        max_windows=4,
        ppl_batch_size=2,
        dtype="fp32",
        device="cpu",
    )["ppl"][text]
    assert got["nll_sum"] == pytest.approx(expected.nll_sum, rel=REL)
    with pytest.raises(SettingsError, match="prunekit-format export"):
        evaluate_streamed(
            str(shim), ppl=[text], seqlen=32, max_windows=4, dtype="fp32", device="cpu"
        )
    # Zero-shot needs no lazy loader: accelerate dispatches the prunekit format too.
    dispatched = load_dispatched(
        str(shim), max_memory=50_000, offload_folder=tmp_path / "off", dtype="fp32", device="cpu"
    )
    assert "disk" in set(dispatched.model.hf_device_map.values())
    eager = load_pruned(shim, dtype="fp32", device="cpu")
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(dispatched.model(ids).logits, eager.model(ids).logits)


def test_dispatched_zeroshot_equals_in_memory(tmp_path):
    """Weights beyond the budget on disk, onloaded by accelerate's hooks: the same accuracies."""
    pytest.importorskip("lm_eval")
    from prunekit.evaluation.zeroshot import zeroshot

    source = save_sharded("gemma3", tmp_path / "gemma3")
    dispatched = load_dispatched(
        str(source), max_memory=100_000, offload_folder=tmp_path / "off", dtype="fp32", device="cpu"
    )
    assert "disk" in set(dispatched.model.hf_device_map.values())  # the budget really offloads
    assert dispatched.model.device.type == "meta"  # what lm-eval would send its inputs to
    del dispatched
    limit = 16
    memory = zeroshot(load_model(str(source), dtype="fp32", device="cpu"), ["piqa"], limit=limit)
    got = evaluate_streamed(
        str(source), tasks=["piqa"], limit=limit, max_memory="100KB", dtype="fp32", device="cpu"
    )["zeroshot"]["tasks"]["piqa"]
    expected = memory.tasks["piqa"]
    assert (got["acc"], got["acc_norm"], got["samples"]) == (
        expected.acc,
        expected.acc_norm,
        expected.samples,
    )


def run_cli(monkeypatch, *args: str) -> int:
    """``prunekit ARGS`` in this process (its error handling included); the exit status."""
    from prunekit.cli import main

    monkeypatch.setattr(sys, "argv", ["prunekit", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


# Runs in a subprocess: ``python -c PROBE MODE MODEL_DIR TEXT BUDGET`` prints the RssAnon peak.
MEMORY_PROBE = """
import json, sys
import torch
from tests.unit.memory_probe import PeakSampler, rss_anon_bytes
from prunekit.api import open_streamed
from prunekit.data import corpus_tokens
from prunekit.evaluation.perplexity import perplexity
from prunekit.evaluation.streamed import perplexity_streamed
from prunekit.models.loading import load_model

mode, directory, text, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(1)
streamed = open_streamed(directory, dtype="bf16", device="cpu")
corpus_tokens(streamed.tokenizer, text)  # data set-up belongs to the baseline
baseline = rss_anon_bytes()
with PeakSampler() as sampler:
    if mode == "streamed":
        result = perplexity_streamed(streamed, text, 128, 8, 2, max_memory=budget)
    else:
        result = perplexity(load_model(directory, dtype="bf16", device="cpu"), text, 128, 8, 2)
print(json.dumps({"peak_above": sampler.peak - baseline, "ppl": result.ppl}))
"""


def test_streamed_perplexity_stays_within_the_budget(text, tmp_path):
    """A ≈109 MB (bf16) model evaluated under a 32 MB budget: the peak anonymous memory above
    the baseline stays under the budget; the in-memory evaluation of the same model exceeds it
    (the negative control: the measurement can fail)."""
    from tests.unit.test_lazy_model import _write_random_llama

    directory = tmp_path / "llama"
    _write_random_llama(directory)
    budget = 32 * 10**6
    env = os.environ | {
        "MALLOC_ARENA_MAX": "2",
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    runs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", MEMORY_PROBE, mode, str(directory), text, str(budget)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for mode in ("streamed", "in-memory")
    }
    results = {}
    for mode, process in runs.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
        results[mode] = json.loads(out.strip().splitlines()[-1])
    print({mode: f"{r['peak_above'] / 1e6:.1f} MB" for mode, r in results.items()})
    assert results["streamed"]["ppl"] == pytest.approx(results["in-memory"]["ppl"], rel=1e-3)
    assert results["streamed"]["peak_above"] <= budget
    assert results["in-memory"]["peak_above"] > budget


def test_streamed_prune_evaluates_dense_and_pruned_layer_by_layer(text, tmp_path):
    """prune(stream=True, eval_datasets=...): the dense model from its shards, the pruned one from
    the export, each equal to the in-memory perplexity of the same model."""
    from prunekit.api import prune

    source = save_sharded("llama", tmp_path / "dense")
    save, run = tmp_path / "pruned", tmp_path / "run"
    result = prune(
        str(source),
        "fasp",
        stream=True,
        save=save,
        out=run,
        eval_datasets=[text],
        eval_seqlen=SEQLEN,
        eval_max_windows=4,
        targets=["mlp"],  # uniform MLP widths: a stock-format (hf) export
        allocation="uniform",
        sparsity=0.3,
        n_samples=2,
        seqlen=32,
        calib=text,
        dtype="fp32",
        device="cpu",
    )
    assert result.saved.format == "hf"
    dense = perplexity(load_model(str(source), dtype="fp32", device="cpu"), text, SEQLEN, 4)
    pruned = perplexity(load_pruned(save, dtype="fp32", device="cpu"), text, SEQLEN, 4)
    got = result.report["eval"]
    assert got["dense"]["ppl"][text]["nll_sum"] == pytest.approx(dense.nll_sum, rel=REL)
    assert got["pruned"]["ppl"][text]["nll_sum"] == pytest.approx(pruned.nll_sum, rel=REL)
    assert pruned.nll_sum != pytest.approx(dense.nll_sum, rel=1e-3)  # the pruning changed it
    for written in (run / "report.json", save / "report.json"):
        assert json.loads(written.read_text())["eval"] == got


def test_streamed_prune_refuses_the_perplexity_of_a_prunekit_format_export(text, tmp_path):
    """Per-layer widths (prunekit format) cannot be evaluated layer by layer yet: one line, once
    the export and the run directory (with the dense numbers) are written."""
    from prunekit.api import prune

    source = save_sharded("llama", tmp_path / "dense")
    save, run = tmp_path / "pruned", tmp_path / "run"
    settings = dict(sparsity=0.3, n_samples=2, seqlen=32, calib=text, dtype="fp32", device="cpu")
    with pytest.raises(SettingsError, match="prunekit format") as refusal:
        prune(
            str(source),
            "fasp",
            stream=True,
            save=save,
            out=run,
            eval_datasets=[text],
            eval_seqlen=SEQLEN,
            eval_max_windows=2,
            **settings,
        )
    assert "\n" not in str(refusal.value)
    assert load_pruned(save, dtype="fp32", device="cpu").model is not None
    assert set(json.loads((run / "report.json").read_text())["eval"]) == {"dense"}


def test_cli_stream_ppl_prints_dense_and_pruned(text, tmp_path, monkeypatch, capsys):
    source = save_sharded("llama", tmp_path / "dense")
    args = ["prune", "--method", "fasp", "--model", str(source), "--sparsity", "0.3"]
    args += ["--targets", "mlp", "--allocation", "uniform", "--n-samples", "2", "--seqlen", "32"]
    args += ["--calib", text]
    args += ["--device", "cpu", "--dtype", "fp32", "--stream", "--save", str(tmp_path / "p")]
    args += ["--ppl", text, "--ppl-seqlen", "32", "--ppl-max-windows", "2"]
    assert run_cli(monkeypatch, *args, "--save-format", "prunekit") == 2
    assert "stock-format export only" in capsys.readouterr().err
    assert run_cli(monkeypatch, *args) == 0
    out = capsys.readouterr().out
    assert "perplexity: dense" in out and "perplexity: pruned" in out
    assert "model saved:" in out
