"""The lazily loaded model: parts onloaded from sharded safetensors equal the eager model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit import load_model
from prunekit.engine.layerwise import capture_layer_context, embed, run_layer
from prunekit.errors import ModelNotFoundError, PrunekitError
from prunekit.models import loading
from prunekit.models.lazy import EMBEDDINGS, HEAD, REST, LazyModel
from prunekit.models.tiny import TINY_VOCAB, tiny_model, tiny_tokenizer

DTYPES = [torch.float32, torch.bfloat16]
PROBE = Path(__file__).with_name("memory_probe.py")


def save_sharded(directory: Path, family: str, **overrides) -> Path:
    """A tiny model saved in many small shards (so parts really come from several files)."""
    tiny_model(family, **overrides).save_pretrained(directory, max_shard_size="50KB")
    tiny_tokenizer().save_pretrained(directory)
    assert len(list(directory.glob("*.safetensors"))) > 4
    return directory


@pytest.fixture
def sharded(tmp_path, family) -> Path:
    return save_sharded(tmp_path / family, family)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under every name (tied ones twice)."""
    return dict(model.named_parameters(remove_duplicate=False)) | dict(
        model.named_buffers(remove_duplicate=False)
    )


def assert_part_equals_eager(lazy: LazyModel, part, eager: torch.nn.Module) -> None:
    expected, got = state(eager), state(lazy.model)
    names = lazy.tensor_names(part)
    assert names
    for name in names:
        assert got[name].device.type == "cpu", name
        assert got[name].dtype == expected[name].dtype, name
        assert torch.equal(got[name], expected[name]), name


