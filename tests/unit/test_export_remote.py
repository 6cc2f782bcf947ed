"""A heterogeneous export loads in vanilla transformers (trust_remote_code) without prunekit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch

from prunekit.export.save import export_model
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import from_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.surgery.depth import remove_blocks
from prunekit.surgery.width import set_consumer, slice_mlp, slice_value_channels

# Run with -I (no cwd, no PYTHONPATH, no user site) and the editable-install finder of prunekit
# removed, so `import prunekit` must fail: only the modeling file in the directory can help.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.meta_path[:] = [f for f in sys.meta_path if "prunekit" not in repr(f)]
    try:
        import prunekit
    except ImportError:
        pass
    else:
        raise SystemExit("prunekit is importable: the test would prove nothing")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = sys.argv[1]
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    ids = torch.tensor(json.loads(sys.argv[2]))
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
    out = model.generate(ids[:1, :5], max_new_tokens=5, do_sample=False, pad_token_id=0)
    print(json.dumps({"logits": logits.tolist(), "generated": out.tolist(),
                      "class": type(model).__name__, "tokenizer": type(tokenizer).__name__}))
    """
)


def heterogeneous_llama():
    """Blocks removed, MLP and value widths sliced, a bias added to one o_proj (as FLAP does)."""
    loaded = from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")
    remove_blocks(loaded, [BlockRef(0, "attn"), BlockRef(2, "mlp")])
    adapter, layers = loaded.adapter, loaded.adapter.layers(loaded.model)
    slice_mlp(adapter.mlp_channels(layers[1]), list(range(0, 96, 3)))
    channels = adapter.attention_channels(layers[3], loaded.model.config)
    slice_value_channels(channels, [list(range(8))] * channels.num_kv_heads, adapter)
    o_proj = channels.o_proj
    set_consumer(o_proj, o_proj.weight.data, torch.full((o_proj.out_features,), 0.05))
    return loaded


def test_vanilla_transformers_loads_shim_without_prunekit(tmp_path):
    loaded = heterogeneous_llama()
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = loaded.model(ids, use_cache=False).logits
        expected_gen = loaded.model.generate(
            ids[:1, :5], max_new_tokens=5, do_sample=False, pad_token_id=0
        )
    result = export_model(loaded, tmp_path / "model")
    assert result.format == "prunekit"
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert {"skip", "intermediate_size", "v_head_dim", "o_proj_bias"} <= {
        key for entry in config["per_layer_config"].values() for key in entry
    }

    env = {"HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", SCRIPT, str(tmp_path / "model"), json.dumps(ids.tolist())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["class"] == "PrunekitLlamaForCausalLM"
    assert torch.allclose(torch.tensor(out["logits"]), expected, atol=1e-5, rtol=1e-4)
    assert out["generated"] == expected_gen.tolist()


def test_stock_transformers_without_remote_code_refuses_clearly(tmp_path):
    import pytest
    from transformers import AutoModelForCausalLM

    export_model(heterogeneous_llama(), tmp_path / "model")
    with pytest.raises(Exception, match="trust_remote_code|prunekit_llama"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "model", trust_remote_code=False)


def run_without_stdin(script: str, *args) -> subprocess.CompletedProcess:
    """Run ``script`` in a new interpreter with stdin closed: a prompt fails, never waits."""
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=240,
    )


def test_load_pruned_prints_nothing(tmp_path):
    """No transformers warnings (e.g. "a model of type `prunekit_llama` ... of type ``")."""
    export_model(heterogeneous_llama(), tmp_path / "model")
    script = "import prunekit, sys; prunekit.load_pruned(sys.argv[1], device='cpu')"
    proc = run_without_stdin(script, tmp_path / "model")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "" and proc.stderr == ""


def test_tokenizer_of_a_heterogeneous_export_loads_without_custom_code(tmp_path):
    """The documented way around AutoTokenizer's remote-code question: the tokenizer class itself
    reads no config, so it loads with no prompt (stdin closed) and gives the original ids."""
    export_model(heterogeneous_llama(), tmp_path / "model")
    script = (
        "import sys; from transformers import PreTrainedTokenizerFast; "
        "tok = PreTrainedTokenizerFast.from_pretrained(sys.argv[1]); "
        "print(tok('The quick brown fox')['input_ids'])"
    )
    proc = run_without_stdin(script, tmp_path / "model")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[y/N]" not in proc.stdout + proc.stderr
    assert proc.stdout.strip() == str(tiny_tokenizer()("The quick brown fox")["input_ids"])
