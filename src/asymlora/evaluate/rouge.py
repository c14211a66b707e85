"""ROUGE-1 (F-measure x 100) through Google's `rouge-score` package, no stemmer (SPEC §3)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

__all__ = ["rouge1", "rouge1_scores", "rouge1_by_task"]


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer  # imports nltk: keep it out of module import

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)


def rouge1(prediction: str, reference: str) -> float:
    """ROUGE-1 F-measure of one prediction against one reference, in percent."""
    return _scorer().score(reference, prediction)["rouge1"].fmeasure * 100.0


def rouge1_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-pair ROUGE-1 F x 100."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references"
        )
    return [rouge1(p, r) for p, r in zip(predictions, references)]


def rouge1_by_task(
    predictions: Sequence[str], references: Sequence[str], tasks: Sequence[str]
) -> dict[str, float]:
    """Mean ROUGE-1 F x 100 per task category (tasks in first-seen order)."""
    if len(tasks) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(tasks)} task labels")
    scores = rouge1_scores(predictions, references)
    sums: dict[str, list[float]] = {}
    for t, s in zip(tasks, scores):
        sums.setdefault(t, []).append(s)
    return {t: sum(v) / len(v) for t, v in sums.items()}
