"""Answer extraction from generated text (SPEC §3), the rules LLM-Adapters' evaluation uses.

- commonsense: the first occurrence of one of the dataset's label words;
- math: the last number in the text, correct when |pred - gold| < 1e-3;
- AQuA: the option letter A-E.
Extraction reads the generated response only, never the prompt (the prompt lists the labels).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "COMMONSENSE_LABELS",
    "commonsense_labels",
    "extract_label",
    "extract_number",
    "parse_gold_number",
    "math_correct",
    "extract_option_letter",
    "exact_match",
]

_ANSWERS = tuple(f"answer{i}" for i in range(1, 6))
COMMONSENSE_LABELS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": _ANSWERS,
    "arc-challenge": _ANSWERS,
    "arc-easy": _ANSWERS,
    "openbookqa": _ANSWERS,
    "hellaswag": tuple(f"ending{i}" for i in range(1, 5)),
    "winogrande": ("option1", "option2"),
}


def _norm_name(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def commonsense_labels(dataset: str, golds: Iterable[str] | None = None) -> tuple[str, ...]:
    """The label words of a commonsense dataset.

    Known datasets use LLM-Adapters' label sets. An unknown dataset falls back to the distinct
    gold labels given (so a user's own multiple-choice task works), else it is an error.
    """
    key = _norm_name(dataset)
    if key in COMMONSENSE_LABELS:
        return COMMONSENSE_LABELS[key]
    if golds is not None:
        labels = tuple(sorted({g.strip() for g in golds if g and g.strip()}))
        if labels:
            return labels
    raise KeyError(
        f"no label words known for dataset {dataset!r}; known: {sorted(COMMONSENSE_LABELS)} "
        "(or pass the gold labels)"
    )


def extract_label(text: str, labels: Sequence[str]) -> str | None:
    """First occurrence of any label word in the text (case-sensitive, as in LLM-Adapters)."""
    if not labels:
        raise ValueError("no label words given")
    # longest first so that e.g. "answer10" would win over "answer1" at the same position
    pattern = "|".join(re.escape(w) for w in sorted(labels, key=len, reverse=True))
    m = re.search(pattern, text)
    return m.group(0) if m else None


# A number: optional sign, then either digits with comma thousands groups, or plain digits, with
# an optional decimal part; or a bare decimal like ".5".
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")


def extract_number(text: str) -> float | None:
    """The last number in the text ('1,234.5' -> 1234.5, '-3' -> -3.0); None if there is none.

    Commas count as thousands separators only in groups of three digits, so "3,4" is two numbers.
    """
    found = _NUMBER.findall(text)
    if not found:
        return None
    return float(found[-1].replace(",", ""))


def parse_gold_number(gold: str | float) -> float:
    """A gold math answer as a float (the LLM-Adapters files store '576.0', '1,000' or 18)."""
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        return float(gold)
    try:
        return float(str(gold).strip().replace(",", ""))
    except ValueError:
        raise ValueError(f"gold math answer {gold!r} is not a number") from None


def math_correct(prediction: str, gold: str | float, tol: float = 1e-3) -> bool:
    """Whether the last number of the prediction is within `tol` of the gold answer."""
    pred = extract_number(prediction)
    if pred is None or math.isnan(pred):
        return False
    return abs(pred - parse_gold_number(gold)) < tol


_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*\(?([A-E])(?![A-Za-z])")  # "The answer is (D)."
_PAREN = re.compile(r"\(([A-E])\)")  # "(D)"
_STANDALONE = re.compile(r"(?<![A-Za-z])([A-E])(?![A-Za-z:'])")


def extract_option_letter(text: str) -> str | None:
    """The chosen AQuA option letter.

    An explicit "answer is X" wins, then the last "(X)", then the last standalone letter A-E;
    not "A:" (a rationale label) nor the article in "A train ...".
    """
    for pat in (_ANSWER_IS, _PAREN):
        found = pat.findall(text)
        if found:
            return found[-1]
    last = None
    for m in _STANDALONE.finditer(text):
        if m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end():]):
            continue  # the article "A"
        last = m.group(1)
    return last


def exact_match(prediction: str, gold: str) -> bool:
    """Exact match of the first non-empty line, surrounding spaces ignored, case kept."""
    lines = [ln.strip() for ln in prediction.strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return first == gold.strip()
