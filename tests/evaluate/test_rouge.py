from __future__ import annotations

import re
from collections import Counter

import pytest

from asymlora.evaluate.rouge import rouge1, rouge1_by_task, rouge1_scores


def _reference_rouge1(pred: str, ref: str) -> float:
    """Unigram-overlap F1 on lowercased alphanumeric tokens, written out by hand."""
    p = Counter(re.sub(r"[^a-z0-9]+", " ", pred.lower()).split())
    r = Counter(re.sub(r"[^a-z0-9]+", " ", ref.lower()).split())
    overlap = sum((p & r).values())
    if not overlap:
        return 0.0
    prec, rec = overlap / sum(p.values()), overlap / sum(r.values())
    return 100 * 2 * prec * rec / (prec + rec)


def test_hand_computed():
    # overlap 3 of 3 predicted, 3 of 6 reference: F = 2 * 1 * 0.5 / 1.5
    assert rouge1("The cat sat.", "the cat sat on the mat") == pytest.approx(200 / 3)
    assert rouge1("identical words here", "identical words here") == pytest.approx(100.0)
    assert rouge1("", "something") == 0.0


def test_no_stemmer():
    assert rouge1("running dogs", "run dog") == 0.0


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        ("a b c d", "b c e"),
        ("the the the", "the cat"),
        ("Paris is the capital of France", "the capital of France is Paris."),
        ("yes", "no"),
    ],
)
def test_matches_independent_reference(pred, ref):
    assert rouge1(pred, ref) == pytest.approx(_reference_rouge1(pred, ref))


def test_per_task_average():
    preds = ["a b", "a b", "x"]
    refs = ["a b", "a c", "y"]
    tasks = ["t1", "t1", "t2"]
    assert rouge1_scores(preds, refs) == pytest.approx([100.0, 50.0, 0.0])
    assert rouge1_by_task(preds, refs, tasks) == pytest.approx({"t1": 75.0, "t2": 0.0})
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge1_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="task labels"):
        rouge1_by_task(["a"], ["a"], [])
