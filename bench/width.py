"""Width-pruning benchmark on SmolLM2-135M, in two modes.

``--ratios`` (docs/results/width.md): at ratio_total targets, FASP with the uniform allocation,
FASP on the MLP only, FASP with the cost allocation (``--allocation cost``), Wanda-sp and FLAP,
each evaluated on WikiText-2 and PTB (seqlen 512) — equal-ratio comparisons.

``--sparsities`` (docs/results/width_sparsity.md): FASP (with and without restoration),
Wanda-sp, FLAP, magnitude at column sparsities 10/20/30 %, and — for FASP, interleaved with its
runs on the same windows — the wall time of one plain calibration forward pass, so FASP's cost
is read against it on a machine whose load varies.

Tables are rewritten after every run (a partial table survives) and printed; hand-written notes
below the NOTES_MARKER of an existing page are kept.

    python bench/width.py --ratios 0.1 0.2 0.3 --eval-windows 32 --n-samples 16 --seqlen 512 \
        --dtype fp32
    python bench/width.py --sparsities 0.1 0.2 0.3 --eval-windows 32 --n-samples 16 \
        --seqlen 512 --dtype fp32 --repeats 3
    python bench/width.py --dtype bf16 --methods fasp --out docs/results/width_bf16.md
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch
from results_notes import NOTES_MARKER, kept_notes

from prunekit import load_model
from prunekit.evaluation.perplexity import perplexity
from prunekit.methods.catalogue import get_method
from prunekit.methods.settings import CalibrationSettings, MethodSettings
from prunekit.methods.width.common import calibration_data
from prunekit.models.loading import LoadedModel
from prunekit.report.accounting import parameter_counts, pruning_ratios

RUNS = (  # (label, method, restore, extra settings)
    ("FASP", "fasp", True, {}),
    ("FASP, no restoration", "fasp", False, {}),
    ("Wanda-sp", "wanda-sp", False, {}),
    ("FLAP", "flap", False, {}),
    ("magnitude", "magnitude", False, {}),
)
# SmolLM2 has 3 kv heads: at 10 % Wanda-sp keeps all of them (whole heads round to zero), so it
# prunes the MLP only and reaches a lower ratio. FASP on the MLP only is the equal-ratio match.
EXTRA_RUNS = {0.1: (("FASP, MLP only", "fasp", True, {"targets": ["mlp"]}),)}
# Equal-ratio rows: every method meets the same ratio_total target (FLAP by its global
# threshold, the others by the smallest uniform column ratio that reaches it, FASP allocated by
# per-group widths from its measured cost).
RATIO_RUNS = (
    ("FASP, uniform", "fasp", True, {}),
    ("FASP, MLP only", "fasp", True, {"targets": ["mlp"]}),
    ("FASP, allocated", "fasp", True, {"allocation": "cost"}),
    ("Wanda-sp", "wanda-sp", False, {}),
    ("FLAP", "flap", False, {}),
)


def method_settings(method: str, **values) -> MethodSettings:
    """``method``'s settings from the values its settings class has: one row's values serve
    every method (``restore`` is FASP's, the calibration not magnitude's)."""
    chosen = get_method(method)
    return chosen.make_settings({k: v for k, v in values.items() if k in chosen.accepts})


def fresh_copy(dense: LoadedModel) -> LoadedModel:
    return dataclasses.replace(dense, model=copy.deepcopy(dense.model))


@torch.inference_mode()
def calibration_forward_seconds(loaded: LoadedModel, windows: torch.Tensor) -> float:
    """One plain forward of the whole model over the calibration windows (batch 1, no cache),
    after one untimed window (kernel selection and allocator warm-up)."""
    loaded.model(input_ids=windows[:1].to(loaded.device), use_cache=False)
    started = time.perf_counter()
    for i in range(windows.shape[0]):
        loaded.model(input_ids=windows[i : i + 1].to(loaded.device), use_cache=False)
    return time.perf_counter() - started


def timed_against_forward(
    dense: LoadedModel,
    windows: torch.Tensor,
    method: str,
    settings: MethodSettings,
    repeats: int,
    row: dict,
) -> LoadedModel:
    """Prune ``repeats`` fresh copies, each between two timed calibration forwards
    (F P F P … F), and record the median of the per-run ratios prune / mean(neighbours).

    This VM's speed drifts ±10 % from minute to minute; one pair cannot tell 1.9× from 2.1×.
    Interleaving puts every pruning run next to its own baseline. Returns the last pruned copy.
    """
    forwards = [calibration_forward_seconds(fresh_copy(dense), windows)]
    prunes: list[float] = []
    for _ in range(repeats):
        loaded = fresh_copy(dense)
        started = time.perf_counter()
        get_method(method).prune(loaded, settings)
        prunes.append(time.perf_counter() - started)
        forwards.append(calibration_forward_seconds(fresh_copy(dense), windows))
    ratios = [p / ((a + b) / 2) for p, a, b in zip(prunes, forwards, forwards[1:], strict=False)]
    middle = sorted(range(repeats), key=lambda i: ratios[i])[repeats // 2]
    row["prune_runs_s"], row["calibration_forward_runs_s"] = prunes, forwards
    row["time_ratio_runs"] = ratios
    row["prune_s"] = prunes[middle]
    row["calibration_forward_s"] = (forwards[middle] + forwards[middle + 1]) / 2
    row["time_ratio"] = ratios[middle]
    return loaded


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Width pruning on SmolLM2-135M-Instruct",
        "",
        f"Calibration: {meta['n_samples']} × {meta['seqlen']} tokens of {meta['calib']} "
        f"(seed {meta['seed']}). WikiText-2 test perplexity at seqlen 512 over "
        f"{meta['eval_windows_label']}. dtype {meta['dtype']}, {meta['machine']}.",
        f"Dense perplexity: **{meta['dense_ppl']:.2f}**. Sparsity = column ratio of the prunable "
        "groups (FLAP: the same share of prunable parameters, spread by its global threshold).",
        "",
        "| sparsity | method | ratio_total | WikiText-2 ppl | prune time (s) "
        "| calib. forward (s) | time / forward | runs |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [
            f"{r['sparsity']:.0%}",
            r["label"],
            f"{r['ratio_total']:.3f}",
            f"{r['ppl']:.2f}",
            f"{r['prune_s']:.1f}",
        ]
        if "time_ratio" in r:
            runs = ", ".join(f"{x:.2f}" for x in r["time_ratio_runs"])
            cells += [f"{r['calibration_forward_s']:.1f}", f"{r['time_ratio']:.2f}×", runs]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "`calib. forward` is one plain forward of the full model (LM head included) over the same "
        "calibration windows (batch 1, after one untimed warm-up window). FASP rows are timed "
        f"{meta['repeats']} times, interleaved with forwards (F P F P … F, fresh model copies): "
        "each run's ratio is its time over the mean of the two forwards around it; `runs` lists "
        "them and the row shows the median run. Absolute times drift with the machine's load; "
        "the ratio is the comparable number. FASP's time is the whole `prune` call on already "
        "tokenized calibration text.",
        "",
    ]
    return "\n".join(lines)


def render_ratios(rows: list[dict], meta: dict) -> str:
    datasets = meta["datasets"]
    names = {"wikitext2": "WikiText-2", "ptb": "PTB", "c4": "C4"}
    dense = ", ".join(f"{names.get(d, d)} **{meta['dense_ppl'][d]:.2f}**" for d in datasets)
    lines = [
        f"# Width pruning on {meta['model']} at equal ratio_total",
        "",
        f"Calibration: {meta['n_samples']} × {meta['seqlen']} tokens of {meta['calib']} "
        f"(seed {meta['seed']}). Test perplexity at seqlen {meta['eval_seqlen']} over "
        f"{meta['eval_windows_label']} of each dataset. dtype {meta['dtype']}, "
        f"{meta['machine']}. Dense: {dense}.",
        "",
        f"Measured with `{meta['command']}`.",
        "",
        "| target | method | ratio_total | "
        + " | ".join(f"{names.get(d, d)} ppl" for d in datasets)
        + " | prune time (s) |",
        "|---:|---|---:|" + "---:|" * len(datasets) + "---:|",
    ]
    for r in sorted(rows, key=lambda x: x["target"]):  # stable: run order within a target
        best = {d: min(x["ppl"][d] for x in rows if x["target"] == r["target"]) for d in datasets}
        cells = [f"{r['target']:.2f}", r["label"], f"{r['ratio_total']:.4f}"]
        for d in datasets:
            value = f"{r['ppl'][d]:.2f}"
            cells.append(f"**{value}**" if r["ppl"][d] == best[d] else value)
        cells.append(f"{r['prune_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Bold: the lowest perplexity at that target. Prune time is one run's wall time (the "
        "machine is shared, so times are indicative; the sparsity bench measures speed).",
        "",
    ]
    return "\n".join(lines)


def run_ratios(args, dense: LoadedModel, base: dict, before) -> None:
    datasets = args.datasets
    dense_ppl = {d: perplexity(dense, d, args.eval_seqlen, args.eval_windows) for d in datasets}
    windows = next(iter(dense_ppl.values())).windows
    meta = {
        **base,
        "dtype": dense.dtype_name,
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "command": "python bench/width.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "datasets": datasets,
        "eval_seqlen": args.eval_seqlen,
        "dense_ppl": {d: r.ppl for d, r in dense_ppl.items()},
        "eval_windows_label": (
            "the full test set" if args.eval_windows is None else f"the first {windows} windows"
        ),
    }
    out = Path(args.out or "docs/results/width.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for ratio in args.ratios:
        for label, method, restore, extra in RATIO_RUNS:
            if args.methods is not None and method not in args.methods:
                continue
            settings = method_settings(method, ratio=ratio, restore=restore, **base, **extra)
            row: dict = {"target": ratio, "label": label, "method": method, "settings": extra}
            loaded = fresh_copy(dense)
            started = time.perf_counter()
            plan = get_method(method).prune(loaded, settings)
            row["prune_s"] = time.perf_counter() - started
            after = parameter_counts(loaded.model, loaded.adapter)
            row["ratio_total"] = pruning_ratios(before, after)["ratio_total"]
            row["widths"] = {
                k: [v["intermediate_size"], v["num_kv_heads"], v["v_head_dim"]]
                for k, v in plan.extra["shapes"].items()
            }
            row["ppl"] = {
                d: perplexity(loaded, d, args.eval_seqlen, args.eval_windows).ppl for d in datasets
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            text = render_ratios(rows, meta)
            notes = kept_notes(out)  # read before each write: notes added while it runs survive
            out.write_text(text + ("\n" + NOTES_MARKER + "\n\n" + notes if notes else ""))
            out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
            del loaded
    print(render_ratios(rows, meta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=None,
        help="equal-ratio mode: these ratio_total targets (docs/results/width.md)",
    )
    parser.add_argument("--eval-seqlen", type=int, default=512, help="--ratios: eval window")
    parser.add_argument(
        "--datasets", nargs="+", default=["wikitext2", "ptb"], help="--ratios: evaluation sets"
    )
    parser.add_argument("--eval-windows", type=int, default=None, help="default: full test set")
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=1024)
    parser.add_argument("--calib", default="c4")
    parser.add_argument(
        "--out",
        default=None,
        help="default: docs/results/width.md (--ratios), else width_sparsity.md",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed FASP runs per sparsity")
    parser.add_argument(
        "--methods", nargs="+", default=None, help="run only these methods (default: all)"
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.repeats % 2 == 0:
        parser.error("--repeats must be odd and positive (the table shows the median run)")

    dense = load_model(args.model, dtype=args.dtype)
    base = dict(calib=args.calib, n_samples=args.n_samples, seqlen=args.seqlen, seed=0)
    before = parameter_counts(dense.model, dense.adapter)
    if args.ratios is not None:
        run_ratios(args, dense, base, before)
        return
    windows = calibration_data(dense, CalibrationSettings(**base))
    dense_ppl = perplexity(dense, "wikitext2", 512, args.eval_windows)
    meta = {
        **base,
        "dtype": dense.dtype_name,
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "repeats": args.repeats,
        "command": "python bench/width.py " + " ".join(sys.argv[1:]),
        "dense_ppl": dense_ppl.ppl,
        "eval_windows_label": (
            f"the full test set ({dense_ppl.windows} windows)"
            if args.eval_windows is None
            else f"the first {dense_ppl.windows} windows"
        ),
    }
    rows: list[dict] = []
    out = Path(args.out or "docs/results/width_sparsity.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    for sparsity in args.sparsities:
        for label, method, restore, extra in (*RUNS, *EXTRA_RUNS.get(sparsity, ())):
            if args.methods is not None and method not in args.methods:
                continue
            settings = method_settings(method, sparsity=sparsity, restore=restore, **base, **extra)
            row: dict = {"sparsity": sparsity, "label": label, "method": method}
            if label == "FASP":
                loaded = timed_against_forward(dense, windows, method, settings, args.repeats, row)
            else:
                loaded = fresh_copy(dense)
                started = time.perf_counter()
                get_method(method).prune(loaded, settings)
                row["prune_s"] = time.perf_counter() - started
            after = parameter_counts(loaded.model, loaded.adapter)
            row["ratio_total"] = pruning_ratios(before, after)["ratio_total"]
            row["ppl"] = perplexity(loaded, "wikitext2", 512, args.eval_windows).ppl
            rows.append(row)
            print(json.dumps(row), flush=True)
            out.write_text(render(rows, meta))
            out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
            del loaded
    print(render(rows, meta))


if __name__ == "__main__":
    main()
