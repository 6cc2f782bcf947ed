"""The model card (README.md) written with every export, in the hub's model-card convention.

A pushed directory without a README.md shows nothing about how the model was made, so every
export carries one: YAML front matter (``base_model``, ``library_name``, ``license``, ``tags``,
``pipeline_tag``), then how it was made, the numbers measured in the run, and how to load it.
Everything in it comes from the exported report.json (and plan.json for what was removed), so a
card can always be re-rendered from them; what the report does not hold is written as "not
measured", never guessed.

The base model's hub id and license are read only from what is on this machine: a hub id the user
typed (or the alias naming one), a hub-cache path, the base directory's own README front matter,
the cached README of a hub id, or a GGUF file's ``general.license``. Nothing found: the key is left
out of the front matter (a wrong license is worse than none).

A directory export gets ``README.md`` inside it. A single-file export (GGUF) gets ``README.md``
beside the file, since a GGUF repository on a hub shows its README.md as the card; an existing
README.md that prunekit did not write is never replaced: the card then goes to
``<file name>.README.md``.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from prunekit.plan import PruningPlan
from prunekit.report.markdown import _ppl_section, _zeroshot_section, table

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
# The first line after the front matter: tells a later export that this README is a card it may
# replace (a user's own README.md beside a GGUF file is never overwritten).
CARD_MARKER = "<!-- model card written by prunekit (prunekit.export.card) -->"
LICENSE_KEYS = ("license", "license_name", "license_link")
LIBRARY = {"hf": "transformers", "prunekit": "transformers", "gguf": "gguf"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_CACHE_DIR = re.compile(r"^models--([\w.-]+)--([\w.-]+)$")


@dataclass(frozen=True)
class BaseModelInfo:
    """What the card says about the base model: its hub id (``base_model``) and license keys
    from its own card, each only when found on this machine."""

    hub_id: str | None = None
    license: dict[str, str] = field(default_factory=dict)


# --- the base model -------------------------------------------------------------------------------


def base_model_info(spec: str | None, source: str | None = None) -> BaseModelInfo:
    """The base model's hub id and license, from ``spec`` (what the user typed) and ``source``
    (where it was loaded from: a directory or a hub id; see the module docstring)."""
    if not spec:
        return BaseModelInfo()
    from prunekit.models.loading import resolve_spec

    resolved = resolve_spec(spec)
    hub_id = _hub_id(spec, resolved, source)
    return BaseModelInfo(hub_id, _base_license(resolved, source, hub_id))


def _hub_id(spec: str, resolved: str, source: str | None) -> str | None:
    from prunekit.models.loading import SMOLLM2_HUB_ID

    if spec.lower() == "smollm2-135m":  # the alias is a GGUF of this hub model
        return SMOLLM2_HUB_ID
    if _HUB_ID.match(resolved) and not Path(resolved).exists():
        return resolved
    for candidate in (resolved, source):
        for part in Path(candidate or "").parts:
            found = _HUB_CACHE_DIR.match(part)
            if found:
                return f"{found.group(1)}/{found.group(2)}"
    return None


def _base_license(resolved: str, source: str | None, hub_id: str | None) -> dict[str, str]:
    """License keys from the first base README (or GGUF metadata) found on this machine."""
    if resolved.lower().endswith(".gguf"):
        return _gguf_license(Path(resolved))
    readmes = [Path(p) / CARD_FILE for p in (resolved, source) if p and Path(p).is_dir()]
    if hub_id:
        readmes.append(_cached_hub_readme(hub_id))
    for readme in readmes:
        if readme is not None and readme.is_file():
            meta = read_front_matter(readme.read_text(errors="replace"))
            found = {k: str(meta[k]) for k in LICENSE_KEYS if meta.get(k)}
            if found:
                return found
    return {}


def _cached_hub_readme(hub_id: str) -> Path | None:
    """The hub model's README.md if it is in the local cache (never downloaded here)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(hub_id, CARD_FILE)
    except Exception:  # not a valid repo id for huggingface_hub, no cache: no license
        return None
    return Path(path) if isinstance(path, str) else None


