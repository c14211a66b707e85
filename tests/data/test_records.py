from __future__ import annotations

import json
from pathlib import Path

import pytest

from asymlora.data.records import (
    split_file,
    Example,
    RecordError,
    RecordFormat,
    check_unique_ids,
    detect_format,
    group_by_task,
    load_examples,
    load_hf_dataset,
    load_task_dir,
    read_records,
    records_to_examples,
)
from tests.conftest import SHARED_DATA

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared benchmark data not found at {SHARED_DATA}"
)

LLM_ADAPTERS = [
    {"instruction": "Q1 true or false", "input": "", "output": "the correct answer is true", "answer": "true"},
    {"instruction": "Q2", "input": "ctx", "output": "the correct answer is false", "answer": "false"},
]
FLAN = [
    {"instruction": "Is it positive?", "output": "yes", "task": "sentiment140", "category": "sentiment"},
    {"instruction": "Fix: helloworld", "output": "hello world", "task": "word_segment", "category": "text_formatting"},
]
DOLLY = [
    {"instruction": "Summarise", "context": "A long text.", "response": "Short.", "category": "summarization"},
    {"instruction": "Name a colour", "context": "", "response": "Blue", "category": "open_qa"},
]


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_llm_adapters_json_needs_task_and_normalises(tmp_path):
    f = write_json(tmp_path / "test.json", LLM_ADAPTERS)
    exs = load_examples(f, task="boolq")
    assert exs == [
        Example("boolq/test/0", "boolq", "Q1 true or false", "", "the correct answer is true", "true"),
        Example("boolq/test/1", "boolq", "Q2", "ctx", "the correct answer is false", "false"),
    ]
    with pytest.raises(RecordError, match=r"test\.json: record 0: no task"):
        load_examples(f)


def test_flan_jsonl_takes_category_as_task(tmp_path):
    f = write_jsonl(tmp_path / "test.jsonl", FLAN)
    exs = load_examples(f)
    assert [(e.id, e.task, e.input, e.output, e.answer) for e in exs] == [
        ("sentiment/test/0", "sentiment", "", "yes", None),
        ("text_formatting/test/1", "text_formatting", "", "hello world", None),
    ]
    # a caller-given task overrides the record's
    assert {e.task for e in load_examples(f, task="mine")} == {"mine"}


def test_dolly_context_becomes_input(tmp_path):
    f = write_json(tmp_path / "dolly.json", DOLLY)
    exs = load_examples(f)
    assert exs[0] == Example("summarization/dolly/0", "summarization", "Summarise", "A long text.", "Short.", None)
    assert exs[1].input == "" and exs[1].output == "Blue" and exs[1].task == "open_qa"


def test_detect_format_by_keys():
    assert detect_format(LLM_ADAPTERS[0]).name == "llm_adapters"
    assert detect_format(FLAN[0]).name == "flan"
    assert detect_format(DOLLY[0]).name == "dolly"
    with pytest.raises(RecordError, match=r"cannot recognise.*\['label', 'question'\]"):
        detect_format({"question": "q", "label": "a"})


def test_user_field_mapping(tmp_path):
    recs = [{"question": "2+2?", "label": 4, "kind": "math"}, {"question": "3+3?", "label": "6", "kind": "math"}]
    f = write_jsonl(tmp_path / "qa.jsonl", recs)
    exs = load_examples(f, {"instruction": "question", "output": "label", "answer": "label", "task": "kind"})
    assert [(e.id, e.instruction, e.output, e.answer) for e in exs] == [
        ("math/qa/0", "2+2?", "4", "4"),
        ("math/qa/1", "3+3?", "6", "6"),
    ]
    with pytest.raises(KeyError, match="unknown field"):
        RecordFormat.from_mapping({"instruction": "q", "output": "a", "prompt": "p"})
    with pytest.raises(KeyError, match="'output'"):
        RecordFormat.from_mapping({"instruction": "q"})
    with pytest.raises(KeyError, match="unknown record format 'alpacca'"):
        load_examples(f, "alpacca", task="t")


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_examples(missing, task="t")


def test_malformed_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(FLAN[0]) + "\n\n" + '{"instruction": "x", "output": \n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"bad\.jsonl: line 3: malformed JSON"):
        read_records(f)
    f.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(RecordError, match="record 0: expected a JSON object"):
        read_records(f)


