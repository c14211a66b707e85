"""Evaluation: generation in eval mode, answer extraction, ROUGE-1, per-task scores, tables."""

from __future__ import annotations

from .extract import (
    COMMONSENSE_LABELS,
    commonsense_labels,
    exact_match,
    extract_label,
    extract_number,
    extract_option_letter,
    math_correct,
)
from .generate import (
    EvalResult,
    eval_mode,
    evaluate_examples,
    generate_predictions,
    read_predictions,
    write_predictions,
)
from .rouge import rouge1, rouge1_by_task, rouge1_scores
from .scoring import (
    TASK_KINDS,
    gold_of,
    infer_task_kind,
    score_examples,
    score_predictions_list,
    score_task,
)
from .tables import markdown_table, plot_task_scores, results_summary, write_results

__all__ = [
    "COMMONSENSE_LABELS",
    "commonsense_labels",
    "exact_match",
    "extract_label",
    "extract_number",
    "extract_option_letter",
    "math_correct",
    "EvalResult",
    "eval_mode",
    "evaluate_examples",
    "generate_predictions",
    "read_predictions",
    "write_predictions",
    "rouge1",
    "rouge1_by_task",
    "rouge1_scores",
    "TASK_KINDS",
    "gold_of",
    "infer_task_kind",
    "score_examples",
    "score_predictions_list",
    "score_task",
    "markdown_table",
    "plot_task_scores",
    "results_summary",
    "write_results",
]
