"""Metrics: Delta m% (the paper's balance measure) and re-exports of the per-task metrics.

Delta m% = (1/K) sum_k (-1)^{delta_k} (M_k - M0_k) / M0_k * 100, delta_k = 1 when higher is
better, so a method that beats the single-task baselines gets a negative value (lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .evaluate.extract import (
    exact_match,
    extract_label,
    extract_number,
    extract_option_letter,
    math_correct,
)
from .evaluate.rouge import rouge1, rouge1_by_task, rouge1_scores
from .evaluate.scoring import score_task

__all__ = [
    "delta_m",
    "average",
    "accuracy",
    "rouge1",
    "rouge1_scores",
    "rouge1_by_task",
    "score_task",
    "exact_match",
    "extract_label",
    "extract_number",
    "extract_option_letter",
    "math_correct",
]


def delta_m(
    scores: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: bool | Mapping[str, bool] = True,
) -> float:
    """Mean relative change against the single-task baselines, in percent (negative = better)."""
    if set(scores) != set(baseline):
        only_s = sorted(set(scores) - set(baseline))
        only_b = sorted(set(baseline) - set(scores))
        raise KeyError(
            f"task sets differ: only in scores {only_s}, only in baseline {only_b}"
        )
    if not scores:
        raise ValueError("no tasks to compare")
    if isinstance(higher_is_better, Mapping):
        missing = sorted(set(scores) - set(higher_is_better))
        if missing:
            raise KeyError(f"higher_is_better has no entry for task(s) {missing}")
    total = 0.0
    for task, m0 in baseline.items():
        m = scores[task]
        for name, v in (("score", m), ("baseline", m0)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"task {task!r}: {name} must be a finite number, got {v!r}")
        if m0 == 0:
            raise ZeroDivisionError(f"task {task!r}: baseline score is 0, relative change undefined")
        hib = higher_is_better[task] if isinstance(higher_is_better, Mapping) else higher_is_better
        sign = -1.0 if hib else 1.0
        total += sign * (m - m0) / m0 * 100.0
    return total / len(baseline)


def average(scores: Mapping[str, float]) -> float:
    """Plain mean over tasks (the tables' Avg. column)."""
    if not scores:
        raise ValueError("no scores to average")
    return sum(scores.values()) / len(scores)


def accuracy(correct: list[bool] | list[int]) -> float:
    """Share of correct items, in percent."""
    if not correct:
        raise ValueError("no items")
    return 100.0 * sum(bool(c) for c in correct) / len(correct)
