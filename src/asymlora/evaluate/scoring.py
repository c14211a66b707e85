"""Scoring predictions per task: accuracy (commonsense labels / math numbers / option letters /
exact) or ROUGE-1, the metric following each task's data unless the user names one.

Scores are in percent, as in the paper's tables. Predictions are joined to examples by id.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..data.records import Example
from .extract import (
    COMMONSENSE_LABELS,
    LABEL_WORDS,
    commonsense_labels,
    exact_match,
    extract_label,
    extract_number,
    extract_option_letter,
    gold_option_letter,
    is_number,
    math_correct,
)
from .rouge import rouge1

__all__ = [
    "TASK_KINDS",
    "METRIC_NAMES",
    "MAX_NEW_TOKENS",
    "MATH_TASKS",
    "normalize_kind",
    "infer_task_kind",
    "resolve_kinds",
    "check_kind",
    "gold_of",
    "score_predictions_list",
    "score_task",
    "score_examples",
]

TASK_KINDS = ("commonsense", "math", "aqua", "exact", "rouge1")
_ALIASES = {"option": "aqua", "label": "commonsense", "rouge": "rouge1", "rouge-1": "rouge1"}
# What each kind is, for tables and scores.json.
METRIC_NAMES = {
    "commonsense": "label accuracy",
    "math": "math accuracy",
    "aqua": "option-letter accuracy",
    "exact": "exact match",
    "rouge1": "ROUGE-1",
}
# New tokens generated per kind: math rationales need room before their final number
# (LLM-Adapters generates 256); labels, letters and short references do not.
MAX_NEW_TOKENS = {"commonsense": 32, "math": 256, "aqua": 256, "exact": 32, "rouge1": 32}
MATH_TASKS = frozenset({"gsm8k", "addsub", "singleeq", "mawps", "multiarith", "svamp", "singleop"})


def normalize_kind(kind: str) -> str:
    """A metric name as given by a user ("option", "rouge", ...) as one of TASK_KINDS."""
    k = _ALIASES.get(kind.strip().lower(), kind.strip().lower())
    if k not in TASK_KINDS:
        raise ValueError(f"unknown metric {kind!r}; use one of {TASK_KINDS} (or option, label, rouge)")
    return k


def _gold_kind(example: Example) -> str | None:
    """The accuracy metric one record's gold supports, or None (free text: ROUGE-1)."""
    if example.answer is not None:
        answer = example.answer.strip()
        if re.fullmatch(r"\(?[A-Ea-e]\)?", answer):
            return "aqua"
        if is_number(answer):
            return "math"
        return "commonsense" if answer in LABEL_WORDS else None
    output = example.output.strip()
    if gold_option_letter(output) is not None:
        return "aqua"
    if output and is_number(output):
        return "math"
    m = re.fullmatch(r"(?:the correct answer is\s+)?(\w+)\.?", output)
    return "commonsense" if m and m.group(1) in LABEL_WORDS else None


def infer_task_kind(task: str, examples: Sequence[Example] | None = None) -> str:
    """The metric of a task, from its data: every gold an option letter (`answer`, or an output such
    as "The answer is: C. ...") -> option-letter accuracy; every gold a number -> math accuracy;
    every gold a commonsense label word -> label accuracy; otherwise ROUGE-1.

    Without examples the task's name decides (LLM-Adapters' names, everything else ROUGE-1).
    """
    if examples is None:
        key = task.strip().lower()
        if key in COMMONSENSE_LABELS:
            return "commonsense"
        if key == "aqua":
            return "aqua"
        return "math" if key in MATH_TASKS else "rouge1"
    found = {_gold_kind(ex) for ex in examples}
    return found.pop() if len(found) == 1 and None not in found else "rouge1"


def _check_kind(kind: str) -> None:
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; use one of {TASK_KINDS}")


