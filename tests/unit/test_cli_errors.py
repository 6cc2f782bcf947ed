"""Every bad option value is one line on stderr, a non-zero exit, and nothing left on disk.

The CLI's real entry point (``prunekit.cli.main``) runs in-process: it is what maps errors to
one line. Validation happens before any model is loaded, so the whole sweep takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prunekit.models.tiny import save_tiny
from prunekit.report.run_dir import PARTIAL_PLAN_FILE, PLAN_FILE, REPORT_FILE
from tests.unit.cli_helpers import run_main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return save_tiny("llama", str(tmp_path_factory.mktemp("tiny") / "llama"))


PRUNE = ["prune", "--model", "TINY", "--out", "OUT", "--device", "cpu"]
BLOCKPRUNER = [*PRUNE, "--method", "blockpruner", "--blocks", "1"]
FASP = [*PRUNE, "--method", "fasp", "--sparsity", "0.2"]
BENCH = ["bench-speed", "TINY", "--baseline", "TINY", "--device", "cpu"]

BAD_VALUES = {
    # prune: method settings
    "protect-layers not ints": (
        [*BLOCKPRUNER, "--protect-layers", "x"],
        "--protect-layers takes comma-separated integers",
    ),
    "ratio not a number": (
        [*PRUNE, "--method", "blockpruner", "--ratio", "abc"],
        "Invalid value for '--ratio'",
    ),
    "ratio above 1": ([*PRUNE, "--method", "blockpruner", "--ratio", "1.5"], "--ratio must be"),
    "ratio negative": ([*PRUNE, "--method", "fasp", "--ratio", "-0.1"], "--ratio must be"),
    "blocks zero": ([*PRUNE, "--method", "sleb", "--blocks", "0"], "--blocks must be at least 1"),
    "sparsity 1": ([*PRUNE, "--method", "flap", "--sparsity", "1"], "--sparsity must be"),
    "n-samples zero": ([*FASP, "--n-samples", "0"], "--n-samples must be at least 1"),
    "seqlen one": ([*BLOCKPRUNER, "--seqlen", "1"], "--seqlen must be at least 2"),
    "seed negative": ([*BLOCKPRUNER, "--seed", "-1"], "--seed must be >= 0"),
    "candidates unknown": ([*BLOCKPRUNER, "--candidates", "heads"], "--candidates must be"),
    "criterion unknown": ([*BLOCKPRUNER, "--criterion", "loss"], "--criterion must be"),
    "multiple-of zero": ([*FASP, "--multiple-of", "0"], "--multiple-of must be at least 1"),
    "damping negative": ([*FASP, "--damping", "-1"], "--damping must be >= 0"),
    "targets empty": ([*FASP, "--targets", ""], "--targets must be a subset"),
    "targets unknown": ([*FASP, "--targets", "mlp,heads"], "--targets must be a subset"),
    "calib unknown": ([*FASP, "--calib", "wikitext9"], "unknown dataset 'wikitext9'"),
    "calib missing file": ([*FASP, "--calib", "nope.txt"], "data file not found"),
    "method unknown": ([*PRUNE, "--method", "nope"], "unknown method 'nope'"),
    "no method": ([*PRUNE], "Missing option '--method'"),
    # prune: flags the method does not take
    "criterion on fasp": (
        [*FASP, "--criterion", "ppl"],
        "--criterion is not a setting of fasp; methods that take it: blockpruner, layer-ppl, sleb",
    ),
    "no-restore on flap": (
        [*PRUNE, "--method", "flap", "--sparsity", "0.2", "--no-restore"],
        "--no-restore is not a setting of flap; methods that take it: fasp",
    ),
    "resume on fasp": ([*FASP, "--resume"], "--resume is not a setting of fasp"),
    "sparsity on blockpruner": ([*BLOCKPRUNER, "--sparsity", "0.2"], "--sparsity is not a"),
    "candidates on layer method": ([*PRUNE, "--method", "shortgpt", "--candidates", "attn"], ""),
    "calib on magnitude": (
        [*PRUNE, "--method", "magnitude", "--sparsity", "0.2", "--calib", "c4"],
        "--calib is not a setting of magnitude",
    ),
    # prune: evaluation, model, paths
    "ppl unknown": ([*FASP, "--ppl", "wikitext9"], "unknown dataset 'wikitext9'"),
    "ppl-seqlen zero": ([*FASP, "--ppl", "wikitext2", "--ppl-seqlen", "0"], "'--ppl-seqlen'"),
    "task unknown": ([*FASP, "--tasks", "nope"], "unknown task 'nope'"),
    "limit zero": ([*FASP, "--tasks", "piqa", "--limit", "0"], "Invalid value for '--limit'"),
    "model unknown": (
        ["prune", "--method", "fasp", "--sparsity", "0.2", "--model", "no-such-model"],
        "unknown model",
    ),
    "dtype unknown": ([*FASP, "--dtype", "fp12"], "unknown dtype 'fp12'"),
    "device unknown": ([*FASP, "--device", "gpu0"], "--device 'gpu0' is not a device"),
    "save-format unknown": ([*FASP, "--save-format", "gguf"], "--save-format must be"),
    "out is a file": ([*FASP[:-2], "--out", "FILE", "--sparsity", "0.2"], "is a file"),
    "task-data is a file": ([*FASP, "--task-data", "FILE"], "--task-data FILE is a file"),
    "eval and ppl both": (
        [*FASP, "--ppl", "wikitext2", "--eval", "ptb"],
        "--eval is the old spelling of --ppl",
    ),
    # eval
    "eval seqlen zero": (["eval", "TINY", "--seqlen", "0"], "Invalid value for '--seqlen'"),
    "eval max-windows zero": (["eval", "TINY", "--max-windows", "0"], "'--max-windows'"),
    "eval ppl batch zero": (["eval", "TINY", "--ppl-batch-size", "0"], "'--ppl-batch-size'"),
    "eval batch zero": (["eval", "TINY", "--batch-size", "0"], "'--batch-size'"),
    "eval ppl empty": (["eval", "TINY", "--ppl", ""], "--ppl names no dataset"),
    "eval ppl unknown": (["eval", "TINY", "--ppl", "wikitext9"], "unknown dataset"),
    "eval json is a dir": (["eval", "TINY", "--json", "DIR"], "--json DIR is a directory"),
    "eval missing dir": (["eval", "./no/such/dir"], "model directory not found"),
    "eval device unknown": (["eval", "TINY", "--device", "gpu0"], "is not a device"),
    "eval nothing": (["eval"], "name a model or run directory"),
    # export
    "export not a run": (["export", "TINY", "--out", "OUT"], "is not a run directory"),
    # report
    "report not a run": (["report", "DIR", "--out", "OUT"], "not a finished run directory"),
    "report out is a file": (["report", "DIR", "--out", "FILE"], "--out FILE is a file"),
    # bench-speed
    "prefill not a shape": ([*BENCH, "--prefill", "1x"], "--prefill shape '1x'"),
    "prefill zero": ([*BENCH, "--prefill", "0x16"], "--prefill shape '0x16' needs a positive"),
    "decode batches not ints": ([*BENCH, "--decode-batches", "x"], "--decode-batches takes"),
    "decode batches zero": ([*BENCH, "--decode-batches", "0"], "positive integers"),
    "runs zero": ([*BENCH, "--runs", "0"], "Invalid value for '--runs'"),
    "new tokens negative": ([*BENCH, "--new-tokens", "-5"], "'--new-tokens'"),
    "nothing to measure": ([*BENCH, "--prefill", "", "--decode-batches", ""], "nothing to"),
    "bench json is a dir": ([*BENCH, "--json", "DIR"], "--json DIR is a directory"),
}


@pytest.mark.parametrize("args, message", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_every_bad_value_is_one_line(tiny, tmp_path, monkeypatch, capsys, args, message):
    out = tmp_path / "out"
    a_file = tmp_path / "FILE"
    a_file.write_text("not a directory\n")
    a_dir = tmp_path / "DIR"
    a_dir.mkdir()
    paths = {"TINY": tiny, "OUT": str(out), "FILE": str(a_file), "DIR": str(a_dir)}
    monkeypatch.chdir(tmp_path)  # FILE/DIR in messages are relative to here
    paths.update({"FILE": "FILE", "DIR": "DIR"})
    code, _, err = run_main(monkeypatch, capsys, [paths.get(a, a) for a in args])
    lines = err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "unexpected" not in err, err
    assert message in lines[0]
    assert not out.exists(), "a failed command left its output directory behind"


def test_methods_declare_what_they_read():
    """`prunekit methods` lists each method's settings, as prune flags."""
    env = {**os.environ, "COLUMNS": "400"}
    done = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", "methods"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if "│" in line}
    assert "--criterion" in rows["blockpruner"] and "--criterion" not in rows["fasp"]
    assert "--no-restore" in rows["fasp"] and "--no-restore" not in rows["wanda-sp"]

    from prunekit.methods.catalogue import get_method

    assert "resume" in get_method("sleb").takes and "resume" not in get_method("rm").takes
    assert "damping" in get_method("fasp").takes and "damping" not in get_method("flap").takes
    assert "angular" in get_method("shortgpt").takes
    assert "candidates" not in get_method("shortgpt").takes
    assert "calib" not in get_method("magnitude").takes


