"""Answer extraction from generated text (SPEC §3), the rules LLM-Adapters' evaluation uses.

- commonsense: the first occurrence of one of the dataset's label words;
- math: the last number in the text, correct when |pred - gold| < 1e-3;
- option letters (AQuA, multiple-choice exams): the letter A-E the response states.
Extraction reads the generated response only, never the prompt (the prompt lists the labels).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "COMMONSENSE_LABELS",
    "LABEL_WORDS",
    "commonsense_labels",
    "extract_label",
    "extract_number",
    "parse_gold_number",
    "math_correct",
    "is_number",
    "OPTION_LETTERS",
    "extract_option_letter",
    "gold_option_letter",
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


LABEL_WORDS = frozenset(w for words in COMMONSENSE_LABELS.values() for w in words)


def _norm_name(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def commonsense_labels(dataset: str, golds: Iterable[str] | None = None) -> tuple[str, ...]:
    """The label words of a commonsense dataset.

    Known datasets use LLM-Adapters' label sets. An unknown dataset falls back to the distinct
    known label set that holds every gold label given, else the distinct gold labels (so a user's
    own multiple-choice task works), else it is an error.
    """
    key = _norm_name(dataset)
    if key in COMMONSENSE_LABELS:
        return COMMONSENSE_LABELS[key]
    if golds is not None:
        labels = tuple(sorted({g.strip() for g in golds if g and g.strip()}))
        for known in COMMONSENSE_LABELS.values():  # e.g. answer1..answer3 seen: ARC's answer1..answer5
            if labels and set(labels) <= set(known):
                return known
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


# A number: optional sign, optional currency symbol (either order: "-$293", "$-293"), then either
# digits with comma thousands groups or plain digits, with an optional decimal part; or a bare
# decimal like ".5".
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-\u2212])?[$\u20ac\u00a3\u00a5]?(?P<sign2>-)?"
    r"(?P<digits>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
)


def _number_value(m: re.Match) -> float:
    value = float(m.group("digits").replace(",", ""))
    return -value if m.group("sign") or m.group("sign2") else value


def extract_number(text: str) -> float | None:
    """The last number in the text ('1,234.5' -> 1234.5, '-$293' -> -293.0); None if there is none.

    Commas count as thousands separators only in groups of three digits, so "3,4" is two numbers;
    a currency symbol ($, EUR, GBP, JPY signs) may stand before or after the minus sign.
    """
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return None if last is None else _number_value(last)


def parse_gold_number(gold: str | float) -> float:
    """A gold math answer as a float (files store '576.0', '1,000', '-$293' or 18)."""
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        return float(gold)
    m = _NUMBER.fullmatch(str(gold).strip().rstrip("."))
    if m is None:
        raise ValueError(f"gold math answer {gold!r} is not a number")
    return _number_value(m)


def is_number(text: str) -> bool:
    """Whether the text is one number (a math gold answer), as `parse_gold_number` reads it."""
    try:
        parse_gold_number(text)
    except ValueError:
        return False
    return True


def math_correct(prediction: str, gold: str | float, tol: float = 1e-3) -> bool:
    """Whether the last number of the prediction is within `tol` of the gold answer."""
    pred = extract_number(prediction)
    if pred is None or math.isnan(pred):
        return False
    return abs(pred - parse_gold_number(gold)) < tol


OPTION_LETTERS = "ABCDE"
_L = f"[{OPTION_LETTERS}{OPTION_LETTERS.lower()}]"
# In order of trust; within a pattern the first match wins (LLM-Adapters takes the first letter).
_OPTION_PATTERNS = (
    # "The answer is (C)", "the correct answer is: c", "Answer: C. 100 miles", "answer - (b)"
    re.compile(rf"answer(?:\s+is)?\s*[:\-]?\s*(?:option\s+)?\(?({_L})(?![A-Za-z])", re.IGNORECASE),
    re.compile(rf"\(({_L})\)"),  # "(C)"
    re.compile(rf"^\s*({_L})\s*(?:[.)]|$)"),  # "C. 100 miles", "c)", a lone "C"
)
_STANDALONE = re.compile(rf"(?<![A-Za-z'])([{OPTION_LETTERS}])(?![A-Za-z:'])")


def extract_option_letter(text: str) -> str | None:
    """The chosen option letter (upper case), or None.

    The common phrasings first ("the answer is (C)", "answer: c", "(C)", "C. 100 miles"), case
    insensitive, then the first standalone capital A-E, as LLM-Adapters takes the first letter;
    never "A:" (a rationale label) nor the article in "A train ...".
    """
    for pat in _OPTION_PATTERNS:
        for m in pat.finditer(text):
            if m.group(1) == "a" and re.match(r"\s+[a-z]", text[m.end(1):]):
                continue  # "the answer is a train": the article
            return m.group(1).upper()
    for m in _STANDALONE.finditer(text):
        if m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end():]):
            continue  # the article "A"
        return m.group(1)
    return None


_GOLD_OPTION = re.compile(rf"^\s*(?:the\s+)?(?:correct\s+)?(?:answer(?:\s+is)?\s*:?\s*)?\(?({_L})\)?(?:[.:)\s]|$)",
                          re.IGNORECASE)


def gold_option_letter(text: str) -> str | None:
    """The option letter a gold text states: "C", "(C)", "C. 100 miles", "The answer is: C. ...";
    None for anything else (a gold text is a statement, not a rationale to search)."""
    m = _GOLD_OPTION.match(text.strip())
    if m is None or (m.group(1) in "Aa" and re.match(r"\s+[a-z]", text.strip()[m.end(1):])):
        return None  # the article "A ..."
    return m.group(1).upper()


def exact_match(prediction: str, gold: str) -> bool:
    """Exact match of the first non-empty line, surrounding spaces ignored, case kept."""
    lines = [ln.strip() for ln in prediction.strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return first == gold.strip()