def _gguf_license(path: Path) -> dict[str, str]:
    try:
        value = gguf_metadata_string(path, "general.license")
    except (OSError, ValueError, struct.error):  # not a readable GGUF: no license, export goes on
        return {}
    return {"license": value} if value else {}


# GGUF metadata value types: fixed sizes (struct format), 8 = string, 9 = array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
_GGUF_SCALARS.update({10: "Q", 11: "q", 12: "d"})
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_metadata_string(path: Path, key: str) -> str | None:
    """One string from a GGUF file's metadata, reading the header only (the gguf package's
    reader maps every tensor first: seconds for a small model, the time of an export)."""
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _version, _tensors, entries = struct.unpack("<IQQ", handle.read(20))
        for _ in range(entries):
            name = _gguf_read_string(handle)
            kind = struct.unpack("<I", handle.read(4))[0]
            if name == key and kind == _GGUF_STRING:
                return _gguf_read_string(handle)
            _gguf_skip_value(handle, kind)
    return None


def _gguf_read_string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", handle.read(8))
    return handle.read(length).decode("utf-8", errors="replace")


def _gguf_skip_value(handle: BinaryIO, kind: int) -> None:
    if kind == _GGUF_STRING:
        (length,) = struct.unpack("<Q", handle.read(8))
        handle.seek(length, os.SEEK_CUR)
    elif kind == _GGUF_ARRAY:
        item, count_ = struct.unpack("<IQ", handle.read(12))
        if item in _GGUF_SCALARS:
            handle.seek(count_ * struct.calcsize("<" + _GGUF_SCALARS[item]), os.SEEK_CUR)
        else:
            for _ in range(count_):
                _gguf_skip_value(handle, item)
    elif kind in _GGUF_SCALARS:
        handle.seek(struct.calcsize("<" + _GGUF_SCALARS[kind]), os.SEEK_CUR)
    else:
        raise ValueError(f"unknown GGUF metadata type {kind}")


def read_front_matter(text: str) -> dict:
    """The YAML front matter of a markdown file ({} when it has none or it does not parse)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
        data = yaml.safe_load("\n".join(lines[1:end]))
    except (StopIteration, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


# --- the card -------------------------------------------------------------------------------------


def front_matter(report: dict, base: BaseModelInfo, fmt: str) -> dict[str, Any]:
    """The hub's metadata block; keys whose value is not known are left out."""
    method = report.get("method")
    data: dict[str, Any] = {}
    if base.hub_id:
        data["base_model"] = base.hub_id
    data["library_name"] = LIBRARY.get(fmt, "transformers")
    data.update(base.license)
    data["tags"] = ["pruned", "prunekit"] + ([method] if method else [])
    data["pipeline_tag"] = "text-generation"
    return data


def percent(ratio: float | None) -> str:
    return "–" if ratio is None else f"{100 * ratio:.2f} %"


def count(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _target(settings: dict) -> str:
    parts = [f"{k} {settings[k]}" for k in ("ratio", "blocks", "sparsity") if settings.get(k)]
    return ", ".join(parts) or "–"


def _layer_list(indices: list[int]) -> str:
    return ", ".join(str(i) for i in sorted(indices))


def removed_blocks_text(removed: list[str]) -> str:
    """Depth: "whole layers: 3, 7; attention of layers: 12; MLP of layers: 20" (original
    indices)."""
    kinds: dict[int, set[str]] = {}
    for block in removed:
        layer, _, kind = block.partition(".")
        kinds.setdefault(int(layer), set()).add(kind)
    whole = [i for i, k in kinds.items() if {"attn", "mlp"} <= k]
    attn = [i for i, k in kinds.items() if k == {"attn"}]
    mlp = [i for i, k in kinds.items() if k == {"mlp"}]
    parts = [f"whole layers: {_layer_list(whole)}"] if whole else []
    parts += [f"attention of layers: {_layer_list(attn)}"] if attn else []
    parts += [f"MLP of layers: {_layer_list(mlp)}"] if mlp else []
    return "; ".join(parts)


def _span(values: list[int]) -> str:
    """ "512" when all equal, else "min–max" (every number shown is one of the layers')."""
    if not values:
        return "–"
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}–{high}"