def test_python_api_refuses_the_same(tiny):
    from prunekit import prune
    from prunekit.errors import SettingsError

    with pytest.raises(SettingsError, match="damping is not a setting of blockpruner"):
        prune(tiny, "blockpruner", blocks=1, damping=0.5)
    with pytest.raises(SettingsError, match="unknown setting 'ratios'"):
        prune(tiny, "fasp", ratios=0.2)


CALIB = ["--calib", "wikitext2", "--n-samples", "2", "--seqlen", "32", "--dtype", "fp32"]


def test_a_run_is_never_replaced_silently(tiny, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    base = ["prune", "--model", tiny, "--out", str(run), "--device", "cpu", *CALIB]
    code, _, err = run_main(
        monkeypatch, capsys, [*base, "--method", "blockpruner", "--blocks", "2"]
    )
    assert code == 0, err
    finished = (run / REPORT_FILE).read_text()

    # Another method pointed at a finished run: refused, the run untouched.
    shortgpt = [*base, "--method", "shortgpt", "--blocks", "1"]
    code, _, err = run_main(monkeypatch, capsys, shortgpt)
    assert code == 2 and "holds a finished run" in err and "--overwrite" in err
    assert (run / REPORT_FILE).read_text() == finished
    code, _, err = run_main(
        monkeypatch, capsys, [*base, "--method", "sleb", "--blocks", "1", "--resume"]
    )
    assert code == 2 and "nothing to resume" in err and "finished run" in err

    # An unfinished run (what kill -9 leaves): refused without --resume, named in the message.
    (run / PLAN_FILE).rename(run / PARTIAL_PLAN_FILE)
    (run / REPORT_FILE).unlink()
    partial = (run / PARTIAL_PLAN_FILE).read_text()
    again = [*base, "--method", "blockpruner", "--blocks", "2"]
    code, _, err = run_main(monkeypatch, capsys, again)
    assert code == 2 and "unfinished run" in err and "--resume" in err
    assert (run / PARTIAL_PLAN_FILE).read_text() == partial

    # --overwrite replaces it, and only then is the other method's run written.
    code, _, err = run_main(monkeypatch, capsys, [*shortgpt, "--overwrite"])
    assert code == 0, err
    assert json.loads((run / REPORT_FILE).read_text())["method"] == "shortgpt"
    assert not (run / PARTIAL_PLAN_FILE).exists()


def test_deprecated_eval_spelling_still_works(tiny, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["prune", "--model", tiny, "--method", "rm", "--blocks", "1", "--out", str(run)]
    args += ["--device", "cpu", *CALIB, "--eval", "wikitext2", "--eval-seqlen", "32"]
    code, _, err = run_main(monkeypatch, capsys, [*args, "--eval-max-windows", "2"])
    assert code == 0, err
    assert err.strip().splitlines() == [
        "warning: --eval is deprecated; use --ppl",
        "warning: --eval-seqlen is deprecated; use --ppl-seqlen",
        "warning: --eval-max-windows is deprecated; use --ppl-max-windows",
    ]
    ppl = json.loads((run / REPORT_FILE).read_text())["eval"]["pruned"]["ppl"]["wikitext2"]
    assert ppl["seqlen"] == 32 and ppl["windows"] == 2


@pytest.mark.parametrize("verbose", [True, False])
def test_verbose_shows_prunekit_info_messages(verbose):
    args = "['-v', 'methods']" if verbose else "['methods']"
    code = (
        "import logging, sys\n"
        "from prunekit import cli\n"
        f"sys.argv = ['prunekit', *{args}]\n"
        "cli.main()\n"
        "logging.getLogger('prunekit.models.loading').info('dequantizing marker')\n"
        "logging.getLogger('prunekit.api').warning('warning marker')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("dequantizing marker" in done.stderr) is verbose
    assert "warning marker" in done.stderr


def test_import_prunekit_loads_no_torch():
    code = (
        "import sys, prunekit, prunekit.cli\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
        "prunekit.load_model\n"  # the lazy names still resolve
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["", "True"]