def meta_parameters(lazy: LazyModel) -> set[str]:
    return {n for n, p in lazy.model.named_parameters(remove_duplicate=False) if p.is_meta}


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_every_part_equals_the_eager_model_and_goes_back_to_meta(sharded, dtype):
    eager = load_model(str(sharded), dtype=dtype, device="cpu").model
    lazy = LazyModel(sharded, dtype=dtype, device="cpu")
    all_parameters = {n for n, _ in lazy.model.named_parameters(remove_duplicate=False)}
    assert meta_parameters(lazy) == all_parameters  # nothing read yet
    covered: set[str] = set()
    for part in lazy.parts:
        with lazy.onloaded(part):
            assert_part_equals_eager(lazy, part, eager)
            onloaded = all_parameters - meta_parameters(lazy)
            assert onloaded == {n for n in lazy.tensor_names(part) if n in all_parameters}
        covered |= set(lazy.tensor_names(part))
        assert meta_parameters(lazy) == all_parameters, f"part {part} not released"
        assert lazy.onloaded_bytes() == 0
    assert covered == set(state(eager))  # the parts cover the whole model


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_layers_run_one_at_a_time_give_the_eager_logits(sharded, family, dtype):
    eager = load_model(str(sharded), dtype=dtype, device="cpu")
    lazy = LazyModel(sharded, dtype=dtype, device="cpu")
    ids = torch.randint(3, TINY_VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = eager.model(input_ids=ids).logits
        # Masks and rotary tables come from the lazy model itself (its recomputed inv_freq).
        with lazy.onloaded(EMBEDDINGS, REST):
            context = capture_layer_context(lazy.model, lazy.adapter, ids)
            hidden = embed(lazy.model, lazy.adapter, ids)
        for index in range(lazy.num_layers):
            with lazy.onloaded(index) as layer:
                hidden = run_layer(layer, hidden, context.kwargs[index])
        with lazy.onloaded(REST, HEAD):
            final = lazy.adapter.final_hidden(lazy.model, hidden)
            logits = lazy.adapter.head_logits(lazy.model, final)
    assert lazy.onloaded_bytes() == 0
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_tied_head_is_the_embedding_read_once(tmp_path, family):
    directory = save_sharded(tmp_path / "tied", family, tie_word_embeddings=True)
    keys = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    assert "lm_head.weight" not in keys  # the checkpoint holds the tied tensor once
    eager = load_model(str(directory), dtype="fp32", device="cpu").model
    lazy = LazyModel(directory, dtype="fp32", device="cpu")
    embedding, head = lazy.module(EMBEDDINGS), lazy.module(HEAD)
    weight_bytes = TINY_VOCAB * lazy.config.hidden_size * 4
    assert lazy.part_bytes(EMBEDDINGS, HEAD) == lazy.part_bytes(EMBEDDINGS)  # counted once

    with lazy.onloaded(HEAD):
        assert head.weight is embedding.weight and not head.weight.is_meta
        assert torch.equal(head.weight, eager.get_output_embeddings().weight)
        assert lazy.onloaded_bytes() == lazy.part_bytes(HEAD) >= weight_bytes
        with lazy.onloaded(EMBEDDINGS):
            assert lazy.onloaded_bytes() == lazy.part_bytes(EMBEDDINGS)  # still one tensor
        # Releasing the embeddings keeps the tensor the head still uses.
        assert not head.weight.is_meta and head.weight is embedding.weight
    assert head.weight.is_meta and head.weight is embedding.weight


def test_untied_head_is_its_own_tensor(tmp_path):
    directory = save_sharded(tmp_path / "untied", "llama")
    lazy = LazyModel(directory, dtype="fp32", device="cpu")
    with lazy.onloaded(HEAD) as head:
        assert not head.weight.is_meta and lazy.module(EMBEDDINGS).weight.is_meta
    assert lazy.part_bytes(EMBEDDINGS, HEAD) == 2 * lazy.part_bytes(HEAD)


def test_release_after_an_exception_and_nesting(tmp_path):
    lazy = LazyModel(save_sharded(tmp_path / "m", "qwen2"), dtype="fp32", device="cpu")
    layer = lazy.module(1)
    with pytest.raises(RuntimeError, match="boom"), lazy.onloaded(1):
        assert not layer.self_attn.q_proj.weight.is_meta
        raise RuntimeError("boom")
    assert layer.self_attn.q_proj.weight.is_meta and lazy.onloaded_bytes() == 0
    with lazy.onloaded(1):
        with lazy.onloaded(1):
            pass
        assert not layer.self_attn.q_proj.weight.is_meta  # the outer block still holds it
    assert layer.self_attn.q_proj.weight.is_meta
    with pytest.raises(ValueError, match="not onloaded"):
        lazy.release(1)
    with pytest.raises(ValueError, match="unknown part 7"):
        lazy.onload(7)


def test_a_failed_read_installs_nothing(tmp_path):
    directory = save_sharded(tmp_path / "m", "llama")
    lazy = LazyModel(directory, dtype="fp32", device="cpu")
    keys = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    (directory / keys["model.layers.2.mlp.down_proj.weight"]).unlink()
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error for a missing file
        lazy.onload(2)
    assert lazy.onloaded_bytes() == 0 and not lazy.is_onloaded(2)
    assert all(p.is_meta for p in lazy.module(2).parameters())


def test_two_lazy_models_do_not_interfere(tmp_path):
    first = LazyModel(save_sharded(tmp_path / "a", "llama"), dtype="fp32", device="cpu")
    second = LazyModel(save_sharded(tmp_path / "b", "llama", seed=1), dtype="bf16", device="cpu")
    with first.onloaded(0) as a, second.onloaded(0) as b:
        assert a.mlp.up_proj.weight.dtype == torch.float32
        assert b.mlp.up_proj.weight.dtype == torch.bfloat16
        assert not torch.equal(a.mlp.up_proj.weight.to(torch.bfloat16), b.mlp.up_proj.weight)
        assert first.onloaded_bytes() == first.part_bytes(0)
        assert second.onloaded_bytes() == second.part_bytes(0)


@pytest.mark.parametrize("name", ["lm_head.weight", "model.embed_tokens.weight"])
def test_big_tensors_read_in_row_slices(tmp_path, name):
    directory = save_sharded(tmp_path / "m", "llama")
    eager = load_model(str(directory), dtype="bf16", device="cpu").model
    lazy = LazyModel(directory, dtype="bf16", device="cpu")
    full = state(eager)[name]
    torch.testing.assert_close(lazy.read_rows(name, 5, 9), full[5:9], rtol=0, atol=0)
    slices = list(lazy.row_slices(name, 100))
    assert [start for start, _ in slices] == [0, 100, 200, 300]
    assert all(rows.dtype == torch.bfloat16 and rows.shape[0] <= 100 for _, rows in slices)
    assert torch.equal(torch.cat([rows for _, rows in slices]), full)
    assert lazy.onloaded_bytes() == 0  # slices are the caller's, nothing installed


def test_single_file_checkpoint(tmp_path):
    directory = tmp_path / "single"
    tiny_model("opt").save_pretrained(directory)
    assert (directory / "model.safetensors").is_file()
    eager = load_model(str(directory), dtype="fp32", device="cpu").model
    lazy = LazyModel(directory, dtype="fp32", device="cpu")
    with lazy.onloaded(3):
        assert_part_equals_eager(lazy, 3, eager)


def test_checkpoint_errors_are_clear(tmp_path):
    directory = tmp_path / "bin"
    tiny_model("llama").save_pretrained(directory)
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(PrunekitError, match="only PyTorch .bin weights"):
        LazyModel(directory)
    other = tmp_path / "wide"
    tiny_model("llama").save_pretrained(other)
    config = json.loads((other / "config.json").read_text())
    config["intermediate_size"] = 128
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(PrunekitError, match="the config expects"):
        LazyModel(other)
    with pytest.raises(ModelNotFoundError, match="model directory not found"):
        LazyModel.open(str(tmp_path / "missing" / "dir"))


def test_gguf_alias_opens_the_dequantized_cache(tmp_path, monkeypatch):
    # A fake GGUF whose dequantized cache already exists: the alias and the file both reach it.
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "pkg" / "Fake.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\x00" * 64)
    cache = loading.gguf_cache_path(gguf)
    save_sharded(cache, "llama", tie_word_embeddings=True)
    monkeypatch.setattr(loading, "smollm2_gguf_path", lambda: gguf)
    eager = load_model(str(cache), dtype="fp32", device="cpu").model
    for spec in ("smollm2-135m", str(gguf)):
        lazy = LazyModel.open(spec, dtype="fp32", device="cpu")
        assert lazy.directory == cache and lazy.spec == spec
        with lazy.onloaded(0):
            assert_part_equals_eager(lazy, 0, eager)


