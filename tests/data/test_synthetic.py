from __future__ import annotations

from collections import Counter

import pytest

from asymlora.data.synthetic import DEMO_TASK_KINDS, DEMO_TASKS, make_demo_tasks


def _solve(task: str, inp: str) -> str | None:
    """An independent solver for the deterministic skills."""
    if task == "reverse":
        return "".join(reversed(inp))
    if task == "uppercase":
        return inp.upper()
    if task == "count_letters":
        return str(sum(c.isalpha() for c in inp))
    if task == "add":
        a, b = inp.split(" + ")
        return str(int(a) + int(b))
    if task == "sort":
        return ", ".join(str(x) for x in sorted(int(v) for v in inp.split(", ")))
    return None  # 'opposite' is a lookup, checked for consistency below


def test_shapes_tasks_and_ids():
    train, test = make_demo_tasks(20, 5, seed=0)
    assert 4 <= len(DEMO_TASKS) <= 6
    assert Counter(e.task for e in train) == {t: 20 for t in DEMO_TASKS}
    assert Counter(e.task for e in test) == {t: 5 for t in DEMO_TASKS}
    ids = [e.id for e in train + test]
    assert len(set(ids)) == len(ids)
    assert set(DEMO_TASK_KINDS) == set(DEMO_TASKS)
    # each task has its own instruction, so tasks are distinguishable from the prompt
    assert len({DEMO_TASKS[t].instruction for t in DEMO_TASKS}) == len(DEMO_TASKS)


def test_answers_are_correct():
    train, test = make_demo_tasks(30, 10, seed=1)
    for e in train + test:
        assert e.output == e.answer
        expected = _solve(e.task, e.input)
        if expected is not None:
            assert e.answer == expected, e
    # the opposite mapping is a function (one answer per input) and symmetric
    pairs = {(e.input, e.answer) for e in train + test if e.task == "opposite"}
    mapping = dict(pairs)
    assert len(mapping) == len(pairs)
    for a, b in pairs:
        assert mapping.get(b, a) == a


@pytest.mark.parametrize("seed", [0, 7])
def test_test_prompts_never_in_train(seed):
    train, test = make_demo_tasks(100, 40, seed=seed)
    train_prompts = {(e.instruction, e.input) for e in train}
    assert not any((e.instruction, e.input) in train_prompts for e in test)
    # within a split, no duplicated items either
    assert len(train_prompts) == len(train)


def test_seeded_and_subset():
    a = make_demo_tasks(10, 5, seed=3)
    assert a == make_demo_tasks(10, 5, seed=3)
    assert a != make_demo_tasks(10, 5, seed=4)
    train, test = make_demo_tasks(4, 2, seed=0, tasks=["add", "sort"])
    assert {e.task for e in train + test} == {"add", "sort"}


def test_errors():
    with pytest.raises(KeyError, match=r"unknown demo task\(s\) \['multiply'\]"):
        make_demo_tasks(1, 1, tasks=["multiply"])
    pool = DEMO_TASKS["reverse"].pool_size
    with pytest.raises(ValueError, match=f"'reverse' has only {pool} distinct items"):
        make_demo_tasks(pool, 1, tasks=["reverse"])
    with pytest.raises(ValueError, match=">= 0"):
        make_demo_tasks(-1, 1)
