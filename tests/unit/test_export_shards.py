"""Weights written shard by shard: the files save_pretrained writes, and one shard in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from prunekit.errors import ExportError
from prunekit.export.formats import tensor_shapes
from prunekit.export.load import load_pruned
from prunekit.export.save import export_model, staging_dir
from prunekit.export.shards import INDEX_NAME, WEIGHTS_NAME, ShardWriter, parse_shard_size
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import from_model
from prunekit.models.tiny import TINY_FAMILIES, TINY_VOCAB, tiny_model, tiny_tokenizer
from prunekit.surgery.depth import remove_blocks
from prunekit.surgery.width import slice_mlp

IDS = torch.randint(0, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))
SMALL = "20KB"  # below most tiny tensors' size (an MLP matrix is 24.6 KB): many shards


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, use_cache=False).logits


def write_model(model, directory: Path, **writer_args) -> None:
    """What a streamed engine does: each tensor handed over on its own, tied duplicates left out."""
    keep = tensor_shapes(model)
    directory.mkdir(parents=True, exist_ok=True)
    with ShardWriter(directory, **writer_args) as writer:
        for name, tensor in model.state_dict().items():
            if name in keep:
                writer.add(name, tensor)


def read_files(directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    """File name -> the tensors it holds."""
    files = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            files[path.name] = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return files


def data_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("max_shard_size", [SMALL, "2GB"])
def test_same_files_as_save_pretrained(family, max_shard_size, tmp_path):
    """Byte for byte what transformers writes, the index included; both loaders read it back."""
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    write_model(model, tmp_path / "ours", max_shard_size=max_shard_size)
    model.config.save_pretrained(tmp_path / "ours")
    tiny_tokenizer().save_pretrained(tmp_path / "ours")
    model.save_pretrained(tmp_path / "theirs", max_shard_size=max_shard_size)

    ours = sorted(p.name for p in (tmp_path / "ours").glob("model*"))
    assert ours == sorted(p.name for p in (tmp_path / "theirs").glob("model*"))
    for name in ours:
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes()
    if max_shard_size == SMALL:
        assert len(ours) > 3 and INDEX_NAME in ours
    else:
        assert ours == [WEIGHTS_NAME]

    expected = logits(model)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32)
    state = plain.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(logits(load_pruned(tmp_path / "ours", device="cpu").model), expected)


def test_index_counts_and_maps_every_tensor(tmp_path):
    """total_size is the tensor bytes; weight_map names each tensor's file (tied one dropped)."""
    model = tiny_model("llama", tie_word_embeddings=True)
    model.tie_weights()
    write_model(model, tmp_path, dtype=torch.bfloat16, max_shard_size=SMALL)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    files = read_files(tmp_path)
    assert index["metadata"]["total_size"] == sum(data_bytes(t) for t in files.values())
    assert index["weight_map"] == {k: f for f, tensors in files.items() for k in tensors}
    assert set(index["weight_map"]) == set(tensor_shapes(model))
    assert "lm_head.weight" not in index["weight_map"]
    assert all(t.dtype == torch.bfloat16 for ts in files.values() for t in ts.values())
    assert index["metadata"]["total_parameters"] == model.num_parameters()


def test_shards_respect_the_limit(tmp_path):
    """No file above the limit unless it holds one larger tensor; same grouping as the hub."""
    from huggingface_hub import split_torch_state_dict_into_shards

    limit = 10_000
    sizes = [300, 900, 700, 4000, 300, 800, 50, 120, 600, 999, 1000, 10]  # fp32 elements
    tensors = {f"t{i:02d}": torch.randn(n) for i, n in enumerate(sizes)}
    tensors["steps"] = torch.arange(1000, dtype=torch.int64)  # 8000 bytes, kept as int64
    with ShardWriter(tmp_path, max_shard_size=limit) as writer:
        for name, tensor in tensors.items():
            writer.add(name, tensor)
    files = read_files(tmp_path)
    for held in files.values():
        assert data_bytes(held) <= limit or len(held) == 1
    assert sum(data_bytes(held) > limit for held in files.values()) == 1  # the 4000-element one
    assert files[writer.written.weight_map["steps"]]["steps"].dtype == torch.int64
    hub = split_torch_state_dict_into_shards(tensors, max_shard_size=limit)
    assert {f: list(t) for f, t in files.items()} == hub.filename_to_tensors
    for held in files.values():
        assert all(torch.equal(held[k], tensors[k]) for k in held)


