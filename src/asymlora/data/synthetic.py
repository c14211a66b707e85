"""The demo's generated multi-task set: distinct small skills with short, deterministic answers.

Each skill has a fixed instruction (so the task is recognisable from the prompt) and items drawn
from a seeded generator. Test items are drawn first and training items are drawn from what is
left, so no test prompt ever appears in training.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .records import Example

__all__ = ["DemoTask", "DEMO_TASKS", "DEMO_TASK_KINDS", "make_demo_tasks"]

# Common English words (3-8 letters, lowercase, distinct).
_WORDS = """
apple river stone bread chair table house music light water green happy
tiger horse mouse candle pencil garden window forest planet rocket silver golden
orange yellow purple winter summer spring autumn basket bottle button camera castle
cookie dragon engine finger flower guitar hammer island jacket kitten ladder lemon
market monkey needle office parrot pepper pillow pocket rabbit ribbon saddle school
shadow spider sponge statue sugar ticket tomato tunnel turtle valley violin wallet
wizard anchor bridge carpet cotton desert doctor farmer feather hunter jungle kettle
mirror nickel orbit palace pirate puzzle quartz rescue rubber sailor
blanket cabbage chicken dolphin giraffe harbor lantern magnet napkin oyster peanut
pumpkin raisin salmon teapot thunder umbrella vessel walnut zipper bucket cactus
cherry cloud crown daisy eagle fabric galaxy honey igloo jewel koala lizard maple
noodle olive panda quilt robin salad tulip unicorn velvet whale yogurt zebra acorn
bamboo canyon dinner elbow fossil glove helmet insect jigsaw kayak lobster meadow
nectar otter pebble radish scarf thimble vase wagon beacon comet dune ember fjord
""".split()
_WORDS = list(dict.fromkeys(_WORDS))

# Opposite pairs; each is used in both directions.
_OPPOSITES = """
hot cold big small fast slow happy sad light dark open closed early late full empty
high low rich poor strong weak young old wet dry hard soft loud quiet long short
thick thin clean dirty true false win lose push pull buy sell enter exit
begin end first last inside outside above below before after day night up down left
right love hate friend enemy question answer arrive leave remember forget accept refuse
increase decrease include exclude maximum minimum victory defeat ancient modern brave
cowardly cheap expensive deep shallow wide narrow sharp dull smooth rough sweet sour
north south east west always never asleep awake absent present borrow lend give take
add subtract safe dangerous generous selfish polite rude rise fall shout whisper
arrival departure ascend descend attack defend awkward graceful bitter mild blunt pointed
calm nervous capture release careful careless sunrise sunset vertical horizontal import export
major minor plural singular positive negative public private rural urban solid liquid
wild tame guilty innocent temporary permanent visible invisible wise foolish worst best
""".split()
_PAIRS = list(zip(_OPPOSITES[0::2], _OPPOSITES[1::2]))
# Every word in one pair only, so each input has exactly one right answer.
assert len(set(_OPPOSITES)) == len(_OPPOSITES) and len(_OPPOSITES) % 2 == 0


@dataclass(frozen=True)
class DemoTask:
    """One skill: its instruction, its item generator, and how it is scored."""

    name: str
    instruction: str
    kind: str  # metric kind for asymlora.evaluate.score_task
    draw: Callable[[random.Random], tuple[str, str]]  # -> (input, answer)
    pool_size: int  # number of distinct inputs the generator can produce


def _reverse(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(_WORDS)
    return w, w[::-1]


def _upper(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(_WORDS)
    return w, w.upper()


def _count(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(_WORDS)
    return w, str(len(w))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{a} + {b}", str(a + b)


def _sort(rng: random.Random) -> tuple[str, str]:
    nums = rng.sample(range(1, 100), 3)
    return ", ".join(map(str, nums)), ", ".join(map(str, sorted(nums)))


def _opposite(rng: random.Random) -> tuple[str, str]:
    a, b = rng.choice(_PAIRS)
    return (a, b) if rng.random() < 0.5 else (b, a)


DEMO_TASKS: dict[str, DemoTask] = {
    t.name: t
    for t in (
        DemoTask("reverse", "Write the word backwards, letter by letter.", "exact", _reverse, len(_WORDS)),
        DemoTask("uppercase", "Write the word in capital letters.", "exact", _upper, len(_WORDS)),
        DemoTask("count_letters", "How many letters does the word have?", "exact", _count, len(_WORDS)),
        DemoTask("add", "Add the two numbers.", "exact", _add, 100 * 100),
        DemoTask("sort", "Sort the numbers from smallest to largest.", "exact", _sort, 99 * 98 * 97),
        DemoTask("opposite", "Give the opposite of the word.", "exact", _opposite, 2 * len(_PAIRS)),
    )
}
DEMO_TASK_KINDS: dict[str, str] = {name: t.kind for name, t in DEMO_TASKS.items()}


def _draw_distinct(task: DemoTask, n: int, rng: random.Random, taken: set[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    attempts = 0
    limit = 200 * (n + 10)
    while len(out) < n:
        attempts += 1
        if attempts > limit:  # pragma: no cover - guarded by the pool-size check
            raise RuntimeError(f"could not draw {n} distinct items for task {task.name!r}")
        inp, ans = task.draw(rng)
        if inp in taken:
            continue
        taken.add(inp)
        out.append((inp, ans))
    return out


def make_demo_tasks(
    n_train_per_task: int,
    n_test_per_task: int,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
) -> tuple[list[Example], list[Example]]:
    """Generate (train, test) examples for the demo skills, test inputs disjoint from train.

    `tasks` picks a subset of DEMO_TASKS (default: all). The gold answer is both `output` (for
    training) and `answer` (for exact-match scoring, see DEMO_TASK_KINDS).
    """
    if n_train_per_task < 0 or n_test_per_task < 0:
        raise ValueError("example counts must be >= 0")
    names = list(DEMO_TASKS) if tasks is None else list(tasks)
    unknown = [t for t in names if t not in DEMO_TASKS]
    if unknown:
        raise KeyError(f"unknown demo task(s) {unknown}; available: {list(DEMO_TASKS)}")
    if not names:
        raise ValueError("no demo tasks selected")
    train: list[Example] = []
    test: list[Example] = []
    for name in names:
        task = DEMO_TASKS[name]
        need = n_train_per_task + n_test_per_task
        if need > task.pool_size:
            raise ValueError(
                f"demo task {name!r} has only {task.pool_size} distinct items; "
                f"asked for {n_train_per_task} train + {n_test_per_task} test"
            )
        rng = random.Random(f"{seed}/{name}")
        taken: set[str] = set()
        items = _draw_distinct(task, need, rng, taken)
        test_items, train_items = items[:n_test_per_task], items[n_test_per_task:]
        for split, bucket, chosen in (("demo-test", test, test_items), ("demo-train", train, train_items)):
            for i, (inp, ans) in enumerate(chosen):
                bucket.append(Example(f"{name}/{split}/{i}", name, task.instruction, inp, ans, ans))
    return train, test
