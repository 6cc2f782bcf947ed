"""FASP's own cost against one plain forward, before and after the fast arithmetic (issue 13).

"before": the reference arithmetic, as prunekit did it until now: Gram products in IEEE fp32,
the restoration solved in fp64, the calibration corpus tokenized by every run. "after": the
defaults: bf16 Gram products on AMX with fp32 accumulation, the fp32 solve where the damping
bounds the condition number, the tokenized corpus read from the on-disk cache. Every `prune`
call includes the tokenization step, as a new process pays it (the in-process cache is cleared).

Per dtype, runs are interleaved F B F A F B F A … F (F: one forward of the whole model over the
calibration windows, B/A: one before/after prune of a fresh copy); each prune's ratio is its time
over the mean of the two forwards around it, and the table shows the median. Then WikiText-2
perplexity of one pruned model per mode, and whether the kept channels are the same.

    PRUNEKIT_DATA_DIR=../shared/data python bench/fasp_cost.py [--repeats 3] [--dtypes fp32 bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from prunekit import load_model
from prunekit.data import corpus_tokens
from prunekit.data import windows as data_windows
from prunekit.engine import sequential
from prunekit.evaluation.perplexity import perplexity
from prunekit.methods.catalogue import get_method
from prunekit.methods.width import restoration, uniform
from prunekit.methods.width.common import calibration_data
from prunekit.methods.width.fasp import FaspSettings
from prunekit.models.loading import LoadedModel


def fresh_copy(dense: LoadedModel) -> LoadedModel:
    return dataclasses.replace(dense, model=copy.deepcopy(dense.model))


@contextlib.contextmanager
def reference_arithmetic() -> Iterator[None]:
    """The pre-issue-13 arithmetic: IEEE fp32 Gram, fp64 solve, no on-disk token cache."""
    saved = sequential.InputStatistics, uniform.restore_consumer
    saved_env = os.environ.get("PRUNEKIT_TOKEN_CACHE")
    sequential.InputStatistics = functools.partial(saved[0], fast_products=False)
    uniform.restore_consumer = functools.partial(restoration.restore_consumer, precision="fp64")
    os.environ["PRUNEKIT_TOKEN_CACHE"] = "0"
    try:
        yield
    finally:
        sequential.InputStatistics, uniform.restore_consumer = saved
        if saved_env is None:
            os.environ.pop("PRUNEKIT_TOKEN_CACHE", None)
        else:
            os.environ["PRUNEKIT_TOKEN_CACHE"] = saved_env


@torch.inference_mode()
def forward_seconds(loaded: LoadedModel, windows: torch.Tensor) -> float:
    """One plain forward of the whole model over the windows (batch 1, no cache), after one
    untimed window."""
    loaded.model(input_ids=windows[:1].to(loaded.device), use_cache=False)
    started = time.perf_counter()
    for i in range(windows.shape[0]):
        loaded.model(input_ids=windows[i : i + 1].to(loaded.device), use_cache=False)
    return time.perf_counter() - started


def timed_prune(dense: LoadedModel, settings: FaspSettings, mode: str) -> tuple[float, object]:
    """One `prune` of a fresh copy in ``mode``, tokenization included (in-process cache cleared)."""
    loaded = fresh_copy(dense)
    data_windows._tokenized_corpus.cache_clear()
    context = reference_arithmetic() if mode == "before" else contextlib.nullcontext()
    with context:
        started = time.perf_counter()
        plan = get_method("fasp").prune(loaded, settings)
        seconds = time.perf_counter() - started
    return seconds, (loaded, plan)


def measure_dtype(args: argparse.Namespace, dtype: str) -> list[dict]:
    dense = load_model(args.model, dtype=dtype)
    settings = get_method("fasp").make_settings(
        sparsity=args.sparsity, calib=args.calib, n_samples=args.n_samples, seqlen=args.seqlen
    )
    windows = calibration_data(dense, settings)  # also warms the on-disk token cache
    corpus_tokens(dense.tokenizer, "wikitext2")
    forwards = [forward_seconds(fresh_copy(dense), windows)]
    runs: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    last: dict[str, tuple] = {}
    for _ in range(args.repeats):
        for mode in ("before", "after"):
            seconds, last[mode] = timed_prune(dense, settings, mode)
            forwards.append(forward_seconds(fresh_copy(dense), windows))
            runs[mode].append((seconds, seconds / ((forwards[-2] + forwards[-1]) / 2)))
            print(json.dumps({"dtype": dtype, "mode": mode, "prune_s": seconds,
                              "forward_s": forwards[-1]}), flush=True)  # fmt: skip
    same_kept = last["before"][1].kept_channels == last["after"][1].kept_channels
    rows = []
    for mode in ("before", "after"):
        ratios = [ratio for _, ratio in runs[mode]]
        loaded = last[mode][0]
        rows.append(
            {
                "dtype": dense.dtype_name,
                "mode": mode,
                "prune_s": statistics.median(s for s, _ in runs[mode]),
                "forward_s": statistics.median(forwards),
                "ratio": statistics.median(ratios),
                "ratios": ratios,
                "ppl": perplexity(loaded, "wikitext2", 512, args.eval_windows).ppl,
                "same_kept_channels": same_kept,
            }
        )
    return rows


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        "# FASP's own cost: prune time / one forward, before and after (issue 13)",
        "",
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}. Model {meta['model']}, "
        f"FASP at sparsity {meta['sparsity']}, {meta['n_samples']}×{meta['seqlen']} "
        f"{meta['calib']} calibration windows; WikiText-2 ppl at seqlen 512 over "
        f"{meta['eval_label']}.",
        "",
        "| dtype | arithmetic | prune (s, median) | forward (s, median) | prune / forward "
        "| runs | WikiText-2 ppl | same kept channels |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs = ", ".join(f"{x:.2f}" for x in r["ratios"])
        lines.append(
            f"| {r['dtype']} | {r['mode']} | {r['prune_s']:.1f} | {r['forward_s']:.1f} "
            f"| **{r['ratio']:.2f}×** | {runs} | {r['ppl']:.3f} | {r['same_kept_channels']} |"
        )
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


NOTES = """\
*before*: Gram products in IEEE fp32, the restoration solved in fp64, the C4 sample tokenized by
every run (the arithmetic before issue 13). *after*: the defaults — Gram products of bf16 inputs
on the bf16 units with fp32 accumulation (exact products: H as precise as the IEEE product),
the restoration solved in fp32 where the damping bounds κ ≤ 10⁴ (fp64 otherwise), the tokenized
corpus read from `~/.cache/prunekit/tokens`. In fp32 only the solve and the token cache change.
Every `prune` includes the tokenization step, as a new process pays it.

Measured on a **shared machine** (2 cores, several other jobs running): absolute times vary by
2× or more from minute to minute, so each prune is divided by the mean of the two forwards timed
just before and after it in the same process (F B F A F …), and the table shows the median ratio
over the runs listed. Both arithmetics run in the same process, interleaved.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--calib", default="c4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-windows", type=int, default=None, help="default: full test set")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", default="docs/results/fasp_cost.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {
        "command": "python bench/fasp_cost.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model,
        "sparsity": args.sparsity,
        "n_samples": args.n_samples,
        "seqlen": args.seqlen,
        "calib": args.calib,
        "eval_label": "the full test set"
        if args.eval_windows is None
        else f"the first {args.eval_windows} windows",
    }
    rows: list[dict] = []
    out = Path(args.out)
    for dtype in args.dtypes:
        rows += measure_dtype(args, dtype)
        out.write_text(render(rows, meta))
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(render(rows, meta))


if __name__ == "__main__":
    main()