def test_export_model_writes_shards_that_reload(tmp_path):
    """A pruned (heterogeneous, prunekit-format) export in many shards reloads with equal logits."""
    loaded = from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")
    remove_blocks(loaded, [BlockRef(1, "attn")])
    layer = loaded.adapter.layers(loaded.model)[-1]
    slice_mlp(loaded.adapter.mlp_channels(layer), list(range(40)))
    expected = logits(loaded.model)
    result = export_model(loaded, tmp_path / "m", max_shard_size=SMALL)
    assert result.format == "prunekit"
    index = json.loads((tmp_path / "m" / INDEX_NAME).read_text())
    assert set(index["weight_map"]) == set(tensor_shapes(loaded.model))
    assert len(set(index["weight_map"].values())) > 3
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["export"]["parameters"] == sum(p.numel() for p in loaded.model.parameters())
    assert torch.equal(logits(load_pruned(tmp_path / "m", device="cpu").model), expected)
    export_model(loaded, tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "one").glob("model*.safetensors*")) == [WEIGHTS_NAME]
    assert torch.equal(logits(load_pruned(tmp_path / "one", device="cpu").model), expected)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_pruned_export_of_every_family_loads_in_transformers(family, tmp_path):
    """Uniformly narrowed MLPs: the stock format, several shards, read by plain from_pretrained."""
    from transformers import AutoModelForCausalLM

    loaded = from_model(tiny_model(family), tiny_tokenizer(), spec=f"tiny-{family}")
    for layer in loaded.adapter.layers(loaded.model):
        slice_mlp(loaded.adapter.mlp_channels(layer), list(range(0, 96, 2)))
    expected = logits(loaded.model)
    assert export_model(loaded, tmp_path / "m", max_shard_size="50KB").format == "hf"
    assert (tmp_path / "m" / INDEX_NAME).is_file()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    assert torch.equal(logits(plain), expected)


def test_crash_between_tensors_leaves_no_directory(tmp_path):
    model = tiny_model("llama")
    target = tmp_path / "out"
    with (
        pytest.raises(RuntimeError, match="layer 2 failed"),
        staging_dir(target, overwrite=False) as tmp,
        ShardWriter(tmp, max_shard_size=SMALL) as writer,
    ):
        for i, (name, tensor) in enumerate(model.state_dict().items()):
            if i == 12:
                raise RuntimeError("layer 2 failed")
            writer.add(name, tensor)
    assert list(tmp_path.iterdir()) == []


def test_writer_removes_its_partial_shards_on_error(tmp_path):
    """Outside a staging directory too, a failed write leaves nothing that looks like weights."""
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, max_shard_size=1000) as writer:
        writer.add("a", torch.zeros(200))
        writer.add("b", torch.zeros(200))  # the first shard is on disk now
        assert len(list(tmp_path.iterdir())) == 1
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_export_failing_mid_weights_leaves_no_directory(tmp_path, monkeypatch):
    import safetensors.torch

    real, calls = safetensors.torch.save_file, []

    def fail_on_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", fail_on_third_shard)
    loaded = from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")
    with pytest.raises(OSError, match="disk full"):
        export_model(loaded, tmp_path / "m", max_shard_size=SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ExportError, match="shard size"):
        parse_shard_size("2 parsecs")
    assert parse_shard_size("2GB") == 2 * 10**9 and parse_shard_size("1.5KB") == 1500
    with ShardWriter(tmp_path) as writer:
        writer.add("a", torch.zeros(3))
        with pytest.raises(ExportError, match="already written"):
            writer.add("a", torch.zeros(3))
        with pytest.raises(ExportError, match="meta device"):
            writer.add("b", torch.zeros(3, device="meta"))
    with pytest.raises(ExportError, match="already holds weights"):
        ShardWriter(tmp_path)


