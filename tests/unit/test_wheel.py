"""The wheel a user installs works: built, installed into a fresh venv, run end to end.

The wheel is built (pip, with build isolation) from a copy of the files a build reads, so the
worktree gets no build/ or egg-info. A new venv gets torch==2.13.0 (the CPU wheel: any other spec
pulls a CUDA build) and the wheel with its declared dependencies, no extras, bytecode left to be
compiled on import (pip's compile step is most of an install's time). Every command then runs
from a folder outside the repository with PYTHONPATH and the dev venv cleared from the
environment, so prunekit can only come from the wheel: `--help`, `methods`, a FASP prune
(per-layer widths: the trust_remote_code modeling file must be in the wheel) exported with
`prunekit export`, a SLEB prune saved in the stock format, both reloaded with
`prunekit.load_pruned` and with transformers alone, and the one-line messages of the missing
extras (lm-eval, matplotlib).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

from prunekit.export.load import load_pruned
from prunekit.models.tiny import TINY_VOCAB, save_tiny, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TORCH_SPEC = "torch==2.13.0"
TEXT = "The quick brown fox jumps over the lazy dog."
IDS = [[5, 17, 42, 99, 123, 7, 250, 31, 64, 200]]
CALIB = ["--n-samples", "8", "--seqlen", "96"]

RELOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import prunekit
    request = json.loads(sys.argv[1])
    ids = torch.tensor(request["ids"])
    out = {"prunekit": prunekit.__file__}
    for name, path, remote in request["exports"]:
        loaded = prunekit.load_pruned(path, device="cpu")
        kwargs = {"trust_remote_code": True} if remote else {}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        with torch.no_grad():
            ours = loaded.model(ids, use_cache=False).logits
            theirs = model(ids, use_cache=False).logits
        out[name] = {
            "class": type(model).__name__,
            "params": sum(p.numel() for p in model.parameters()),
            "load_pruned_params": sum(p.numel() for p in loaded.model.parameters()),
            "logits": ours.tolist(),
            "max_diff": (ours - theirs).abs().max().item(),
            "encoded": tokenizer(request["text"])["input_ids"],
            "load_pruned_encoded": loaded.tokenizer(request["text"])["input_ids"],
        }
    print(json.dumps(out))
    """
)


