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
    assert extract_number("He was out -$293.") == -293.0
    assert extract_number("a loss of $-1,250.50") == -1250.5
    assert extract_number("costs \u00a312,000") == 12000.0


def test_math_correct_tolerance():
    assert math_correct("so 2/3 is 0.6667", "0.6666666666666666")
    assert not math_correct("so it is 0.668", "0.6666666666666666")
    assert math_correct("The answer is 576.", "576.0")
    assert math_correct("total: 1,000", "1000")
    assert not math_correct("no idea", "3")
    assert parse_gold_number("1,234") == 1234.0
    assert parse_gold_number("-$293") == -293.0
    assert math_correct("He lost -$293.", "-293")
    assert not math_correct("He lost $293.", "-293")
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
    assert extract_option_letter("(B) is wrong, so (E)") == "B"  # the first, as LLM-Adapters
    assert extract_option_letter("Answer is B because C is too big") == "B"
    assert extract_option_letter("The answer is (C)") == "C"
    assert extract_option_letter("answer: c") == "C"
    assert extract_option_letter("C. 100 miles") == "C"
    assert extract_option_letter("(d)") == "D"
    assert extract_option_letter("the answer is a train") is None  # the article, not option A
    assert extract_option_letter("The answer is A because") == "A"
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


# Extraction from the gold `output` of every record, against the gold `answer`, as recorded when
# extraction last changed. The outputs are machine-written rationales (often wrong for AQuA and
# gsm8k; empty for mawps), so the rates are not 100%; a change to extraction must keep them.
RECORDED = {
    "ARC-Challenge": (1172, 1172), "ARC-Easy": (2376, 2376), "boolq": (3270, 3270),
    "openbookqa": (500, 500), "piqa": (1838, 1838), "social_i_qa": (1954, 1954),
    "winogrande": (1267, 1267), "AQuA": (123, 254), "AddSub": (370, 395), "SingleEq": (484, 508),
    "gsm8k": (771, 1319), "mawps": (0, 238),
}


@pytest.mark.skipif(not MATH.is_dir() or not COMMONSENSE.is_dir(), reason="shared data not found")
@pytest.mark.parametrize("dataset", sorted(RECORDED))
def test_extraction_rate_on_every_gold_record_is_kept(dataset):
    from asymlora.data.records import load_examples
    from asymlora.evaluate.scoring import infer_task_kind, score_predictions_list

    folder = COMMONSENSE if (COMMONSENSE / dataset).is_dir() else MATH
    exs = load_examples(folder / dataset / "test.json", task=dataset)
    kind = infer_task_kind(dataset, exs)  # from the data, not the name
    assert kind == {"AQuA": "aqua", "AddSub": "math", "SingleEq": "math", "gsm8k": "math",
                    "mawps": "math"}.get(dataset, "commonsense")
    scores = score_predictions_list(kind, [e.output for e in exs], [e.answer for e in exs], task=dataset)
    assert (sum(s == 100.0 for s in scores), len(scores)) == RECORDED[dataset]