def test_malformed_json_and_non_array(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('[\n  {"instruction": "x",\n  "output": }\n]', encoding="utf-8")
    with pytest.raises(RecordError, match=r"bad\.json: malformed JSON at line 3"):
        read_records(f)
    f.write_text('{"instruction": "x"}', encoding="utf-8")
    with pytest.raises(RecordError, match="expected a JSON array"):
        read_records(f)
    f.write_text('[{"instruction": "x", "output": "y"}, "oops"]', encoding="utf-8")
    with pytest.raises(RecordError, match="record 1: expected a JSON object"):
        read_records(f)


def test_missing_required_field_names_file_record_and_field(tmp_path):
    recs = [dict(FLAN[0]), {"instruction": "no output here", "category": "x"}]
    f = write_json(tmp_path / "train.json", recs)
    with pytest.raises(RecordError, match=r"train\.json: record 1: missing required field 'output'"):
        load_examples(f)
    recs = [dict(DOLLY[0]), {"context": "", "response": "r", "category": "c"}]
    f = write_json(tmp_path / "d.json", recs)
    with pytest.raises(RecordError, match=r"d\.json: record 1: missing required field 'instruction'"):
        load_examples(f, "dolly")


def test_empty_task_and_bad_values(tmp_path):
    recs = [dict(FLAN[0]), dict(FLAN[1], category="  ")]
    f = write_json(tmp_path / "t.json", recs)
    with pytest.raises(RecordError, match=r"record 1 \(field 'category'\): empty task"):
        load_examples(f)
    with pytest.raises(RecordError, match="empty task"):
        load_examples(write_json(tmp_path / "u.json", LLM_ADAPTERS), task="")
    recs = [dict(FLAN[0], output=["list"])]
    with pytest.raises(RecordError, match=r"record 0: field 'output' must be text"):
        load_examples(write_json(tmp_path / "v.json", recs))
    recs = [dict(FLAN[0], instruction="   ")]
    with pytest.raises(RecordError, match=r"record 0: field 'instruction' is empty"):
        load_examples(write_json(tmp_path / "w.json", recs))


def test_ids_unique_across_files_and_duplicates_detected(tmp_path):
    a = load_examples(write_json(tmp_path / "a.json", FLAN))
    b = load_examples(write_json(tmp_path / "b.json", FLAN))
    check_unique_ids(a + b)
    with pytest.raises(ValueError, match="duplicate example id 'sentiment/a/0'"):
        check_unique_ids(a + a)
    assert list(group_by_task(a + b)) == ["sentiment", "text_formatting"]
    assert [e.id for e in group_by_task(a + b)["sentiment"]] == ["sentiment/a/0", "sentiment/b/0"]


def test_hf_datasets_json_builder_matches_file_reader(tmp_path):
    f = write_jsonl(tmp_path / "flan.jsonl", FLAN)
    via_hf = load_hf_dataset("json", split="train", data_files=str(f), source="flan")
    assert via_hf == load_examples(f)
    f2 = write_json(tmp_path / "la.json", LLM_ADAPTERS)
    via_hf = load_hf_dataset("json", split="train", task="boolq", data_files=str(f2))
    assert [e.id for e in via_hf] == ["boolq/json-train/0", "boolq/json-train/1"]
    assert [e.answer for e in via_hf] == ["true", "false"]


def test_records_to_examples_empty_and_bad_source():
    assert records_to_examples([], task="t") == []
    with pytest.raises(ValueError, match="must not contain '/'"):
        records_to_examples(FLAN, source="a/b")


@needs_shared
def test_load_task_dir_flan_layout():
    root = SHARED_DATA / "flan8-crossdomain"
    train = load_task_dir(root, "train")
    test = load_task_dir(root, "test")
    expected = [
        "common_sense", "entailment", "open_domain_qa", "paraphrase",
        "reading_comprehension", "sentiment", "summarization", "text_formatting",
    ]
    # README: 8 x 300 train records, 200 test records per category
    assert {t: len(v) for t, v in group_by_task(train).items()} == {t: 300 for t in expected}
    assert {t: len(v) for t, v in group_by_task(test).items()} == {t: 200 for t in expected}
    # client file i holds category i (README order)
    assert train[0].id == "common_sense/local_training_0/0"
    assert train[300 * 7].task == "text_formatting"
    sub = load_task_dir(root, "test", tasks=["sentiment"])
    assert len(sub) == 200 and {e.task for e in sub} == {"sentiment"}
    with pytest.raises(KeyError, match="nonesuch"):
        load_task_dir(root, "test", tasks=["nonesuch"])


@needs_shared
def test_load_task_dir_llm_adapters_layout():
    root = SHARED_DATA / "commonsense"
    train = load_task_dir(root, "train")
    counts = {t: len(v) for t, v in group_by_task(train).items()}
    assert counts == {"ARC-Challenge": 1119, "ARC-Easy": 2251, "boolq": 9427, "openbookqa": 4957}
    test = load_task_dir(root, "test", tasks=["boolq", "piqa"])
    assert {t: len(v) for t, v in group_by_task(test).items()} == {"boolq": 3270, "piqa": 1838}
    assert test[0].id == "boolq/test/0" and test[0].answer in ("true", "false")
    with pytest.raises(FileNotFoundError, match=r"no train file for task\(s\) \[.piqa.\]"):
        load_task_dir(root, "train", tasks=["piqa"])


def test_load_task_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="task directory not found"):
        load_task_dir(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no data layout found: neither local_training_"):
        load_task_dir(tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        load_task_dir(tmp_path, "dev")


def _recs(n, task_key="category", task="qa"):
    return [{"instruction": f"q{i}", "output": f"a{i}", task_key: task} for i in range(n)]


def test_json_array_in_a_jsonl_file_and_lines_in_a_json_file(tmp_path):
    arr = tmp_path / "array.jsonl"
    arr.write_text(json.dumps(_recs(3), indent=1))  # a JSON array, named .jsonl
    assert [r["instruction"] for r in read_records(arr)] == ["q0", "q1", "q2"]
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(r) for r in _recs(2)) + "\n")
    assert len(read_records(lines)) == 2
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(_recs(1)[0]))
    assert len(read_records(one)) == 1
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"data": _recs(1)}))
    with pytest.raises(RecordError, match="expected a JSON array of records, got dict"):
        read_records(obj)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "x",\n "output": }]')
    with pytest.raises(RecordError, match=r"broken\.json: malformed JSON at line 2"):
        read_records(broken)
    with pytest.raises(IsADirectoryError, match="is a folder; give a records file"):
        read_records(tmp_path)


