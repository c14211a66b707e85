from __future__ import annotations

import random

import pytest

from asymlora.data.records import Example
from asymlora.evaluate.scoring import (
    gold_of,
    infer_task_kind,
    resolve_kinds,
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
        "prediction": "the correct answer is true", "extracted": "true", "gold": "false", "score": 0.0,
    }
    assert records[2]["extracted"] == 12.0 and records[3]["extracted"] is None
    assert records[3]["gold"] == "the cat sat on the mat"  # ROUGE scores against the output


def test_score_examples_errors():
    exs = _examples()
    preds = {e.id: "x" for e in exs}
    with pytest.raises(KeyError, match=r"no prediction for 1 example\(s\), e.g. \['summ/test/0'\]"):
        score_examples(exs, {k: v for k, v in preds.items() if k != "summ/test/0"})
    with pytest.raises(KeyError, match=r"unknown example ids, e.g. \['other/0'\]"):
        score_examples(exs, {**preds, "other/0": "x"})
    # tasks a mapping leaves out follow their data
    per_task, _ = score_examples(exs, {**preds, "gsm8k/test/0": "12"}, {"boolq": "commonsense", "summ": "rouge1"})
    assert per_task["gsm8k"] == 100.0
    with pytest.raises(ValueError, match="task 'boolq', record 'boolq/test/0': metric math needs a number as gold answer, got 'true'"):
        score_examples(exs, preds, "math")
    with pytest.raises(ValueError, match="duplicate example ids"):
        score_examples(exs + exs[:1], preds)


def test_gold_of():
    ex = Example("t/s/0", "t", "q", "", "out", None)
    assert gold_of(ex, "exact") == "out"
    assert gold_of(ex, "rouge1") == "out"
    with pytest.raises(ValueError, match=r"record 't/s/0': metric aqua \(option letter\) needs an option letter "
                                         r"A-E as gold output \(there is no answer field\), got 'out'"):
        gold_of(ex, "aqua")
    # no answer: accuracy reads the gold output's statement
    assert gold_of(Example("t/s/1", "t", "q", "", "The answer is: c. 100 miles"), "aqua") == "C"
    assert gold_of(Example("t/s/2", "t", "q", "", " -$1,200 "), "math") == " -$1,200 "
    assert gold_of(Example("t/s/3", "t", "q", "", "the correct answer is option2"), "commonsense") == "option2"
    # an empty output is not a reference: ROUGE reads the answer, or refuses
    assert gold_of(Example("t/s/4", "t", "q", "", "", "Paris"), "rouge1") == "Paris"
    with pytest.raises(ValueError, match="record 't/s/5': metric rouge1 needs a reference text"):
        gold_of(Example("t/s/5", "t", "q", "", "  "), "rouge1")


def _task(task, golds, answers=None):
    answers = answers or [None] * len(golds)
    return [Example(f"{task}/s/{i}", task, "q", "", o, a) for i, (o, a) in enumerate(zip(golds, answers))]


@pytest.mark.parametrize("outputs, answers, kind", [
    (["r1", "r2", "r3"], ["B", "d", "(E)"], "aqua"),  # letters in answer, whatever the output
    (["The answer is: C. 100 miles", "(A)", "B. 3 km"], None, "aqua"),  # letters stated in the output
    (["", ""], ["-12", "1,000.5"], "math"),  # the math set with an empty output
    (["42", "$-3"], None, "math"),
    (["the correct answer is true", "x"], ["true", "false"], "commonsense"),
    (["the correct answer is answer2", "answer1"], None, "commonsense"),
    (["yes", "no"], None, "rouge1"),  # FLAN classification outputs stay ROUGE-1, as in the paper
    (["B", "the cat sat"], None, "rouge1"),  # mixed: no accuracy metric fits every record
    (["a", "b"], ["Paris", "Rome"], "rouge1"),  # a text answer
    (["A cat sat", "A dog ran"], None, "rouge1"),  # the article "A" is not an option letter
])
def test_metric_follows_the_data(outputs, answers, kind):
    exs = _task("unnamed_task", outputs, answers)
    assert infer_task_kind("unnamed_task", exs) == kind
    assert resolve_kinds(exs) == {"unnamed_task": kind}


def test_metric_override_checked_before_anything_is_scored():
    exs = _task("mc", ["B. yes", "(C)"]) + _task("summ", ["the cat", "a dog"])
    assert resolve_kinds(exs) == {"mc": "aqua", "summ": "rouge1"}
    assert resolve_kinds(exs, {"mc": "rouge1"}) == {"mc": "rouge1", "summ": "rouge1"}
    assert resolve_kinds(exs, {"mc": "option"}) == {"mc": "aqua", "summ": "rouge1"}  # alias
    with pytest.raises(ValueError, match="task 'summ', record 'summ/s/0': metric math needs a number"):
        resolve_kinds(exs, {"summ": "math"})
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        resolve_kinds(exs, "bleu")


def test_unknown_multiple_choice_set_scored_by_letter_not_rouge():
    # the exam: unknown name, gold letter in `answer`, rationale in `output`
    exs = _task("my_exam", ["Because x. The answer is B", "so D"], ["B", "C"])
    per_task, recs = score_examples(exs, {"my_exam/s/0": "Answer is b because C is too big",
                                          "my_exam/s/1": "(C)"})
    assert per_task == {"my_exam": 100.0}
    assert [r["extracted"] for r in recs] == ["B", "C"]
    assert {r["kind"] for r in recs} == {"aqua"}
