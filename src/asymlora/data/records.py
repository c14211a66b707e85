"""Task records: read JSON/JSONL files or Hugging Face datasets into one small `Example` type.

Every reader normalises to `Example` so that the rest of the package (templates, tokenisation,
scoring) never sees a source format. Every example carries its task and a stable, unique id, so that
predictions are always joined to gold answers by id, never by position.
"""

from __future__ import annotations

import dataclasses
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
    "split_file",
    "TASK_FIELDS",
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


# Where records keep their task, tried in order (FLAN: `category` is the paper's task, `task` the
# source data set; other sets use `task_type` or `class`).
TASK_FIELDS = ("category", "task", "task_type", "class")

KNOWN_FORMATS: dict[str, RecordFormat] = {
    # {instruction, input, output, answer}: commonsense and math sets of LLM-Adapters.
    "llm_adapters": RecordFormat("llm_adapters", input="input", answer="answer", task=TASK_FIELDS),
    # {instruction, output, task, category}: the FLAN-derived sets.
    "flan": RecordFormat("flan", task=TASK_FIELDS),
    # {instruction, context, response, category}: databricks-dolly-15k.
    "dolly": RecordFormat("dolly", input="context", output="response", task=TASK_FIELDS),
}


def _source_label(path: Path) -> str:
    return str(path)


def _json_lines(text: str, path: Path) -> list[Any]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}: line {lineno}: malformed JSON ({err.msg})") from err
    return records


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read the records of a file: a JSON array, or one JSON object a line, whatever the suffix
    says (a `.jsonl` file holding one array and a `.json` file of lines are both common).

    A `.json` file holding a single object is refused rather than guessed at.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a records file (.json/.jsonl), or the folder as a "
                                "data directory")
    if not path.is_file():
        raise FileNotFoundError(f"records file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecordError(f"{path}: not UTF-8 text (byte {err.start}): not a JSON records file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.lineno == 1 and path.suffix.lower() != ".jsonl" or text.lstrip().startswith("["):
            raise RecordError(
                f"{path}: malformed JSON at line {err.lineno}, column {err.colno} ({err.msg})"
            ) from err
        data = _json_lines(text, path)  # one record a line
    else:
        if isinstance(data, dict) and path.suffix.lower() == ".jsonl":
            data = [data]  # a file of one line
    if not isinstance(data, list):
        raise RecordError(
            f"{path}: expected a JSON array of records, got {type(data).__name__} "
            "(or one JSON object a line)"
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
    task_field: str | None = None,
) -> list[Example]:
    """Normalise raw records to Examples with ids f"{task}/{source}/{index}".

    `task`, when given, names the task of every record (it overrides any task field: the caller
    knows best, e.g. one file per task). Otherwise each record's task field is used: the one
    `task_field` names, else the format's (`category`, `task`, `task_type`, `class`).
    """
    where = where or source
    if task is not None:
        task = _clean_task(task, where)
    if "/" in source:
        raise ValueError(f"source label {source!r} must not contain '/' (it is part of ids)")
    if not records:
        return []
    rf = resolve_format(fmt, records[0], where)
    if task_field is not None:
        rf = dataclasses.replace(rf, task=(task_field,))
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
    task_field: str | None = None,
) -> list[Example]:
    """Load one JSON/JSONL file. `source` (default: the file stem) makes ids unique across files."""
    path = Path(path)
    records = read_records(path)
    src = source if source is not None else _SAFE.sub("_", path.stem)
    return records_to_examples(records, fmt, task=task, source=src, where=_source_label(path),
                               task_field=task_field)


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


# The file names a split goes by, tried in order: LLM-Adapters and FLAN (`test.json(l)`), and
# the federated Dolly layout (`global_test.json`).
SPLIT_FILES = {
    "train": ("train.json", "train.jsonl"),
    "test": ("test.jsonl", "test.json", "global_test.json", "global_test.jsonl"),
}


def split_file(folder: str | Path, split: str, required: bool = True) -> Path | None:
    """The file of `split` in a data folder (`test.jsonl`, `test.json`, `global_test.json`...).

    The one place that knows these names: evaluate, train, compare and federate all find a
    folder's test file through it. None, or a FileNotFoundError listing the names tried.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    root = Path(folder)
    for name in SPLIT_FILES[split]:
        if (root / name).is_file():
            return root / name
    if required:
        raise FileNotFoundError(f"{root}: no {split} file (looked for {', '.join(SPLIT_FILES[split])})")
    return None


def _client_files(root: Path) -> list[Path]:
    files = [p for p in root.glob("local_training_*.json*") if p.suffix in (".json", ".jsonl")]
    return sorted(files, key=_flan_index)


def load_task_dir(
    path: str | Path,
    split: str = "train",
    tasks: Sequence[str] | None = None,
    fmt: str | RecordFormat | Mapping[str, Any] | None = "auto",
    task_field: str | None = None,
) -> list[Example]:
    """Load a benchmark folder in one of the common layouts.

    - FLAN / federated layout: `local_training_{i}.json` (train, one category per file) and a test
      file (`test.jsonl`, `test.json` or Dolly's `global_test.json`); each record's task field
      names its task.
    - One file per split: `train.json(l)` and `test.json(l)` with task fields.
    - LLM-Adapters layout: `<task>/train.json` and `<task>/test.json`; the task is the folder name.

    `tasks` keeps only those tasks (all given names must exist). Returns examples, ids unique.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"task directory not found: {root}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    flan_files = _client_files(root)
    own = split_file(root, split, required=False)
    examples: list[Example] = []
    if flan_files or own is not None:
        if split == "train" and flan_files:
            for f in flan_files:
                examples.extend(load_examples(f, fmt, task_field=task_field))
        else:
            examples.extend(load_examples(own or split_file(root, split), fmt, task_field=task_field))
    else:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
        found = {d.name: f for d in subdirs if (f := split_file(d, split, required=False)) is not None}
        if not found:
            raise FileNotFoundError(
                f"{root}: no data layout found: neither local_training_*.json, nor "
                f"{' / '.join(SPLIT_FILES[split])}, nor <task>/{SPLIT_FILES[split][0]}"
            )
        if tasks is not None:
            missing = sorted(set(tasks) - set(found))
            if missing:
                raise FileNotFoundError(f"{root}: no {split} file for task(s) {missing}; have {sorted(found)}")
        for name, f in found.items():
            if tasks is not None and name not in tasks:
                continue
            examples.extend(load_examples(f, fmt, task=name))
    if tasks is not None and (flan_files or own is not None):
        have = {ex.task for ex in examples}
        missing = sorted(set(tasks) - have)
        if missing:
            raise KeyError(f"{root}: task(s) {missing} not found; have {sorted(have)}")
        keep = set(tasks)
        examples = [ex for ex in examples if ex.task in keep]
    check_unique_ids(examples)
    return examples
