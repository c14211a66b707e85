from __future__ import annotations

import random

import pytest

from asymlora.data.records import Example
from asymlora.evaluate.scoring import (
    gold_of,
    infer_task_kind,
    score_examples,
    score_predictions_list,
    score_task,
)


def test_score_task_each_kind():
    assert score_task("commonsense", ["the correct answer is true", "false", "maybe"], ["true", "true", "false"], task="boolq") == pytest.approx(100 / 3)
    # label words come from the dataset: 'answer1' is not a PIQA label
    assert score_task("commonsense", ["answer1", "solution2"], ["solution1", "solution2"], task="piqa") == 50.0
    assert score_task("math", ["so 3.0004", "is 7", "none"], ["3", "8", "1"]) == pytest.approx(100 / 3)
    assert score_task("aqua", ["The answer is (B).", "(C)"], ["B", "D"]) == 50.0
    assert score_task("exact", ["olleh", "Olleh"], ["olleh", "olleh"]) == 50.0
    assert score_task("rouge1", ["a b", "x"], ["a b", "y"]) == pytest.approx(50.0)
    assert score_predictions_list("math", ["1", "2"], ["1", "3"]) == [100.0, 0.0]
    with pytest.raises(ValueError, match="unknown task kind 'bleu'"):
        score_task("bleu", ["a"], ["a"])
    with pytest.raises(ValueError, match="2 predictions but 1 gold"):
        score_task("math", ["1", "2"], ["1"])
    with pytest.raises(ValueError, match="no predictions"):
        score_task("math", [], [])


def test_infer_task_kind():
    assert [infer_task_kind(t) for t in ["boolq", "ARC-Challenge", "gsm8k", "AQuA", "sentiment"]] == [
        "commonsense", "commonsense", "math", "aqua", "rouge1",
    ]


def _examples():
    return [
        Example("boolq/test/0", "boolq", "q", "", "the correct answer is true", "true"),
        Example("boolq/test/1", "boolq", "q", "", "the correct answer is false", "false"),
        Example("gsm8k/test/0", "gsm8k", "q", "", "... The answer is 12.", "12.0"),
        Example("summ/test/0", "summ", "q", "", "the cat sat on the mat", None),
    ]


def test_score_examples_joins_by_id_not_order():
    exs = _examples()
    preds = {
        "summ/test/0": "the cat sat",
        "gsm8k/test/0": "so 12",
        "boolq/test/1": "the correct answer is true",
        "boolq/test/0": "true",
    }
    items = list(preds.items())
    random.Random(0).shuffle(items)
    per_task, records = score_examples(exs, dict(items))
    assert per_task == pytest.approx({"boolq": 50.0, "gsm8k": 100.0, "summ": 200 / 3})
    assert [r["id"] for r in records] == [e.id for e in exs]
    assert records[1] == {
        "id": "boolq/test/1", "task": "boolq", "kind": "commonsense",
        "prediction": "the correct answer is true", "gold": "false", "score": 0.0,
    }
    assert records[3]["gold"] == "the cat sat on the mat"  # ROUGE scores against the output


def test_score_examples_errors():
    exs = _examples()
    preds = {e.id: "x" for e in exs}
    with pytest.raises(KeyError, match=r"no prediction for 1 example\(s\), e.g. \['summ/test/0'\]"):
        score_examples(exs, {k: v for k, v in preds.items() if k != "summ/test/0"})
    with pytest.raises(KeyError, match=r"unknown example ids, e.g. \['other/0'\]"):
        score_examples(exs, {**preds, "other/0": "x"})
    with pytest.raises(KeyError, match="no task kind given for task 'gsm8k'"):
        score_examples(exs, preds, {"boolq": "commonsense", "summ": "rouge1"})
    with pytest.raises(ValueError, match="example 'summ/test/0': task kind 'math' needs a gold 'answer'"):
        score_examples(exs, preds, "math")
    with pytest.raises(ValueError, match="duplicate example ids"):
        score_examples(exs + exs[:1], preds)


def test_gold_of():
    ex = Example("t/s/0", "t", "q", "", "out", None)
    assert gold_of(ex, "exact") == "out"
    assert gold_of(ex, "rouge1") == "out"
    with pytest.raises(ValueError, match="needs a gold 'answer'"):
        gold_of(ex, "aqua")