class WheelVenv:
    """A fresh venv holding the wheel; runs its commands outside the repository."""

    def __init__(self, root: Path, venv: Path, wheel: Path, seconds: dict[str, float]):
        self.root, self.venv, self.wheel, self.seconds = root, venv, wheel, seconds
        self.bin = venv / "bin"
        dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PRUNEKIT_DATA_DIR"}
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        # The dev venv's bin/ leaves PATH: `python` and `prunekit` must be the new venv's.
        path = [
            p for p in env.get("PATH", "").split(os.pathsep) if Path(p).parent != Path(sys.prefix)
        ]
        env["PATH"] = os.pathsep.join([str(self.bin), *path])
        env.update(
            # rich wraps at 80 columns when piped: a message holding a long tmp path (xdist adds
            # popen-gwN/ to it) would split the words the assertions look for.
            COLUMNS="200",
            HF_HUB_OFFLINE="1",
            HF_MODULES_CACHE=str(root / "hf_modules"),
            PRUNEKIT_CACHE_DIR=str(root / "cache"),
            PRUNEKIT_PROGRESS="0",
            TOKENIZERS_PARALLELISM="false",
        )
        self.env = env

    def start(self, program: str, *args: str) -> tuple[subprocess.Popen, str, float]:
        """Start ``program`` from the venv's bin/ (a process the test may overlap with others)."""
        proc = subprocess.Popen(
            [str(self.bin / program), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        label = " ".join([program, *(a for a in args[:3] if "/" not in a and "\n" not in a)])
        return proc, label, time.perf_counter()

    def finish(self, started: tuple[subprocess.Popen, str, float]) -> subprocess.CompletedProcess:
        proc, label, since = started
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - since
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        return self.finish(self.start(program, *args))

    def prunekit(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("prunekit", *args)


def start_wheel_build(out: Path) -> subprocess.Popen:
    """pip wheel from a copy of what the build reads (pyproject, README, the package), so the
    worktree gets no build/ or egg-info; build isolation, as a user's pip does it."""
    src = out / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "prunekit", src / "prunekit", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)]
    return subprocess.Popen(pip, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def dev_constraints(path: Path) -> Path:
    """The dev venv's versions as pip constraints: the wheel's dependencies resolve to what the
    rest of the suite runs on (and what pip has cached), not to whatever the index released
    today; the wheel's own metadata still decides *which* packages come."""
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    path.write_text("\n".join(line for line in freeze if "==" in line and " @ " not in line))
    return path


def pip_install(venv: Path, *requirements: str) -> None:
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]
    pip += ["-c", str(dev_constraints(venv.parent / "constraints.txt"))]
    proc = subprocess.run([*pip, *requirements], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> WheelVenv:
    root = tmp_path_factory.mktemp("wheel")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    build = start_wheel_build(root / "dist")  # overlaps the venv's creation
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    output = build.communicate(timeout=600)[0]
    assert build.returncode == 0, output[-3000:]
    (wheel,) = (root / "dist").glob("prunekit-*.whl")
    seconds["venv + wheel"] = time.perf_counter() - started
    started = time.perf_counter()
    # One resolution: torch pinned to the CPU wheel, then whatever the wheel's metadata asks for.
    pip_install(venv, TORCH_SPEC, str(wheel))
    seconds["install"] = time.perf_counter() - started
    yield WheelVenv(root, venv, wheel, seconds)
    print("\nwheel test timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


def test_wheel_holds_every_package_file(wheel_venv):
    """Every file of the source package is in the wheel (the shim modeling file included), and
    the console script is declared."""
    with zipfile.ZipFile(wheel_venv.wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    source = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "prunekit").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert source - names == set()
    assert "prunekit/export/shim/modeling_prunekit_llama.py" in names
    assert "prunekit = prunekit.cli:main" in scripts


def test_wheel_cli_help_and_methods(wheel_venv):
    result = wheel_venv.prunekit("--help")
    assert result.returncode == 0, result.stderr
    for command in ("prune", "eval", "export", "methods", "report"):
        assert command in result.stdout
    result = wheel_venv.prunekit("methods")
    assert result.returncode == 0, result.stderr
    for method in ("blockpruner", "fasp", "sleb", "wanda-sp"):
        assert method in result.stdout


@pytest.fixture(scope="module")
def tiny_inputs(wheel_venv) -> tuple[Path, Path]:
    """A tiny Llama saved by the dev environment (plain files), and a calibration text."""
    tiny = Path(save_tiny("llama", str(wheel_venv.root / "tiny")))
    calib = wheel_venv.root / "calib.txt"
    text = " ".join(tiny_tokenizer().decode(list(range(3, TINY_VOCAB))) for _ in range(4))
    calib.write_text(text)
    return tiny, calib


def test_wheel_missing_eval_extra_is_one_line(wheel_venv, tiny_inputs):
    tiny, _ = tiny_inputs
    result = wheel_venv.prunekit("eval", str(tiny), "--tasks", "piqa")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: zero-shot evaluation (--tasks) needs the optional package 'lm-eval': "
        "pip install 'prunekit[eval]'"
    ]


def test_wheel_prunes_exports_and_reloads(wheel_venv, tiny_inputs):
    tiny, calib = tiny_inputs
    root = wheel_venv.root
    common = ["--model", str(tiny), "--calib", str(calib), *CALIB, "--dtype", "fp32"]

    # The stock-format run (SLEB, one layer, saved by --save) overlaps the FASP prune + export.
    sleb_args = ["--method", "sleb", "--blocks", "1", *common, "--out", str(root / "run_sleb")]
    sleb = wheel_venv.start("prunekit", "prune", *sleb_args, "--save", str(root / "sleb"))
    fasp = wheel_venv.prunekit(
        "prune", "--method", "fasp", "--ratio", "0.1", *common, "--out", str(root / "run_fasp")
    )
    assert fasp.returncode == 0, fasp.stderr
    exported = wheel_venv.prunekit("export", str(root / "run_fasp"), "--out", str(root / "fasp"))
    assert exported.returncode == 0, exported.stderr
    assert "prunekit format" in exported.stdout
    assert (root / "fasp" / "modeling_prunekit_llama.py").is_file()

    sleb = wheel_venv.finish(sleb)
    assert sleb.returncode == 0, sleb.stderr
    # A depth run plots its search; without matplotlib that is one notice, and the run succeeds.
    assert sleb.stderr.strip().splitlines() == [
        "note: plots skipped (pip install 'prunekit[plot]' for matplotlib)"
    ]
    assert json.loads((root / "sleb" / "config.json").read_text())["model_type"] == "llama"

    request = {
        "ids": IDS,
        "text": TEXT,
        "exports": [["fasp", str(root / "fasp"), True], ["sleb", str(root / "sleb"), False]],
    }
    reload = wheel_venv.run("python", "-I", "-c", RELOAD, json.dumps(request))
    assert reload.returncode == 0, reload.stderr[-3000:]
    out = json.loads(reload.stdout.strip().splitlines()[-1])
    assert Path(out["prunekit"]).is_relative_to(wheel_venv.venv)

    dense_params = sum(p.numel() for p in tiny_model("llama").parameters())
    expected_ids = tiny_tokenizer()(TEXT)["input_ids"]
    for name, model_class in (("fasp", "PrunekitLlamaForCausalLM"), ("sleb", "LlamaForCausalLM")):
        got = out[name]
        report = json.loads((root / name / "report.json").read_text())
        assert got["class"] == model_class
        assert got["params"] == got["load_pruned_params"] == report["export"]["parameters"]
        assert got["params"] < dense_params
        assert got["max_diff"] <= 1e-5
        assert got["encoded"] == got["load_pruned_encoded"] == expected_ids
        logits = torch.tensor(got["logits"])
        assert logits.shape == (1, len(IDS[0]), TINY_VOCAB) and torch.isfinite(logits).all()
        # The same export loaded by this (source-tree) prunekit gives the same logits.
        with torch.no_grad():
            here = load_pruned(root / name, device="cpu").model(torch.tensor(IDS)).logits
        assert torch.allclose(logits, here, atol=1e-5, rtol=1e-4)
