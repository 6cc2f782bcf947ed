"""What a model scores without reading the question: each task's chance and majority baselines.

A pruned model that drifts toward one answer can beat the dense model for no good reason: BoolQ's
validation set is 62 % "yes", so a model that always says yes scores 62 %, above SmolLM2-135M's
own 40 %. Reports print these baselines beside the accuracies so that such a gain is visible.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AnswerBaselines:
    chance: float  # mean over items of 1 / (number of choices): guessing at random
    majority: float  # share of the most frequent gold answer position: always answering it

    def to_dict(self) -> dict:
        return asdict(self)


def answer_baselines(task: Any, limit: int | None) -> AnswerBaselines | None:
    """Baselines of an lm-eval multiple-choice ``task`` over the items an evaluation with
    ``limit`` reads (its first ``limit`` documents); None for other task kinds."""
    if getattr(task, "OUTPUT_TYPE", None) != "multiple_choice":
        return None
    golds: Counter[int] = Counter()
    chance = 0.0
    for doc in itertools.islice(task.eval_docs, limit):
        choices = task.doc_to_choice(doc)
        gold = gold_index(task, doc, choices)
        if gold is None:
            return None
        golds[gold] += 1
        chance += 1.0 / len(choices)
    count = sum(golds.values())
    if count == 0:
        return None
    return AnswerBaselines(chance=chance / count, majority=max(golds.values()) / count)


def gold_index(task: Any, doc: dict, choices: list[str]) -> int | None:
    """The gold choice's position, read the way lm-eval scores multiple choice: from the
    target, or from the text for tasks whose contexts differ per choice (WinoGrande)."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else int(gold) if gold.isdigit() else None
    if isinstance(gold, int) and 0 <= gold < len(choices):
        return gold
    return None  # several gold answers or an unreadable label: no single majority