def test_hub_id_opens_the_cached_snapshot(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-qwen"
    snapshot = save_sharded(repo / "snapshots" / commit, "qwen2")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    lazy = LazyModel.open("acme/tiny-qwen", dtype="fp32", device="cpu")
    assert lazy.directory.resolve() == snapshot.resolve()
    assert lazy.adapter.family == "qwen2"
    with pytest.raises(ModelNotFoundError, match="cannot fetch model 'acme/absent'"):
        LazyModel.open("acme/absent")


def _write_random_llama(directory: Path) -> int:
    """≈218 MB in fp32 (16 layers of 12.6 MB, untied 4096-row embeddings), 16 MB shards."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=16,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory, max_shard_size="16MB")
    tiny_tokenizer().save_pretrained(directory)  # load_model wants one; its vocab is unused
    return sum(p.numel() for p in model.parameters())


def test_peak_anonymous_memory_is_a_few_layers_not_the_model(tmp_path):
    """Onload/release every part of a ≈218 MB model in bf16: the peak anonymous memory above the
    baseline stays within 3 parts + 8 MB; the eager load of the same model exceeds that bound.

    bf16 from an fp32 checkpoint, because then every onloaded tensor is a real copy. In the
    checkpoint's own dtype on a CPU, safetensors hands out tensors backed by the memory-mapped
    file (no anonymous memory at all, for both paths), which would make the bound vacuous.
    """
    directory = tmp_path / "llama"
    num_parameters = _write_random_llama(directory)
    assert len(list(directory.glob("*.safetensors"))) >= 12
    env = os.environ | {
        "MALLOC_ARENA_MAX": "2",
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    # Both in parallel: the measurement is per process, and the test stays short.
    runs = {
        mode: subprocess.Popen(
            [sys.executable, str(PROBE), mode, "bf16", str(directory)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for mode in ("lazy", "eager")
    }
    results = {}
    for mode, process in runs.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        results[mode] = json.loads(out.strip().splitlines()[-1])
    largest_part = results["lazy"]["largest_part"]
    bound = 3 * largest_part + 8 * 2**20
    print(
        f"peak RssAnon above baseline: lazy {results['lazy']['peak_above'] / 2**20:.1f} MiB, "
        f"eager {results['eager']['peak_above'] / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB"
    )
    # The largest part is a decoder layer in bf16 (q, o, k, v, MLP, two norms).
    assert largest_part == 2 * (2 * 512 * 512 + 2 * 256 * 512 + 3 * 512 * 1536 + 2 * 512)
    assert results["lazy"]["peak_above"] <= bound
    # Negative control: the whole model in bf16 (≈109 MB) does not fit the bound.
    assert results["eager"]["peak_above"] > bound
    assert results["eager"]["peak_above"] > 0.8 * num_parameters * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parts_onload_to_the_gpu_and_run_there(tmp_path):
    directory = save_sharded(tmp_path / "g", "gemma3")
    eager = load_model(str(directory), dtype="bf16", device="cpu").model
    lazy = LazyModel(directory, dtype="bf16", device="cuda")
    ids = torch.randint(3, TINY_VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = eager(input_ids=ids).logits.float()
        lazy.onload(*lazy.parts)
        try:
            assert all(t.device.type == "cuda" for t in state(lazy.model).values())
            logits = lazy.model(input_ids=ids.cuda()).logits.float().cpu()
        finally:
            lazy.release_all()
    assert all(p.is_meta for p in lazy.model.parameters())
    torch.testing.assert_close(logits, expected, rtol=0.05, atol=0.05)
