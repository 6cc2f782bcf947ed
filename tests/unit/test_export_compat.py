"""An exported heterogeneous model runs on the oldest and the newest transformers prunekit declares.

Each version is installed once into a cache (``make compat``, see compat_helpers.py). The child
process runs isolated (``-I``) with that cache first on its path and prunekit unimportable, loads
the export with ``trust_remote_code=True`` and must give prunekit's in-memory logits and greedy
tokens. In CI (``CI`` set) a missing cache fails; elsewhere the test is skipped with a hint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from prunekit.export.save import export_model
from tests.unit.compat_helpers import NEWEST, OLDEST, is_ready, target_dir
from tests.unit.test_export_remote import heterogeneous_llama
from tests.unit.test_export_sliding import (
    depth_pruned_mistral,
    ids_longer_than_window,
    width_pruned_mistral,
)

# Run first in every child (``run_isolated``): the cached transformers first on the path, prunekit
# unimportable, and the version checked, so a test can only pass on the version it names.
PRELUDE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {cache!r})
    sys.meta_path[:] = [f for f in sys.meta_path if "prunekit" not in repr(f)]
    try:
        import prunekit
    except ImportError:
        pass
    else:
        raise SystemExit("prunekit is importable: the test would prove nothing")
    import transformers
    found = f"{{transformers.__version__}}, {{transformers.__file__}}"
    if transformers.__version__ != {version!r} or not transformers.__file__.startswith({cache!r}):
        raise SystemExit(f"wrong transformers: {{found}}")
    """
)
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = sys.argv[1]
    request = json.load(open(sys.argv[2]))
    ids = torch.tensor(request["ids"])
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
    prompt = ids[:1, : request["prompt_length"]]
    generated = model.generate(
        prompt, max_new_tokens=request["new_tokens"], do_sample=False, pad_token_id=0
    )
    print(json.dumps({"logits": logits.tolist(), "generated": generated.tolist(),
                      "encoded": tokenizer(request["text"])["input_ids"],
                      "class": type(model).__name__}))
    """
)
TEXT = "The quick brown fox jumps over the lazy dog."
MODELS = {
    "llama-mixed": heterogeneous_llama,
    "mistral-depth": depth_pruned_mistral,
    "mistral-width": width_pruned_mistral,
}


def require_cache(version: str) -> str:
    if is_ready(version):
        return str(target_dir(version))
    message = f"transformers {version} is not cached in {target_dir(version)}: run `make compat`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("name", list(MODELS))
def test_export_runs_on_declared_transformers(version, name, tmp_path):
    cache = require_cache(version)
    loaded = MODELS[name]()
    ids = ids_longer_than_window()
    request = {"ids": ids.tolist(), "prompt_length": 12, "new_tokens": 10, "text": TEXT}
    with torch.no_grad():
        expected = loaded.model(ids, use_cache=False).logits
    expected_generated = loaded.model.generate(
        ids[:1, :12], max_new_tokens=10, do_sample=False, pad_token_id=0
    )
    assert export_model(loaded, tmp_path / "model", fmt="prunekit").format == "prunekit"
    (tmp_path / "request.json").write_text(json.dumps(request))

    args = [str(tmp_path / "model"), str(tmp_path / "request.json")]
    proc = run_isolated(cache, version, SCRIPT, args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["class"] == "PrunekitLlamaForCausalLM"
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, atol=1e-5, rtol=1e-4)
    assert out["generated"] == expected_generated.tolist()
    assert out["encoded"] == loaded.tokenizer(TEXT)["input_ids"]


# The tokenizer calls a user may make on a heterogeneous export, each announced on stdout so the
# remote-code question ("[y/N]", which input() writes to stdout) is attributed to its call.
TOKENIZER_CALLS = textwrap.dedent(
    """
    import json, sys
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    path, text = sys.argv[1:3]
    trusted = {"trust_remote_code": True}
    calls = {
        "AutoTokenizer": lambda: AutoTokenizer.from_pretrained(path),
        "AutoTokenizer trusted": lambda: AutoTokenizer.from_pretrained(path, **trusted),
        "PreTrainedTokenizerFast": lambda: PreTrainedTokenizerFast.from_pretrained(path),
    }
    for name, call in calls.items():
        print(f"\\n@@call {name}", flush=True)
        ids = call()(text)["input_ids"]
        print(f"\\n@@ids {json.dumps(ids)}", flush=True)
    """
)


def run_isolated(cache: str, version: str, script: str, args: list[str], cwd):
    """``script`` in an isolated Python (-I) after ``PRELUDE``, with stdin closed: a question
    ("[y/N]") fails at once, never waits."""
    prelude = PRELUDE.format(cache=cache, version=version)
    return subprocess.run(
        [sys.executable, "-I", "-c", prelude + script, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"HF_MODULES_CACHE": str(cwd / "hf_modules"), "HF_HUB_OFFLINE": "1"},
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_tokenizer_of_heterogeneous_export_without_the_question(version, tmp_path):
    """AutoTokenizer calls AutoConfig on config.json before it reads tokenizer_config.json, and
    AutoConfig asks "[y/N]" whenever config.json's auto_map names a config class for an unknown
    model_type and trust_remote_code is not given: so a plain AutoTokenizer asks, on both ends of
    the range, whatever tokenizer_config.json says (a TTY waits 15 s for the answer; stdin closed,
    the question fails and the tokenizer still loads). The calls README and the model card give
    load the same ids and ask nothing; the card's own snippet runs as written."""
    cache = require_cache(version)
    loaded = heterogeneous_llama()
    expected = loaded.tokenizer(TEXT)["input_ids"]
    assert export_model(loaded, tmp_path / "model", fmt="prunekit").format == "prunekit"

    args = [str(tmp_path / "model"), TEXT]
    proc = run_isolated(cache, version, TOKENIZER_CALLS, args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = {}
    for chunk in proc.stdout.split("\n@@call ")[1:]:
        name, rest = chunk.split("\n", 1)
        asked, ids = rest.split("\n@@ids ")
        calls[name] = ("[y/N]" in asked, json.loads(ids))
    assert calls == {
        "AutoTokenizer": (True, expected),
        "AutoTokenizer trusted": (False, expected),
        "PreTrainedTokenizerFast": (False, expected),
    }

    card = (tmp_path / "model" / "README.md").read_text()
    (snippet,) = [b for b in card.split("```python\n")[1:] if "AutoTokenizer" in b]
    snippet = snippet.split("```")[0].replace("max_new_tokens=32", "max_new_tokens=4")
    proc = run_isolated(cache, version, snippet, [], tmp_path)  # the card names the folder "model"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[y/N]" not in proc.stdout + proc.stderr
    assert proc.stdout.strip()  # the decoded generation
