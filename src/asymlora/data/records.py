"""Task records: read JSON/JSONL files or Hugging Face datasets into one small `Example` type.

Every reader normalises to `Example` so that the rest of the package (templates, tokenisation,
scoring) never sees a source format. Every example carries its task and a stable, unique id, so that
predictions are always joined to gold answers by id, never by position.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Example",
    "RecordFormat",
    "RecordError",
    "DataWarning",
    "KNOWN_FORMATS",
    "read_records",
    "detect_format",
    "resolve_format",
    "records_to_examples",
    "load_examples",
    "load_hf_dataset",
    "load_task_dir",
    "group_by_task",
    "check_unique_ids",
]


class DataWarning(UserWarning):
    """Data was changed on the way in (examples dropped, prompts cut); the message counts them."""


class RecordError(ValueError):
    """A record (or a file of records) cannot be turned into examples; the message says where."""


@dataclass(frozen=True)
class Example:
    """One instruction-following example of one task.

    `answer` is the gold label used by accuracy metrics (commonsense label, math number, AQuA
    letter); `output` is the reference response used for training and for ROUGE.
    """

    id: str
    task: str
    instruction: str
    input: str = ""
    output: str = ""
    answer: str | None = None


@dataclass(frozen=True)
class RecordFormat:
    """Which record key feeds which `Example` field.

    `input`, `answer` and `task` may be None (the format has no such key). A key named here but
    absent from a record is an error for `instruction` and `output`; `input` and `answer` are
    optional per record (LLM-Adapters' commonsense training records lack `answer`, FLAN has no
    `input`). `task` lists keys tried in order, so FLAN takes `category` and falls back to `task`.
    """

    name: str
    instruction: str = "instruction"
    output: str = "output"
    input: str | None = None
    answer: str | None = None
    task: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], name: str = "custom") -> RecordFormat:
        """Build a format from a user mapping such as {"instruction": "question", "output": "label"}."""
        allowed = {"instruction", "input", "output", "answer", "task"}
        unknown = set(mapping) - allowed
        if unknown:
            raise KeyError(
                f"unknown field(s) {sorted(unknown)} in field mapping; allowed: {sorted(allowed)}"
            )
        for required in ("instruction", "output"):
            if required not in mapping:
                raise KeyError(f"field mapping must name the record key for {required!r}")
        task = mapping.get("task")
        if task is None:
            task_keys: tuple[str, ...] = ()
        elif isinstance(task, str):
            task_keys = (task,)
        else:
            task_keys = tuple(task)
        for key, value in mapping.items():
            values = task_keys if key == "task" else (value,)
            for v in values:
                if v is not None and (not isinstance(v, str) or not v):
                    raise TypeError(f"field mapping {key!r} must be a record key (str), got {v!r}")
        return cls(
            name=name,
            instruction=mapping["instruction"],
            output=mapping["output"],
            input=mapping.get("input"),
            answer=mapping.get("answer"),
            task=task_keys,
        )


KNOWN_FORMATS: dict[str, RecordFormat] = {
    # {instruction, input, output, answer}: commonsense and math sets of LLM-Adapters.
    "llm_adapters": RecordFormat(
        "llm_adapters", input="input", answer="answer", task=("category", "task")
    ),
    # {instruction, output, task, category}: the FLAN-derived sets (category is the paper's task).
    "flan": RecordFormat("flan", task=("category", "task")),
    # {instruction, context, response, category}: databricks-dolly-15k.
    "dolly": RecordFormat("dolly", input="context", output="response", task=("category",)),
}


def _source_label(path: Path) -> str:
    return str(path)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON array (`.json`) or one JSON object a line (`.jsonl`).

    A `.json` file whose top level is not an array is refused rather than guessed at.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"records file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        records: list[dict[str, Any]] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{path}: line {lineno}: malformed JSON ({err.msg})") from err
            if not isinstance(rec, dict):
                raise RecordError(
                    f"{path}: line {lineno}: expected a JSON object, got {type(rec).__name__}"
                )
            records.append(rec)
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(
            f"{path}: malformed JSON at line {err.lineno}, column {err.colno} ({err.msg})"
        ) from err
    if not isinstance(data, list):
        raise RecordError(
            f"{path}: expected a JSON array of records, got {type(data).__name__} "
            "(use a .jsonl file for one record per line)"
        )
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise RecordError(f"{path}: record {i}: expected a JSON object, got {type(rec).__name__}")
    return data


def detect_format(record: Mapping[str, Any], where: str = "record") -> RecordFormat:
    """Recognise a known format from a record's keys; refuse anything ambiguous or unknown."""
    keys = set(record)
    if {"instruction", "response"} <= keys:
        return KNOWN_FORMATS["dolly"]
    if {"instruction", "output"} <= keys:
        if "input" in keys or "answer" in keys:
            return KNOWN_FORMATS["llm_adapters"]
        return KNOWN_FORMATS["flan"]
    raise RecordError(
        f"{where}: cannot recognise the record format from keys {sorted(keys)}; known formats: "
        f"{sorted(KNOWN_FORMATS)} - pass one by name or a field mapping such as "
        '{"instruction": "question", "output": "label"}'
    )


