"""Metrics: Delta m% (the paper's balance measure) and re-exports of the per-task metrics.

Delta m% = (1/K) sum_k (-1)^{delta_k} (M_k - M0_k) / M0_k * 100, delta_k = 1 when higher is
better, so a method that beats the single-task baselines gets a negative value (lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

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
    "bootstrap_ci",
    "paired_differences",
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


def bootstrap_ci(
    per_task: Mapping[str, Sequence[float]],
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap confidence intervals of each task's mean and of the task average.

    The test records of each task are resampled with replacement (scipy.stats.bootstrap), the
    tasks independently for the average: the noise of a table built from those records. Seeded,
    so a table is reproducible. A task with fewer than two records has no interval (None).
    Returns {"per_task": {task: [lo, hi] | None}, "average": [lo, hi] | None}.
    """
    import numpy as np
    from scipy.stats import bootstrap

    if not per_task:
        raise ValueError("no tasks to bootstrap")
    arrays = {t: np.asarray(v, dtype=float) for t, v in per_task.items()}
    empty = [t for t, a in arrays.items() if a.size == 0]
    if empty:
        raise ValueError(f"no scores for task(s) {empty}")

    def interval(samples: tuple, statistic: Any) -> list[float] | None:
        if any(a.size < 2 for a in samples):
            return None
        if all(np.all(a == a[0]) for a in samples):  # no spread: the interval is the point
            point = float(statistic(*samples, axis=-1))
            return [point, point]
        res = bootstrap(samples, statistic, n_resamples=n_resamples, confidence_level=confidence,
                        method="percentile", vectorized=True, paired=False, random_state=seed)
        return [float(res.confidence_interval.low), float(res.confidence_interval.high)]

    def mean_of_means(*xs: Any, axis: int = -1) -> Any:
        return np.mean([x.mean(axis=axis) for x in xs], axis=0)

    return {
        "per_task": {t: interval((a,), np.mean) for t, a in arrays.items()},
        "average": interval(tuple(arrays.values()), mean_of_means),
    }


def paired_differences(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]]) -> dict[str, list[float]]:
    """Per task, score(a) - score(b) of each test record both rows scored (task -> id -> score):
    bootstrapping these gives the noise of a difference between two rows on the same records."""
    if set(a) != set(b):
        raise KeyError(f"task sets differ: {sorted(a)} vs {sorted(b)}")
    out = {}
    for task in a:
        ids = [i for i in a[task] if i in b[task]]
        if len(ids) != len(a[task]) or len(ids) != len(b[task]):
            raise KeyError(f"task {task!r}: the two rows were scored on different records")
        out[task] = [a[task][i] - b[task][i] for i in ids]
    return out
