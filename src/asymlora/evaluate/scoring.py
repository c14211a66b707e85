"""Scoring predictions per task: accuracy (commonsense / math / AQuA / exact) or ROUGE-1.

Scores are in percent, as in the paper's tables. Predictions are joined to examples by id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..data.records import Example
from .extract import (
    COMMONSENSE_LABELS,
    commonsense_labels,
    exact_match,
    extract_label,
    extract_option_letter,
    math_correct,
)
from .rouge import rouge1

__all__ = [
    "TASK_KINDS",
    "MATH_TASKS",
    "infer_task_kind",
    "gold_of",
    "score_predictions_list",
    "score_task",
    "score_examples",
]

TASK_KINDS = ("commonsense", "math", "aqua", "exact", "rouge1")
MATH_TASKS = frozenset({"gsm8k", "addsub", "singleeq", "mawps", "multiarith", "svamp", "singleop"})


def infer_task_kind(task: str) -> str:
    """The metric of a task from its name: LLM-Adapters sets by name, everything else ROUGE-1."""
    key = task.strip().lower()
    if key in COMMONSENSE_LABELS:
        return "commonsense"
    if key == "aqua":
        return "aqua"
    if key in MATH_TASKS:
        return "math"
    return "rouge1"


def _check_kind(kind: str) -> None:
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; use one of {TASK_KINDS}")


def gold_of(example: Example, kind: str) -> str:
    """The reference an example is scored against: `answer` for accuracy, `output` for ROUGE."""
    _check_kind(kind)
    if kind == "rouge1":
        return example.output
    if kind == "exact" and example.answer is None:
        return example.output
    if example.answer is None:
        raise ValueError(f"example {example.id!r}: task kind {kind!r} needs a gold 'answer'")
    return example.answer


def score_predictions_list(
    task_kind: str,
    preds: Sequence[str],
    golds: Sequence[str],
    task: str | None = None,
    labels: Sequence[str] | None = None,
) -> list[float]:
    """Per-example scores in percent (accuracy items are 0 or 100).

    For commonsense the label words come from `labels`, else from the dataset name `task`, else
    from the distinct gold labels.
    """
    _check_kind(task_kind)
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")
    if task_kind == "commonsense":
        words = tuple(labels) if labels else commonsense_labels(task or "", golds)
        return [100.0 * (extract_label(p, words) == g.strip()) for p, g in zip(preds, golds)]
    if task_kind == "math":
        return [100.0 * math_correct(p, g) for p, g in zip(preds, golds)]
    if task_kind == "aqua":
        return [100.0 * (extract_option_letter(p) == g.strip()) for p, g in zip(preds, golds)]
    if task_kind == "exact":
        return [100.0 * exact_match(p, g) for p, g in zip(preds, golds)]
    return [rouge1(p, g) for p, g in zip(preds, golds)]


def score_task(
    task_kind: str,
    preds: Sequence[str],
    golds: Sequence[str],
    task: str | None = None,
    labels: Sequence[str] | None = None,
) -> float:
    """Mean score of one task in percent (accuracy or ROUGE-1 F x 100)."""
    if not preds:
        raise ValueError("no predictions to score")
    scores = score_predictions_list(task_kind, preds, golds, task, labels)
    return sum(scores) / len(scores)


KindSpec = str | Mapping[str, str] | Callable[[str], str] | None


def _kind_for(kinds: KindSpec, task: str) -> str:
    if kinds is None:
        return infer_task_kind(task)
    if isinstance(kinds, str):
        return kinds
    if isinstance(kinds, Mapping):
        if task not in kinds:
            raise KeyError(f"no task kind given for task {task!r}; have {sorted(kinds)}")
        return kinds[task]
    return kinds(task)


def score_examples(
    examples: Sequence[Example],
    predictions: Mapping[str, str],
    kinds: KindSpec = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score predictions (id -> text) against examples; per-task means and one record per example.

    `kinds` is one kind for all tasks, a task -> kind mapping, a function, or None (by name, see
    `infer_task_kind`). Every example needs a prediction and every prediction an example.
    """
    ids = {ex.id for ex in examples}
    if len(ids) != len(examples):
        raise ValueError("duplicate example ids; predictions are joined by id")
    missing = [ex.id for ex in examples if ex.id not in predictions]
    if missing:
        raise KeyError(f"no prediction for {len(missing)} example(s), e.g. {missing[:3]}")
    extra = [i for i in predictions if i not in ids]
    if extra:
        raise KeyError(f"{len(extra)} prediction(s) for unknown example ids, e.g. {extra[:3]}")
    by_task: dict[str, list[Example]] = {}
    for ex in examples:
        by_task.setdefault(ex.task, []).append(ex)
    per_task: dict[str, float] = {}
    scored: dict[str, dict[str, Any]] = {}
    for task, exs in by_task.items():
        kind = _kind_for(kinds, task)
        _check_kind(kind)
        golds = [gold_of(ex, kind) for ex in exs]
        preds = [predictions[ex.id] for ex in exs]
        scores = score_predictions_list(kind, preds, golds, task=task)
        per_task[task] = sum(scores) / len(scores)
        for ex, p, g, s in zip(exs, preds, golds, scores):
            scored[ex.id] = {
                "id": ex.id,
                "task": task,
                "kind": kind,
                "prediction": p,
                "gold": g,
                "score": s,
            }
    records = [scored[ex.id] for ex in examples]
    return per_task, records