@pytest.mark.parametrize("key", ["task", "category", "task_type", "class"])
def test_task_field_names(tmp_path, key):
    f = tmp_path / "r.json"
    f.write_text(json.dumps(_recs(2, key, "mc")))
    assert {e.task for e in load_examples(f)} == {"mc"}


def test_task_field_named_by_the_user(tmp_path):
    f = tmp_path / "r.json"
    recs = [{"instruction": "q", "output": "a", "category": "wrong", "subject": "algebra"}]
    f.write_text(json.dumps(recs))
    assert load_examples(f, task_field="subject")[0].task == "algebra"
    assert load_examples(f)[0].task == "wrong"
    with pytest.raises(RecordError, match=r"none of the task field\(s\) \['topic'\]"):
        load_examples(f, task_field="topic")


@pytest.mark.parametrize("test_name", ["test.jsonl", "test.json", "global_test.json", "global_test.jsonl"])
def test_every_test_file_name_is_found(tmp_path, test_name):
    for i, task in enumerate(("qa", "summ")):
        (tmp_path / f"local_training_{i}.json").write_text(json.dumps(_recs(3, task=task)))
    (tmp_path / test_name).write_text(json.dumps(_recs(2, task="qa") + _recs(1, task="summ")))
    assert split_file(tmp_path, "test") == tmp_path / test_name
    test = load_task_dir(tmp_path, "test")
    assert [e.task for e in test] == ["qa", "qa", "summ"]
    assert len(load_task_dir(tmp_path, "train")) == 6


def test_one_file_per_split_layout_and_missing_split(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in _recs(4, "task_type", "x")))
    assert len(load_task_dir(tmp_path, "train")) == 4
    with pytest.raises(FileNotFoundError, match="nor test.jsonl / test.json / global_test.json"):
        load_task_dir(tmp_path, "test")
    assert split_file(tmp_path, "test", required=False) is None