# A ~140 MB fp32 Llama exported in a subprocess; RssAnon (anonymous memory only: RSS and
# ru_maxrss would count page cache and mapped files) is sampled by a thread and right before every
# shard write, when the writer's buffer is fullest. The reference is the old export: the whole
# state dict cast to the save dtype, then saved.
MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, tempfile, threading, time
    from pathlib import Path
    import safetensors.torch, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from huggingface_hub import save_torch_state_dict
    from prunekit.export.formats import tensor_shapes
    from prunekit.export.save import export_model
    from prunekit.models.loading import from_model

    def rss_anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    peak = 0
    def sample():
        global peak
        peak = max(peak, rss_anon())

    def sampler(stop):
        while not stop.is_set():
            sample()
            time.sleep(0.001)

    real_save = safetensors.torch.save_file
    def sampled_save(*args, **kwargs):
        sample()
        return real_save(*args, **kwargs)
    safetensors.torch.save_file = sampled_save

    def measure(run):
        global peak
        baseline = peak = rss_anon()
        stop = threading.Event()
        thread = threading.Thread(target=sampler, args=(stop,))
        thread.start()
        try:
            run()
            sample()
        finally:
            stop.set()
            thread.join()
        return peak - baseline

    def old_export(model, out, dtype):
        keep = tensor_shapes(model)
        state = {
            n: (t.to(dtype) if t.is_floating_point() else t).detach().cpu().contiguous()
            for n, t in model.state_dict().items() if n in keep
        }
        save_torch_state_dict(state, out, max_shard_size=SHARD, metadata={"format": "pt"})

    SHARD = 10_000_000
    config = LlamaConfig(
        vocab_size=16000, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False,
    )
    with torch.no_grad():
        model = LlamaForCausalLM(config).eval()
    loaded = from_model(model, None, spec="random-llama")
    root = Path(tempfile.mkdtemp())
    out = {"model_bytes": sum(t.nbytes for t in model.state_dict().values()), "shard": SHARD}
    for dtype in (torch.bfloat16, torch.float32):
        out[f"new_{dtype}"] = measure(
            lambda: export_model(loaded, root / str(dtype), dtype=dtype, max_shard_size=SHARD)
        )
    (root / "old").mkdir()
    out["old_torch.bfloat16"] = measure(lambda: old_export(model, root / "old", torch.bfloat16))
    out["largest_fp32"] = max(t.nbytes for t in model.state_dict().values())
    print(json.dumps(out))
    """
)
SLACK = 8 * 2**20  # interpreter, config and JSON work beside the tensors


def test_peak_memory_is_one_shard_not_the_model():
    env = {
        **os.environ,
        "MALLOC_ARENA_MAX": "2",
        "MALLOC_MMAP_THRESHOLD_": "65536",  # freed tensors go back to the OS at once
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    numbers = json.loads(proc.stdout.strip().splitlines()[-1])
    print(numbers)
    largest = {"bf16": numbers["largest_fp32"] // 2, "fp32": numbers["largest_fp32"]}
    bound = {dt: numbers["shard"] + size + SLACK for dt, size in largest.items()}
    assert numbers["new_torch.bfloat16"] <= bound["bf16"]
    assert numbers["new_torch.float32"] <= bound["fp32"]
    # Negative control: the whole state dict in bf16 (half the fp32 model) does not fit the bound.
    assert numbers["old_torch.bfloat16"] > bound["bf16"]
    assert numbers["old_torch.bfloat16"] >= 0.45 * numbers["model_bytes"]
