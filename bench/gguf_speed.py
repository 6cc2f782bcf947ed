"""Is a pruned model faster in llama.cpp? SmolLM2-135M dense vs pruned GGUFs, bf16 and q8_0.

    PRUNEKIT_DATA_DIR=../shared/data python bench/gguf_speed.py [--runs 5] [--depth-run DIR] ...

Prunes SmolLM2-135M to ~20 % ratio_total with FASP and FASP --multiple-of 64, and replays the
BlockPruner (ppl-per-param) result of docs/results/depth.md (ratio_total 0.2171; its search takes
10+ minutes; --depth-run/--width-run/--m64-run replay run directories instead), exports dense
and pruned models to GGUF in bf16 and q8_0, loads
them all into llama.cpp (llama-cpp-python, 2 threads) in one process and times them interleaved
run by run: prefill (one batch of --prefill tokens) and decode (--new-tokens tokens one at a
time after a 32-token prompt, through the KV cache). Medians over --runs after one warm-up.
Writes docs/results/gguf_speed.json and the section between GGUF_START/GGUF_END at the end of
docs/results/speed.md (below speed.py's notes marker, so bench/speed.py keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prunekit.api import prune
from prunekit.data import corpus_tokens
from prunekit.export.from_run import read_run
from prunekit.export.gguf import export_gguf
from prunekit.models.loading import count_parameters, load_model
from prunekit.plan import PruningPlan
from prunekit.surgery import apply_plan

ROOT = Path(__file__).resolve().parents[1]
GGUF_START = "<!-- gguf-speed:start (bench/gguf_speed.py rewrites this section) -->"
GGUF_END = "<!-- gguf-speed:end -->"
TYPES = ("bf16", "q8_0")
# BlockPruner (ppl-per-param) at ratio_total 0.2: the removed blocks of docs/results/depth.md.
DEPTH_BLOCKS = (
    "6.attn,7.attn,5.attn,29.attn,26.attn,17.mlp,18.attn,27.mlp,18.mlp,19.attn,16.mlp,17.attn,"
    "5.mlp,4.mlp,13.mlp,14.attn,14.mlp"
)
VARIANTS = [
    ("blockpruner", "blockpruner", {}),
    ("fasp", "fasp", {}),
    ("fasp-m64", "fasp", {"multiple_of": 64}),
]


def pruned_model(name: str, method: str, extra: dict, run_dir: Path | None, args) -> tuple:
    """(loaded pruned model, what it is) from a given run directory or a fresh prune."""
    if run_dir is not None:
        plan, report = read_run(run_dir)
        loaded = load_model("smollm2-135m", dtype="fp32", device="cpu")
        apply_plan(loaded, plan, run_dir)
        return loaded, {"run": run_dir.name, "ratio_total": report["params"]["ratio_total"]}
    loaded = load_model("smollm2-135m", dtype="fp32", device="cpu")
    if method == "blockpruner":
        before = count_parameters(loaded.model)
        blocks = args.depth_blocks.split(",")
        apply_plan(loaded, PruningPlan(method, loaded.identity(), removed_blocks=blocks))
        ratio = 1 - count_parameters(loaded.model) / before
        return loaded, {
            "settings": {"removed_blocks": "docs/results/depth.md"},
            "ratio_total": ratio,
        }
    started = time.perf_counter()
    result = prune(
        loaded,
        method,
        ratio=args.ratio,
        calib="c4",
        n_samples=args.n_samples,
        seqlen=args.seqlen,
        seed=0,
        **extra,
    )
    return result.loaded, {
        "settings": extra,
        "ratio_total": result.report["params"]["ratio_total"],
        "prune_seconds": round(time.perf_counter() - started, 1),
    }


def open_llama(path: Path, n_ctx: int):
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=2, verbose=False
    )


def time_prefill(llm, ids: list[int]) -> float:
    llm.reset()
    started = time.perf_counter()
    llm.eval(ids)
    return time.perf_counter() - started


def time_decode(llm, prompt: list[int], new_tokens: int) -> float:
    """Seconds for ``new_tokens`` greedy steps (the prompt's prefill is not counted)."""
    llm.reset()
    llm.eval(prompt)
    started = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return time.perf_counter() - started


def measure(models: dict, ids: list[int], args) -> dict:
    """Interleaved: every run times every model once; medians per model and phase."""
    prompt = ids[:32]
    times = {name: {"prefill": [], "decode": []} for name in models}
    for run in range(args.runs + 1):  # run 0 is the warm-up
        for name, llm in models.items():
            prefill = time_prefill(llm, ids)
            decode = time_decode(llm, prompt, args.new_tokens)
            if run:
                times[name]["prefill"].append(prefill)
                times[name]["decode"].append(decode)
    return {
        name: {
            "prefill_tok_s": len(ids) / statistics.median(t["prefill"]),
            "decode_tok_s": args.new_tokens / statistics.median(t["decode"]),
        }
        for name, t in times.items()
    }


def markdown(report: dict) -> str:
    lines = [
        GGUF_START,
        "",
        "## llama.cpp (GGUF export): dense vs pruned SmolLM2-135M",
        "",
        f"Generated by `python bench/gguf_speed.py {report['command']}` on a **shared machine** "
        f"(2 cores, several jobs at once; load average {report['load_average_start']} at start), "
        f"llama-cpp-python {report['llama_cpp_python']} (generic AVX2 build), 2 threads. Prefill: "
        f"one batch of {report['prefill_tokens']} WikiText-2 tokens; decode: "
        f"{report['new_tokens']} greedy tokens after a 32-token prompt. Median of "
        f"{report['runs']} runs after a warm-up, every model timed in each run (interleaved, "
        "one process). Speed-up is against the dense GGUF of the same type.",
        "",
        "| model | arch | ratio_total | type | file MB | prefill tok/s | speed-up | "
        "decode tok/s | speed-up |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {row['arch']} | {row['ratio_total']:.4f} | {row['type']} | "
            f"{row['file_mb']:.1f} | {row['prefill_tok_s']:.1f} | {row['prefill_speedup']:.2f}x | "
            f"{row['decode_tok_s']:.1f} | {row['decode_speedup']:.2f}x |"
        )
    lines += ["", GGUF_END, ""]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the GGUF section of speed.md (or append it at the end)."""
    text = path.read_text() if path.exists() else ""
    if GGUF_START in text:
        head, rest = text.split(GGUF_START, 1)
        tail = rest.split(GGUF_END, 1)[1].lstrip("\n") if GGUF_END in rest else ""
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--n-samples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--depth-blocks", default=DEPTH_BLOCKS, help="BlockPruner blocks to remove."
    )
    parser.add_argument("--depth-run", type=Path, help="BlockPruner run directory to replay.")
    parser.add_argument("--width-run", type=Path, help="FASP run directory to replay.")
    parser.add_argument("--m64-run", type=Path, help="FASP --multiple-of 64 run to replay.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = parser.parse_args()
    import llama_cpp

    torch.manual_seed(0)
    load_start = f"{os.getloadavg()[0]:.1f}"
    runs = {"blockpruner": args.depth_run, "fasp": args.width_run, "fasp-m64": args.m64_run}
    work = Path(tempfile.mkdtemp(prefix="gguf-speed-"))
    dense = load_model("smollm2-135m", dtype="fp32", device="cpu")
    ids = corpus_tokens(dense.tokenizer, "wikitext2")[: args.prefill].tolist()
    sources = {"dense": (dense, {"ratio_total": 0.0})}
    for name, method, extra in VARIANTS:
        sources[name] = pruned_model(name, method, extra, runs[name], args)
    files, meta = {}, {}
    for name, (loaded, info) in sources.items():
        for gguf_type in TYPES:
            result = export_gguf(loaded, work / f"{name}-{gguf_type}.gguf", gguf_type=gguf_type)
            files[(name, gguf_type)] = result.path
            meta[(name, gguf_type)] = {
                **info,
                "arch": result.arch,
                "file_mb": result.file_bytes / 1e6,
            }
    del sources, dense
    models = {key: open_llama(path, args.prefill) for key, path in files.items()}
    started = time.perf_counter()
    speeds = measure(models, ids, args)
    rows = []
    for (name, gguf_type), speed in speeds.items():
        base = speeds[("dense", gguf_type)]
        rows.append(
            {
                "model": name,
                "type": gguf_type,
                **meta[(name, gguf_type)],
                **speed,
                "prefill_speedup": speed["prefill_tok_s"] / base["prefill_tok_s"],
                "decode_speedup": speed["decode_tok_s"] / base["decode_tok_s"],
            }
        )
    rows.sort(key=lambda r: (TYPES.index(r["type"]), r["model"] != "dense"))
    for llm in models.values():
        llm.close()
    report = {
        "command": " ".join(os.sys.argv[1:]),
        "load_average_start": load_start,
        "llama_cpp_python": llama_cpp.__version__,
        "prefill_tokens": len(ids),
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "measure_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gguf_speed.json").write_text(json.dumps(report, indent=2, default=str))
    section = markdown(report)
    write_section(args.out / "speed.md", section)
    print(section)


if __name__ == "__main__":
    main()