def widths_text(layers: list[dict]) -> str:
    """Width: what each layer kept, as spans over the exported layers."""
    attn = [entry for entry in layers if entry.get("has_attn")]
    mlp = [entry["intermediate_size"] for entry in layers if entry.get("has_mlp")]
    parts = [f"MLP width per layer {_span(mlp)}"] if mlp else []
    if attn:
        parts.append(
            "query heads per layer "
            + _span([e["num_attention_heads"] for e in attn])
            + ", key/value heads "
            + _span([e["num_key_value_heads"] for e in attn])
            + ", value head size "
            + _span([e["v_head_dim"] for e in attn])
            + f" (query/key head size {_span([e['head_dim'] for e in attn])})"
        )
    return "; ".join(parts)


def removed_text(report: dict, plan: PruningPlan | None) -> str:
    """One sentence saying what the pruning removed, from the plan and the exported shapes."""
    layers = report.get("export", {}).get("layers") or []
    base_layers = report.get("model", {}).get("num_hidden_layers")
    kept = f"{len(layers)} of {base_layers} layers remain" if layers and base_layers else ""
    removed = plan.all_removed_blocks() if plan is not None else []
    if removed:
        what = "Removed (original layer indices) " + removed_blocks_text(removed)
        if layers and report.get("family") == "combined":  # then narrowed the rest
            what += f"; what each remaining layer kept: {widths_text(layers)}"
        return f"{what}; {kept}." if kept else f"{what}."
    if layers and report.get("family") == "width":
        return f"No layer removed; what each layer kept: {widths_text(layers)}."
    return "What was removed is not recorded in report.json or plan.json."


def _base_text(model: dict) -> str:
    """The spec as typed, with what an alias stands for (its weights are not the hub model's)."""
    from prunekit.models.loading import ALIASES

    spec = model.get("spec", "–")
    alias = ALIASES.get(str(spec).lower())
    kind = f"{alias}; {model.get('model_type', '–')}" if alias else model.get("model_type", "–")
    return f"`{spec}` ({kind})"