def resolve_format(
    fmt: str | RecordFormat | Mapping[str, Any] | None,
    first_record: Mapping[str, Any] | None = None,
    where: str = "record",
) -> RecordFormat:
    """Turn 'auto' / a format name / a field mapping into a RecordFormat."""
    if isinstance(fmt, RecordFormat):
        return fmt
    if fmt is None or fmt == "auto":
        if first_record is None:
            raise RecordError(f"{where}: no records to detect the format from")
        return detect_format(first_record, where)
    if isinstance(fmt, str):
        try:
            return KNOWN_FORMATS[fmt]
        except KeyError:
            raise KeyError(
                f"unknown record format {fmt!r}; known: {sorted(KNOWN_FORMATS)} or 'auto'"
            ) from None
    if isinstance(fmt, Mapping):
        return RecordFormat.from_mapping(fmt)
    raise TypeError(f"record format must be a name, a mapping or a RecordFormat, got {fmt!r}")


def _as_text(value: Any, where: str, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise RecordError(f"{where}: field {field!r} must be text, got {value!r}")
    if isinstance(value, (int, float)):
        return str(value)
    raise RecordError(f"{where}: field {field!r} must be text, got {type(value).__name__}")


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _clean_task(task: Any, where: str) -> str:
    if not isinstance(task, str):
        raise RecordError(f"{where}: task must be a string, got {task!r}")
    task = task.strip()
    if not task:
        raise RecordError(f"{where}: empty task name")
    if "/" in task:
        raise RecordError(f"{where}: task name {task!r} must not contain '/' (it is part of ids)")
    return task


def records_to_examples(
    records: Sequence[Mapping[str, Any]],
    fmt: str | RecordFormat | Mapping[str, Any] | None = "auto",
    task: str | None = None,
    source: str = "records",
    where: str | None = None,
) -> list[Example]:
    """Normalise raw records to Examples with ids f"{task}/{source}/{index}".

    `task`, when given, names the task of every record (it overrides any task field: the caller
    knows best, e.g. one file per task). Otherwise each record's task field is used.
    """
    where = where or source
    if task is not None:
        task = _clean_task(task, where)
    if "/" in source:
        raise ValueError(f"source label {source!r} must not contain '/' (it is part of ids)")
    if not records:
        return []
    rf = resolve_format(fmt, records[0], where)
    examples = []
    for i, rec in enumerate(records):
        at = f"{where}: record {i}"
        for field in ("instruction", "output"):
            key = getattr(rf, field)
            if key not in rec:
                raise RecordError(
                    f"{at}: missing required field {key!r} (format {rf.name!r} reads "
                    f"{field} from it); record keys: {sorted(rec)}"
                )
        instruction = _as_text(rec[rf.instruction], at, rf.instruction)
        output = _as_text(rec[rf.output], at, rf.output)
        inp = ""
        if rf.input is not None and rec.get(rf.input) is not None:
            inp = _as_text(rec[rf.input], at, rf.input)
        answer = None
        if rf.answer is not None and rec.get(rf.answer) is not None:
            answer = _as_text(rec[rf.answer], at, rf.answer)
        if task is not None:
            ex_task = task
        else:
            found = [k for k in rf.task if k in rec]
            if not found:
                tried = list(rf.task) or ["(none in this format)"]
                raise RecordError(
                    f"{at}: no task: the record has none of the task field(s) {tried} "
                    "and no task was given for this file"
                )
            ex_task = _clean_task(rec[found[0]], f"{at} (field {found[0]!r})")
        if not instruction.strip():
            raise RecordError(f"{at}: field {rf.instruction!r} is empty")
        examples.append(Example(f"{ex_task}/{source}/{i}", ex_task, instruction, inp, output, answer))
    return examples


def load_examples(
    path: str | Path,
    fmt: str | RecordFormat | Mapping[str, Any] | None = "auto",
    task: str | None = None,
    source: str | None = None,
) -> list[Example]:
    """Load one JSON/JSONL file. `source` (default: the file stem) makes ids unique across files."""
    path = Path(path)
    records = read_records(path)
    src = source if source is not None else _SAFE.sub("_", path.stem)
    return records_to_examples(records, fmt, task=task, source=src, where=_source_label(path))


def load_hf_dataset(
    name: str,
    split: str = "train",
    fmt: str | RecordFormat | Mapping[str, Any] | None = "auto",
    task: str | None = None,
    source: str | None = None,
    **load_kwargs: Any,
) -> list[Example]:
    """Load a Hugging Face dataset by name (or a builder like "json" with data_files=...).

    `load_kwargs` go to `datasets.load_dataset` unchanged (data_files, revision, ...).
    """
    import datasets  # heavy: import only when used

    ds = datasets.load_dataset(name, split=split, **load_kwargs)
    records = ds.to_list()
    src = source if source is not None else _SAFE.sub("_", f"{Path(name).name}-{split}")
    return records_to_examples(records, fmt, task=task, source=src, where=f"dataset {name}[{split}]")


def check_unique_ids(examples: Iterable[Example]) -> None:
    """Refuse duplicate ids: predictions are joined to gold answers by id."""
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise ValueError(f"duplicate example id {ex.id!r}; give each file a distinct source")
        seen.add(ex.id)


def group_by_task(examples: Iterable[Example]) -> dict[str, list[Example]]:
    """Examples per task, tasks in first-seen order."""
    out: dict[str, list[Example]] = {}
    for ex in examples:
        out.setdefault(ex.task, []).append(ex)
    return out


def _flan_index(p: Path) -> int:
    return int(p.stem.rsplit("_", 1)[1])


def load_task_dir(
    path: str | Path,
    split: str = "train",
    tasks: Sequence[str] | None = None,
    fmt: str | RecordFormat | Mapping[str, Any] | None = "auto",
) -> list[Example]:
    """Load a benchmark folder in one of the two shared layouts.

    - FLAN layout: `local_training_{i}.json` (train, one category per file) + `test.jsonl`; the task
      of each record is its `category`.
    - LLM-Adapters layout: `<task>/train.json` and `<task>/test.json`; the task is the folder name.

    `tasks` keeps only those tasks (all given names must exist). Returns examples, ids unique.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"task directory not found: {root}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    flan_files = sorted(root.glob("local_training_*.json"), key=_flan_index)
    examples: list[Example] = []
    if flan_files:
        if split == "train":
            for f in flan_files:
                examples.extend(load_examples(f, fmt))
        else:
            test = root / "test.jsonl"
            if not test.exists():
                test = root / "test.json"
            examples.extend(load_examples(test, fmt))
    else:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
        found = [d for d in subdirs if (d / f"{split}.json").is_file()]
        if not found:
            raise FileNotFoundError(
                f"{root}: neither the FLAN layout (local_training_*.json) nor "
                f"<task>/{split}.json found"
            )
        if tasks is not None:
            missing = sorted(set(tasks) - {d.name for d in found})
            if missing:
                have = [d.name for d in found]
                raise FileNotFoundError(f"{root}: no {split}.json for task(s) {missing}; have {have}")
        for d in found:
            if tasks is not None and d.name not in tasks:
                continue
            examples.extend(load_examples(d / f"{split}.json", fmt, task=d.name))
    if tasks is not None and flan_files:
        have = {ex.task for ex in examples}
        missing = sorted(set(tasks) - have)
        if missing:
            raise KeyError(f"{root}: task(s) {missing} not found; have {sorted(have)}")
        keep = set(tasks)
        examples = [ex for ex in examples if ex.task in keep]
    check_unique_ids(examples)
    return examples
