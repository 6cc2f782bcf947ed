"""Zero-shot evaluation through lm-eval on tiny random models, with tiny local task files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.errors import DataError, MissingExtraError, SettingsError
from prunekit.evaluation.tasks import (
    check_offline_files,
    known_tasks,
    materialise_task_yamls,
    offline_tasks_dir,
    resolve_tasks,
)

ARC_YAML = """task: arc_easy_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: __TASK_DATA_DIR__/arc_easy_test.jsonl
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
BOOLQ_YAML = """task: boolq_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: __TASK_DATA_DIR__/boolq_validation.jsonl
output_type: multiple_choice
validation_split: validation
doc_to_text: "{{passage}}\\nQuestion: {{question}}?\\nAnswer:"
doc_to_target: label
doc_to_choice: ["no", "yes"]
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A tasks/ folder in the shared-data layout with 4 ARC-style and 3 BoolQ-style items."""
    root = tmp_path_factory.mktemp("data") / "tasks"
    (root / "lm_eval").mkdir(parents=True)
    (root / "lm_eval" / "arc_easy_local.yaml").write_text(ARC_YAML)
    (root / "lm_eval" / "boolq_local.yaml").write_text(BOOLQ_YAML)
    arc = [
        {
            "id": f"q{i}",
            "question": q,
            "choices": {"text": choices, "label": ["A", "B", "C"]},
            "answerKey": "A",
        }
        for i, (q, choices) in enumerate(
            [
                ("What do plants need to grow?", ["light", "rocks", "noise"]),
                ("Which is a fruit?", ["apple", "chair", "cloud"]),
                ("What is frozen water?", ["ice", "steam", "sand"]),
                ("What do fish live in?", ["water", "trees", "fire"]),
            ]
        )
    ]
    boolq = [
        {"question": "is the sky blue", "passage": "The sky is blue on a clear day.", "label": 1},
        {"question": "is fire cold", "passage": "Fire is hot.", "label": 0},
        {"question": "do fish swim", "passage": "Fish swim in water.", "label": 1},
    ]
    (root / "arc_easy_test.jsonl").write_text("\n".join(json.dumps(r) for r in arc) + "\n")
    (root / "boolq_validation.jsonl").write_text("\n".join(json.dumps(r) for r in boolq) + "\n")
    return root


def test_task_names_resolve_and_unknown_lists_known():
    assert [s.local_task for s in resolve_tasks(["piqa", "ARC_EASY"])] == [
        "piqa_local",
        "arc_easy_local",
    ]
    with pytest.raises(SettingsError, match="known: piqa, winogrande, hellaswag"):
        resolve_tasks(["arc_eazy"])
    assert set(known_tasks()) >= {"piqa", "winogrande", "hellaswag", "boolq"}


def test_offline_dir_accepts_data_dir_or_tasks_dir(task_dir, monkeypatch):
    monkeypatch.delenv("PRUNEKIT_DATA_DIR", raising=False)
    assert offline_tasks_dir() is None  # online: lm-eval's hub tasks
    assert offline_tasks_dir(task_dir.parent) == task_dir.resolve()
    assert offline_tasks_dir(task_dir) == task_dir.resolve()
    monkeypatch.setenv("PRUNEKIT_DATA_DIR", str(task_dir.parent))
    assert offline_tasks_dir() == task_dir.resolve()


def test_missing_task_file_names_the_file(task_dir):
    with pytest.raises(DataError, match=r"piqa_validation\.jsonl not found"):
        check_offline_files(task_dir, resolve_tasks(["piqa"]))


def test_yamls_get_absolute_data_paths(task_dir, tmp_path):
    out = materialise_task_yamls(task_dir, tmp_path / "yamls")
    text = (out / "arc_easy_local.yaml").read_text()
    assert "__TASK_DATA_DIR__" not in text and f"{task_dir}/arc_easy_test.jsonl" in text


def test_zeroshot_on_tiny_model(tiny_llama, task_dir):
    pytest.importorskip("lm_eval")
    from prunekit.evaluation.zeroshot import zeroshot

    result = zeroshot(tiny_llama, ["arc_easy", "boolq"], batch_size=4, task_data=task_dir)
    arc, boolq = result.tasks["arc_easy"], result.tasks["boolq"]
    assert arc.samples == 4 and boolq.samples == 3
    assert 0.0 <= arc.acc <= 1.0 and arc.acc_norm is not None and arc.acc_stderr is not None
    assert boolq.acc_norm is None and boolq.average_metric == "acc"
    assert result.average == pytest.approx((arc.acc_norm + boolq.acc) / 2)
    data = result.to_dict()
    assert data["source"].startswith("local files") and data["lm_eval_version"]
    assert data["tasks"]["arc_easy"]["average_metric"] == "acc_norm"


def test_limit_is_applied_and_recorded(tiny_llama, task_dir):
    pytest.importorskip("lm_eval")
    from prunekit.evaluation.zeroshot import zeroshot

    result = zeroshot(tiny_llama, ["arc_easy"], limit=2, batch_size=4, task_data=task_dir)
    assert result.tasks["arc_easy"].samples == 2 and result.limit == 2


def test_missing_lm_eval_names_the_extra(tiny_llama, monkeypatch):
    from prunekit.evaluation import zeroshot as module

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` fail
    with pytest.raises(MissingExtraError, match=r"prunekit\[eval\]"):
        module.zeroshot(tiny_llama, ["arc_easy"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tasks", "arc_eazy"], "unknown task 'arc_eazy'; known: piqa"),
        (["--tasks", "piqa", "--task-data", "TASKS"], "piqa_validation.jsonl not found"),
    ],
)
def test_cli_task_errors_are_one_line(task_dir, extra, message):
    args = [task_dir.as_posix() if a == "TASKS" else a for a in extra]
    result = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", "eval", "smollm2-135m", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_chance_and_majority_baselines_are_recorded(tiny_llama, task_dir):
    """ARC items all answer A (of 3 choices); BoolQ labels are yes, no, yes."""
    pytest.importorskip("lm_eval")
    from prunekit.evaluation.zeroshot import zeroshot

    result = zeroshot(tiny_llama, ["arc_easy", "boolq"], batch_size=4, task_data=task_dir)
    arc, boolq = result.tasks["arc_easy"], result.tasks["boolq"]
    assert arc.chance == pytest.approx(1 / 3) and arc.majority == pytest.approx(1.0)
    assert boolq.chance == pytest.approx(0.5) and boolq.majority == pytest.approx(2 / 3)
    limited = zeroshot(tiny_llama, ["boolq"], limit=2, batch_size=4, task_data=task_dir)
    assert limited.tasks["boolq"].majority == pytest.approx(0.5)  # yes, no
    assert result.to_dict()["tasks"]["boolq"]["majority"] == pytest.approx(2 / 3)


def test_task_baselines_without_a_model(task_dir):
    pytest.importorskip("lm_eval")
    from prunekit.evaluation.zeroshot import task_baselines

    baselines = task_baselines(["boolq", "arc_easy"], task_data=task_dir)
    assert baselines["boolq"].majority == pytest.approx(2 / 3)
    assert baselines["arc_easy"].chance == pytest.approx(1 / 3)