def _made_rows(report: dict) -> list[list[str]]:
    settings = report.get("settings", {})
    model = report.get("model", {})
    export = report.get("export", {})
    versions = report.get("versions", {})
    calib = (
        f"{settings.get('calib')}, {settings.get('n_samples')} × {settings.get('seqlen')} "
        f"tokens, seed {settings.get('seed')}"
        if settings.get("calib")
        else "–"
    )
    weight_bytes = export.get("weight_bytes")
    rows = [
        ["method", f"{report.get('method', '–')} ({report.get('family', '–')} pruning)"],
        ["base model", _base_text(model)],
        ["target", _target(settings)],
        ["calibration", calib],
        [
            "pruned",
            "streamed, one layer at a time" if report.get("mode") == "streamed" else "in memory",
        ],
        ["format", f"{export.get('format', '–')}, {export.get('dtype', '–')}"],
    ]
    if weight_bytes is not None:
        rows.append(["weights", f"{weight_bytes / 2**20:.1f} MiB"])
    if versions:
        rows.append(["versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)])
    return rows


def _layers_details(layers: list[dict]) -> list[str]:
    """Every exported layer's shape, folded (the hub renders <details>)."""
    if not layers:
        return []
    rows = []
    for entry in layers:
        attn = (
            f"{entry['num_attention_heads']} / {entry['num_key_value_heads']} / "
            f"{entry['v_head_dim']}"
            if entry.get("has_attn")
            else "removed"
        )
        mlp = str(entry["intermediate_size"]) if entry.get("has_mlp") else "removed"
        rows.append([str(entry["layer"]), attn, mlp])
    header = ["layer", "attention: query heads / kv heads / value head size", "MLP width"]
    return [
        "<details><summary>Every layer of the exported model</summary>",
        "",
        *table(header, rows),
        "</details>",
        "",
    ]


def _made_section(report: dict, plan: PruningPlan | None) -> list[str]:
    family = report.get("family")
    how = {
        "depth": "removing whole attention and MLP blocks; the weights left are the base model's",
        "width": "removing channels (MLP neurons, attention heads or value channels) inside "
        "each layer; the layer reading the pruned channels may be rewritten to compensate",
        "combined": "in stages: removing whole attention and MLP blocks and removing channels "
        "inside the remaining layers, each stage on the model the stage before it left",
    }.get(family, "removing parameters")
    lines = [
        "## How it was made",
        "",
        f"Pruned without training by **{report.get('method', '?')}** in prunekit, {how}. "
        + removed_text(report, plan),
        "",
    ]
    if report.get("forced_model_mismatch"):
        lines += [
            "**Warning:** the plan was replayed with `--force` onto weights that are not the ones "
            "it was made for (`forced_model_mismatch` in report.json); the numbers below were "
            "measured on the plan's base model.",
            "",
        ]
    lines += table(["setting", "value"], _made_rows(report), "ll")
    return lines + _layers_details(report.get("export", {}).get("layers") or [])


def _params_section(params: dict) -> list[str]:
    if not params:
        return ["## Parameters", "", "Not measured.", ""]
    rows = [
        [
            "all (embeddings counted once)",
            count(params.get("before")),
            count(params.get("after")),
            percent(params.get("ratio_total")),
        ],
        [
            "decoder layers",
            count(params.get("decoder_before")),
            count(params.get("decoder_after")),
            percent(params.get("ratio_decoder")),
        ],
    ]
    return ["## Parameters", "", *table(["parameters", "base", "pruned", "removed"], rows)]


def _eval_sections(evals: dict) -> list[str]:
    ppl = _ppl_section(evals) or [
        "## Perplexity",
        "",
        "Not measured in this run (`prunekit prune ... --ppl wikitext2` measures the base and "
        "the pruned model in the same run).",
        "",
    ]
    zeroshot = _zeroshot_section(evals) or [
        "## Zero-shot accuracy",
        "",
        "Not measured in this run (`prunekit prune ... --tasks`).",
        "",
    ]
    return ppl + zeroshot


def _speed_section(report: dict) -> list[str]:
    speed = report.get("speed")
    if not speed:
        return [
            "## Speed",
            "",
            "Not measured in this run (`prunekit bench-speed DIR` measures prefill and decode "
            "against the base model on your hardware).",
            "",
        ]
    from prunekit.evaluation.speed import SPEED_COLUMNS, speed_rows

    rows = [list(row) for row in speed_rows(speed)]
    return ["## Speed", "", *table(list(SPEED_COLUMNS), rows, "ll" + "r" * 4 + "ll")]


def _usage_section(fmt: str, name: str) -> list[str]:
    if fmt == "gguf":
        return [
            "## How to run it",
            "",
            "With llama.cpp (a build that knows the `deci` architecture when the layers differ "
            "in shape):",
            "",
            "```sh",
            f'llama-cli -m {name} -p "The capital of France is" -n 32',
            f"llama-server -m {name} --port 8080",
            "```",
            "",
            "With ollama: a `Modelfile` holding the line below, then `ollama create pruned -f "
            "Modelfile` and `ollama run pruned`.",
            "",
            "```",
            f"FROM ./{name}",
            "```",
            "",
        ]
    remote = fmt == "prunekit"
    # AutoTokenizer reads config.json first, and its auto_map makes transformers ask "run the
    # custom code? [y/N]" unless trust_remote_code is given (5.0 through 5.24; no layout of the
    # directory avoids it, see tests/unit/test_export_compat.py): the card passes it to both.
    trust = ", trust_remote_code=True" if remote else ""
    load = f'model = AutoModelForCausalLM.from_pretrained("{name}"{trust})'
    load_tokenizer = f'tokenizer = AutoTokenizer.from_pretrained("{name}"{trust})'
    note = (
        "The layers differ in shape, so the directory carries its own modeling file: transformers "
        "loads it with `trust_remote_code=True` (the tokenizer too: without it, AutoTokenizer "
        "reads config.json and asks whether to run that file); `prunekit.load` loads it "
        "without running that file."
        if remote
        else "Every layer has the same shape, so this is the stock architecture: transformers "
        "loads it as it is, no remote code."
    )
    return [
        "## How to use it",
        "",
        note,
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        load_tokenizer,
        load,
        'inputs = tokenizer("The capital of France is", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))",
        "```",
        "",
        "```python",
        "import prunekit",
        "",
        f'loaded = prunekit.load("{name}")  # validates the directory, no remote code',
        "model, tokenizer = loaded.model, loaded.tokenizer",
        "```",
        "",
    ]


def _summary(report: dict) -> str:
    if "method" not in report:
        return (
            "A model pruned with prunekit, exported without its run's report: how it was made "
            "and its numbers are not recorded."
        )
    return (
        f"{percent(report.get('params', {}).get('ratio_total'))} of the parameters of "
        f"`{report.get('model', {}).get('spec', '?')}` removed without training, by prunekit's "
        f"{report['method']}. The numbers below are the ones measured in the pruning run "
        "(report.json beside this file holds them all; plan.json says exactly what was removed)."
    )


def render_model_card(
    report: dict,
    *,
    plan: PruningPlan | None = None,
    base: BaseModelInfo | None = None,
    fmt: str | None = None,
    name: str = "MODEL_DIR",
) -> str:
    """The card's markdown. ``fmt``: hf, prunekit or gguf (default: report's export.format);
    ``name``: what the usage examples load (the directory or file name, or a hub repo id)."""
    fmt = fmt or report.get("export", {}).get("format") or "hf"
    base = base or BaseModelInfo()
    model = report.get("model", {})
    meta = yaml.safe_dump(front_matter(report, base, fmt), sort_keys=False, allow_unicode=True)
    # The hub id, else the directory or file name: a local path says nothing on a hub page.
    base_name = base.hub_id or Path(model.get("spec") or "model").name
    title = f"{base_name} pruned by {report.get('method', 'prunekit')}"
    lines = [
        "---",
        meta.rstrip("\n"),
        "---",
        CARD_MARKER,
        "",
        f"# {title}",
        "",
        _summary(report),
        "",
        *_made_section(report, plan),
        *_params_section(report.get("params", {})),
        *_eval_sections(report.get("eval", {})),
        *_speed_section(report),
        *_usage_section(fmt, name),
    ]
    return "\n".join(lines)


def card_path(target: Path) -> Path:
    """Where the card of ``target`` goes (see the module docstring)."""
    if target.is_dir():
        return target / CARD_FILE
    beside = target.parent / CARD_FILE
    if beside.exists() and CARD_MARKER not in beside.read_text(errors="replace"):
        return target.parent / f"{target.name}.{CARD_FILE}"
    return beside


def write_model_card(
    target: str | Path,
    report: dict,
    plan: PruningPlan | None = None,
    *,
    base: BaseModelInfo | None = None,
    fmt: str | None = None,
    name: str | None = None,
) -> Path:
    """Write the card of the export ``target`` (a directory, or a single file such as a .gguf)
    and return its path. ``base`` defaults to what ``base_model_info`` finds for the report's
    model; ``fmt`` to the report's export.format; ``name`` (what the usage examples load) to
    ``target``'s name, pass the final name when ``target`` is a staging directory. The file is
    replaced atomically."""
    target = Path(target)
    model = report.get("model", {})
    base = base or base_model_info(model.get("spec"), model.get("source"))
    text = render_model_card(report, plan=plan, base=base, fmt=fmt, name=name or target.name)
    path = card_path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
