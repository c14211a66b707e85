from __future__ import annotations

import json
import re

import pytest

from asymlora.evaluate.extract import (
    COMMONSENSE_LABELS,
    commonsense_labels,
    exact_match,
    extract_label,
    extract_number,
    extract_option_letter,
    math_correct,
    parse_gold_number,
)
from tests.conftest import SHARED_DATA

COMMONSENSE = SHARED_DATA / "commonsense"
MATH = SHARED_DATA / "math"


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_label_first_match_and_case():
    words = COMMONSENSE_LABELS["arc-easy"]
    assert extract_label("the correct answer is answer3, not answer1", words) == "answer3"
    assert extract_label("Answer2", words) is None  # case-sensitive, as in LLM-Adapters
    assert extract_label("nothing", words) is None
    assert extract_label("it is false that true", COMMONSENSE_LABELS["boolq"]) == "false"
    assert commonsense_labels("ARC-Challenge") == tuple(f"answer{i}" for i in range(1, 6))
    assert commonsense_labels("HellaSwag") == ("ending1", "ending2", "ending3", "ending4")
    assert commonsense_labels("my_mc", golds=["B", "A", "B"]) == ("A", "B")
    with pytest.raises(KeyError, match="no label words known for dataset 'my_mc'"):
        commonsense_labels("my_mc")


@pytest.mark.skipif(not COMMONSENSE.is_dir(), reason=f"{COMMONSENSE} not found")
@pytest.mark.parametrize(
    "dataset", ["ARC-Challenge", "ARC-Easy", "boolq", "openbookqa", "piqa", "social_i_qa", "winogrande"]
)
def test_commonsense_reference_outputs_extract_to_gold(dataset):
    recs = _load(COMMONSENSE / dataset / "test.json")
    labels = commonsense_labels(dataset)
    assert {r["answer"] for r in recs} <= set(labels)
    wrong = [r for r in recs if extract_label(r["output"], labels) != r["answer"]]
    assert wrong == []
    # the prompt lists every label: extracting from it instead of the response would be wrong
    assert any(extract_label(r["instruction"], labels) != r["answer"] for r in recs)


def test_numbers():
    assert extract_number("The answer is 1,234.5.") == 1234.5
    assert extract_number("x = -3") == -3.0
    assert extract_number("costs $9.99 and then .5 more") == 0.5
    assert extract_number("from 5-3 we get") == 3.0  # a range, not minus three
    assert extract_number("3,4") == 4.0  # not thousands groups
    assert extract_number("1,000,000 people") == 1_000_000.0
    assert extract_number("no numbers") is None
    assert extract_number("A1 and B2") is None  # digits glued to words are not numbers


def test_math_correct_tolerance():
    assert math_correct("so 2/3 is 0.6667", "0.6666666666666666")
    assert not math_correct("so it is 0.668", "0.6666666666666666")
    assert math_correct("The answer is 576.", "576.0")
    assert math_correct("total: 1,000", "1000")
    assert not math_correct("no idea", "3")
    assert parse_gold_number("1,234") == 1234.0
    with pytest.raises(ValueError, match="gold math answer 'abc' is not a number"):
        math_correct("1", "abc")


@pytest.mark.skipif(not MATH.is_dir(), reason=f"{MATH} not found")
@pytest.mark.parametrize("dataset", ["gsm8k", "AddSub", "SingleEq"])
def test_math_reference_rationales(dataset):
    recs = _load(MATH / dataset / "test.json")
    ending = re.compile(r"The answer is \$?(-?[\d,]*\.?\d+)\.?\s*$")
    checked = 0
    for r in recs:
        parse_gold_number(r["answer"])  # every gold answer is a number
        m = ending.search(r["output"])
        if m:
            checked += 1
            assert extract_number(r["output"]) == float(m.group(1).replace(",", "")), r["output"]
    assert checked > 0.8 * len(recs)  # most rationales end that way (gsm8k: 1098 of 1319)


def test_option_letter():
    assert extract_option_letter("A: Rationale ... The answer is (D).") == "D"
    assert extract_option_letter("the answer is C") == "C"
    assert extract_option_letter("(B) is wrong, so (E)") == "E"
    assert extract_option_letter("A train travels 20 km, so pick B") == "B"
    assert extract_option_letter("A bag of apples") is None
    assert extract_option_letter("nothing") is None


@pytest.mark.skipif(not MATH.is_dir(), reason=f"{MATH} not found")
def test_aqua_reference_rationales():
    recs = _load(MATH / "AQuA" / "test.json")
    assert {r["answer"] for r in recs} <= set("ABCDE")
    stated = [(r, re.findall(r"answer is \(([A-E])\)", r["output"])) for r in recs]
    stated = [(r, s[-1]) for r, s in stated if s]
    assert len(stated) > 0.9 * len(recs)
    for r, letter in stated:
        assert extract_option_letter(r["output"]) == letter


def test_exact_match():
    assert exact_match("  olleh \n more text", "olleh")
    assert not exact_match("OLLEH", "olleh")
    assert not exact_match("", "x")