def gold_of(example: Example, kind: str) -> str:
    """The reference an example is scored against; a ValueError naming the record if it has none.

    Accuracy reads `answer` (or, without one, the gold `output`: "The answer is: C. ...", "42");
    ROUGE-1 reads `output` (or `answer` where the output is empty).
    """
    _check_kind(kind)
    where = f"task {example.task!r}, record {example.id!r}"
    if kind in ("rouge1", "exact"):
        gold = example.output if example.output.strip() or example.answer is None else example.answer
        if not gold.strip():
            raise ValueError(f"{where}: metric {kind} needs a reference text; the output is empty and there is "
                             "no answer")
        return gold
    text = example.answer if example.answer is not None else example.output
    field = "answer" if example.answer is not None else "output (there is no answer field)"
    if kind == "math":
        if not is_number(text):
            raise ValueError(f"{where}: metric math needs a number as gold {field}, got {text!r}")
        return text
    if kind == "aqua":
        letter = gold_option_letter(text)
        if letter is None:
            raise ValueError(f"{where}: metric aqua (option letter) needs an option letter A-E as gold {field}, "
                             f"got {text[:60]!r}")
        return letter
    if example.answer is None:  # commonsense training records: "the correct answer is true"
        label = extract_label(text, sorted(LABEL_WORDS))
        if label is None:
            raise ValueError(f"{where}: metric commonsense needs a gold label word as {field}, got {text[:60]!r}")
        return label
    return text


def check_kind(task: str, kind: str, examples: Sequence[Example]) -> list[str]:
    """Every gold of a task under `kind` (before any generation), or a ValueError naming the
    task, the record and the missing field."""
    _check_kind(kind)
    return [gold_of(ex, kind) for ex in examples]


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
        return [100.0 * (extract_option_letter(p) == g.strip().upper()) for p, g in zip(preds, golds)]
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


def resolve_kinds(examples: Sequence[Example], kinds: KindSpec = None) -> dict[str, str]:
    """Each task's metric, checked against its data before anything is generated.

    `kinds` is one kind for all tasks, a task -> kind mapping (tasks it leaves out follow their
    data), a function, or None (every task follows its data, see `infer_task_kind`).
    """
    by_task: dict[str, list[Example]] = {}
    for ex in examples:
        by_task.setdefault(ex.task, []).append(ex)
    out = {}
    for task, exs in by_task.items():
        if kinds is None or (isinstance(kinds, Mapping) and task not in kinds):
            kind = infer_task_kind(task, exs)
        elif isinstance(kinds, str):
            kind = normalize_kind(kinds)
        elif isinstance(kinds, Mapping):
            kind = normalize_kind(kinds[task])
        else:
            kind = normalize_kind(kinds(task))
        check_kind(task, kind, exs)
        out[task] = kind
    return out


def score_examples(
    examples: Sequence[Example],
    predictions: Mapping[str, str],
    kinds: KindSpec = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score predictions (id -> text) against examples; per-task means and one record per example.

    `kinds` as in `resolve_kinds`. Every example needs a prediction and every prediction an
    example. Each record keeps the answer extracted from the prediction beside its text.
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
    resolved = resolve_kinds(examples, kinds)
    by_task: dict[str, list[Example]] = {}
    for ex in examples:
        by_task.setdefault(ex.task, []).append(ex)
    per_task: dict[str, float] = {}
    scored: dict[str, dict[str, Any]] = {}
    for task, exs in by_task.items():
        kind = resolved[task]
        golds = [gold_of(ex, kind) for ex in exs]
        preds = [predictions[ex.id] for ex in exs]
        labels = commonsense_labels(task, golds) if kind == "commonsense" else None
        scores = score_predictions_list(kind, preds, golds, task=task, labels=labels)
        per_task[task] = sum(scores) / len(scores)
        for ex, p, g, s in zip(exs, preds, golds, scores):
            scored[ex.id] = {
                "id": ex.id,
                "task": task,
                "kind": kind,
                "prediction": p,
                "extracted": extracted_answer(kind, p, labels),
                "gold": g,
                "score": s,
            }
    records = [scored[ex.id] for ex in examples]
    return per_task, records


def extracted_answer(kind: str, prediction: str, labels: Sequence[str] | None = None) -> str | float | None:
    """What the metric read from a prediction (label, number, letter); None where nothing was
    found, and for ROUGE-1 (it scores the whole text)."""
    if kind == "commonsense":
        return extract_label(prediction, labels or sorted(LABEL_WORDS))
    if kind == "math":
        return extract_number(prediction)
    if kind == "aqua":
        return extract_option_letter(prediction)
    if kind == "exact":
        lines = [ln.strip() for ln in prediction.strip().splitlines() if ln.strip()]
        return lines[0] if lines else None
    return None
