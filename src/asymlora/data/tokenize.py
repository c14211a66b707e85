"""Tokenisation with the loss on the response only, padding and packing collators, and task-mixing
samplers.

The prompt and the response are tokenised separately and concatenated. This keeps the boundary
exact (no merge across it), and the prompt tokens are then the very tokens the model is given at
generation time.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch.utils.data import Sampler

from .records import DataWarning, Example
from .templates import Template, get_template

__all__ = [
    "IGNORE_INDEX",
    "encode_prompt",
    "tokenize_example",
    "tokenize_examples",
    "task_names_of",
    "MultiTaskCollator",
    "PackingCollator",
    "task_weights",
    "task_quotas",
    "mixed_indices",
    "mix_examples",
    "TaskMixSampler",
]

IGNORE_INDEX = -100


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def encode_prompt(tokenizer: Any, template: Template, example: Example) -> list[int]:
    """Token ids of an example's prompt, exactly as used for training and generation."""
    prompt = template.format_prompt(example.instruction, example.input)
    return _ids(tokenizer, prompt, template.add_special_tokens)


def tokenize_example(
    example: Example,
    tokenizer: Any,
    template: Template | str | None = None,
    cutoff_len: int = 256,
    train_on_prompt: bool = False,
    add_eos: bool = True,
    task_id: int | None = None,
) -> dict[str, Any]:
    """input_ids / attention_mask / labels for one example (labels -100 on the prompt).

    The sequence is prompt + response + EOS, then cut at `cutoff_len` from the right: a response
    that does not fit loses its EOS too, so the model is never taught to stop early.
    """
    if cutoff_len < 1:
        raise ValueError(f"cutoff_len must be >= 1, got {cutoff_len}")
    template = get_template(template, tokenizer)
    prompt_ids = encode_prompt(tokenizer, template, example)
    response_ids = _ids(tokenizer, example.output, add_special_tokens=False)
    if add_eos:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token_id; set one")
        response_ids = response_ids + [eos]
    input_ids = (prompt_ids + response_ids)[:cutoff_len]
    if train_on_prompt:
        labels = list(input_ids)
    else:
        labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:cutoff_len]
    out: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": labels,
    }
    if task_id is not None:
        out["task_id"] = task_id
    return out


def task_names_of(examples: Sequence[Example]) -> list[str]:
    """Sorted task names: the default task index, stable between train and test sets."""
    return sorted({ex.task for ex in examples})


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    template: Template | str | None = None,
    cutoff_len: int = 256,
    train_on_prompt: bool = False,
    add_eos: bool = True,
    task_names: Sequence[str] | None = None,
    drop_without_target: bool = True,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Tokenise many examples; each feature carries `task_id` (index into the returned task list).

    With `drop_without_target`, examples with an empty response (nothing to learn but the stop)
    and examples whose prompt fills the whole cut-off (no response token left: a batch of them
    would give a NaN loss) are dropped. Nothing is dropped or cut silently: a `DataWarning` counts
    the dropped examples and those whose response was cut at `cutoff_len`.
    """
    template = get_template(template, tokenizer)
    names = list(task_names) if task_names is not None else task_names_of(examples)
    index = {t: i for i, t in enumerate(names)}
    features = []
    empty, no_room, cut = [], [], 0
    for ex in examples:
        if ex.task not in index:
            raise KeyError(f"example {ex.id!r}: task {ex.task!r} not in task list {names}")
        if drop_without_target and not ex.output.strip():
            empty.append(ex.id)
            continue
        feat = tokenize_example(
            ex, tokenizer, template, cutoff_len, train_on_prompt, add_eos, task_id=index[ex.task]
        )
        if drop_without_target and all(x == IGNORE_INDEX for x in feat["labels"]):
            no_room.append(ex.id)
            continue
        cut += add_eos and len(feat["input_ids"]) == cutoff_len and feat["input_ids"][-1] != tokenizer.eos_token_id
        features.append(feat)
    _report(len(examples), cutoff_len, empty, no_room, cut)
    return features, names


def _report(total: int, cutoff_len: int, empty: list[str], no_room: list[str], cut: int) -> None:
    """One warning saying what tokenisation dropped or cut, with example ids."""
    parts = []
    if empty:
        parts.append(f"dropped {len(empty)} with an empty response (e.g. {empty[:3]})")
    if no_room:
        parts.append(f"dropped {len(no_room)} whose prompt fills the cut-off of {cutoff_len} tokens "
                     f"(e.g. {no_room[:3]}; raise cutoff_len)")
    if cut:
        parts.append(f"cut the response of {cut} at {cutoff_len} tokens")
    if parts:
        kept = total - len(empty) - len(no_room)
        warnings.warn(f"{total} examples: " + "; ".join(parts) + f"; {kept} are used", DataWarning, stacklevel=3)


def _task_ids(features: Sequence[Mapping[str, Any]]) -> Any:
    import torch

    missing = [i for i, f in enumerate(features) if "task_id" not in f]
    if missing:
        raise KeyError(f"feature(s) {missing} have no 'task_id' (tokenize with a task list)")
    return torch.tensor([int(f["task_id"]) for f in features])


class MultiTaskCollator:
    """Pads a list of features to one batch and carries `task_ids`.

    Right padding for training (positions stay 0..n-1 for real tokens), left padding for
    generation (every prompt ends at the last column, where new tokens are appended).
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_side: str = "right",
        label_pad_token_id: int = IGNORE_INDEX,
        pad_to_multiple_of: int | None = None,
        return_task_ids: bool = True,
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: set tokenizer.pad_token (e.g. to eos)")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.label_pad_token_id = label_pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_task_ids = return_task_ids

    def _pad(self, seq: Sequence[int], length: int, value: int) -> list[int]:
        pad = [value] * (length - len(seq))
        return pad + list(seq) if self.padding_side == "left" else list(seq) + pad

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            raise ValueError("cannot collate an empty batch")
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = int(math.ceil(length / m) * m)
        has_labels = ["labels" in f for f in features]
        if any(has_labels) and not all(has_labels):
            raise ValueError("some features have labels and some do not")
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([self._pad(f["input_ids"], length, self.pad_token_id) for f in features]),
            "attention_mask": torch.tensor(
                [
                    self._pad(f.get("attention_mask", [1] * len(f["input_ids"])), length, 0)
                    for f in features
                ]
            ),
        }
        if all(has_labels):
            for i, f in enumerate(features):
                if len(f["labels"]) != len(f["input_ids"]):
                    raise ValueError(
                        f"feature {i}: labels length {len(f['labels'])} != "
                        f"input_ids length {len(f['input_ids'])}"
                    )
            batch["labels"] = torch.tensor(
                [self._pad(f["labels"], length, self.label_pad_token_id) for f in features]
            )
        if self.return_task_ids:
            batch["task_ids"] = _task_ids(features)
        return batch


class PackingCollator:
    """Packs a batch's examples into rows with no padding between them.

    Why: with short responses most of a padded batch is padding; packing spends the compute on real
    tokens only. Each example keeps positions 0..n-1 and attends only to itself: there is no
    attention mask, and Transformers reads the restarts in `position_ids` as sequence boundaries
    (a block-diagonal causal mask), so a packed batch gives the same loss as the padded one.

    The layout is chosen per batch: for every row count k, the examples go longest first to the
    least-filled of k rows, and the rows are as long as the fullest (rounded up to
    `pad_to_multiple_of`, at most `row_len`). The cheapest layout wins: rows x length tokens, each
    costing `1 + length / attention_positions` (attention grows with the row; `attention_positions`
    None counts tokens only), ties to shorter rows. One example per row is among the layouts, so a
    packed batch is never larger than the padded one. The tail of a row is padding that forms its
    own block with label -100. An example's first label is dropped, as the shift of a padded batch
    drops it: in a packed row it would be predicted from the end of the previous example.
    """

    def __init__(self, pad_token_id: int, row_len: int, label_pad_token_id: int = IGNORE_INDEX,
                 return_task_ids: bool = True, pad_to_multiple_of: int = 8,
                 attention_positions: float | None = None) -> None:
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: set tokenizer.pad_token (e.g. to eos)")
        if row_len < 1:
            raise ValueError(f"row_len must be >= 1, got {row_len}")
        self.pad_token_id = int(pad_token_id)
        if pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        if attention_positions is not None and not attention_positions > 0:
            raise ValueError(f"attention_positions must be > 0 or None, got {attention_positions}")
        self.row_len = int(row_len)
        self.label_pad_token_id = label_pad_token_id
        self.return_task_ids = return_task_ids
        self.pad_to_multiple_of = int(pad_to_multiple_of)
        self.attention_positions = attention_positions

    def _check_lengths(self, lengths: Sequence[int]) -> None:
        longest = max(lengths)
        if longest > self.row_len:
            i = list(lengths).index(longest)
            raise ValueError(f"feature {i} has {longest} tokens, more than the row length {self.row_len}: "
                             "tokenise with cutoff_len <= the packing row length")

    def _rounded(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return -(-n // m) * m

    def _balanced(self, lengths: Sequence[int], k: int) -> tuple[int, list[list[int]]]:
        """Longest first, each to the least-filled of k rows; returns (row length, rows)."""
        rows: list[list[int]] = [[] for _ in range(k)]
        fill = [0] * k
        for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
            r = min(range(k), key=lambda q: (fill[q], q))
            rows[r].append(i)
            fill[r] += lengths[i]
        return min(self.row_len, self._rounded(max(fill))), [r for r in rows if r]

    def layout(self, lengths: Sequence[int]) -> tuple[int, list[list[int]]]:
        """(row length, indices of the examples in each row) of the cheapest layout."""
        self._check_lengths(lengths)
        best: tuple[float, int, list[list[int]]] | None = None
        for k in range(max(1, -(-sum(lengths) // self.row_len)), len(lengths) + 1):
            length, rows = self._balanced(lengths, k)
            if any(sum(lengths[i] for i in row) > length for row in rows):
                continue  # does not fit under row_len with k rows
            per_token = 1.0 + (length / self.attention_positions if self.attention_positions else 0.0)
            cost = len(rows) * length * per_token
            if best is None or (cost, length) < (best[0], best[1]):
                best = (cost, length, rows)
        assert best is not None  # k = len(lengths) always fits: one example per row
        return best[1], best[2]

    def length_of_rows(self, lengths: Sequence[int]) -> int:
        return self.layout(lengths)[0]

    def rows_of(self, lengths: Sequence[int]) -> list[list[int]]:
        return self.layout(lengths)[1]

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            raise ValueError("cannot collate an empty batch")
        for i, f in enumerate(features):
            if "labels" not in f:
                raise ValueError(f"feature {i} has no labels: packing is for training batches")
            if len(f["labels"]) != len(f["input_ids"]):
                raise ValueError(f"feature {i}: labels length {len(f['labels'])} != "
                                 f"input_ids length {len(f['input_ids'])}")
        lengths = [len(f["input_ids"]) for f in features]
        row_len, layout = self.layout(lengths)
        ids, labels, positions = [], [], []
        for row in layout:
            r_ids: list[int] = []
            r_lab: list[int] = []
            r_pos: list[int] = []
            for i in row:
                n = len(features[i]["input_ids"])
                r_ids += list(features[i]["input_ids"])
                # a label on an example's first token would be predicted from the previous example
                r_lab += [self.label_pad_token_id] + list(features[i]["labels"])[1:]
                r_pos += list(range(n))
            tail = row_len - len(r_ids)
            r_ids += [self.pad_token_id] * tail
            r_lab += [self.label_pad_token_id] * tail
            r_pos += list(range(tail))
            ids.append(r_ids)
            labels.append(r_lab)
            positions.append(r_pos)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor(ids),
            "position_ids": torch.tensor(positions),
            "labels": torch.tensor(labels),
            # Transformers reads the boundaries from position_ids only when no KV cache is made
            "use_cache": False,
        }
        if self.return_task_ids:
            batch["task_ids"] = _task_ids(features)
        return batch


def task_weights(
    sizes: Mapping[str, int], strategy: str = "proportional", temperature: float | None = None
) -> dict[str, float]:
    """Sampling probability per task.

    proportional: p_k = n_k / N (every example equally likely); balanced: p_k = 1 / K;
    temperature T: p_k proportional to n_k^(1/T) (T = 1 proportional, T -> inf balanced).
    """
    if not sizes:
        raise ValueError("no tasks to weight")
    for t, n in sizes.items():
        if n <= 0:
            raise ValueError(f"task {t!r} has no examples")
    if temperature is not None:
        if strategy != "temperature":
            raise ValueError("temperature is only used with strategy='temperature'")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
    if strategy == "proportional":
        raw = {t: float(n) for t, n in sizes.items()}
    elif strategy == "balanced":
        raw = {t: 1.0 for t in sizes}
    elif strategy == "temperature":
        if temperature is None:
            raise ValueError("strategy 'temperature' needs a temperature")
        raw = {t: float(n) ** (1.0 / temperature) for t, n in sizes.items()}
    else:
        raise ValueError(
            f"unknown sampling strategy {strategy!r}; use 'proportional', 'balanced' or 'temperature'"
        )
    total = sum(raw.values())
    return {t: w / total for t, w in raw.items()}


def task_quotas(weights: Mapping[str, float], num_samples: int) -> dict[str, int]:
    """Integer draws per task summing to num_samples (largest-remainder rounding, ties by order)."""
    exact = {t: w * num_samples for t, w in weights.items()}
    quotas = {t: int(math.floor(v)) for t, v in exact.items()}
    left = num_samples - sum(quotas.values())
    order = sorted(exact, key=lambda t: -(exact[t] - quotas[t]))
    for t in order[:left]:
        quotas[t] += 1
    return quotas


def mixed_indices(
    task_of: Sequence[Any],
    strategy: str = "proportional",
    seed: int = 0,
    num_samples: int | None = None,
    temperature: float | None = None,
) -> list[int]:
    """A shuffled list of example indices mixing tasks at the chosen rates.

    Each task contributes its quota by walking through fresh random permutations of its
    examples, so an example repeats only after all of its task's examples were drawn.
    With 'proportional' and the default num_samples (all examples) this is a plain shuffle.
    """
    by_task: dict[Any, list[int]] = {}
    for i, t in enumerate(task_of):
        by_task.setdefault(t, []).append(i)
    n = len(task_of) if num_samples is None else num_samples
    if n < 0:
        raise ValueError(f"num_samples must be >= 0, got {n}")
    weights = task_weights({t: len(v) for t, v in by_task.items()}, strategy, temperature)
    quotas = task_quotas(weights, n)
    rng = random.Random(seed)
    out: list[int] = []
    for t, members in by_task.items():
        need = quotas[t]
        while need > 0:
            perm = members[:]
            rng.shuffle(perm)
            out.extend(perm[:need])
            need -= len(perm[:need])
    rng.shuffle(out)
    return out


def mix_examples(
    examples: Sequence[Example],
    strategy: str = "proportional",
    seed: int = 0,
    num_samples: int | None = None,
    temperature: float | None = None,
) -> list[Example]:
    """The mixed training list of examples (see `mixed_indices`)."""
    idx = mixed_indices([ex.task for ex in examples], strategy, seed, num_samples, temperature)
    return [examples[i] for i in idx]


class TaskMixSampler(Sampler):
    """Sampler over a tokenised dataset mixing tasks; a new mix each epoch (`set_epoch`)."""

    def __init__(
        self,
        task_ids: Sequence[Any],
        strategy: str = "proportional",
        num_samples: int | None = None,
        seed: int = 0,
        temperature: float | None = None,
    ) -> None:
        self.task_ids = list(task_ids)
        self.strategy = strategy
        self.num_samples = len(self.task_ids) if num_samples is None else num_samples
        self.seed = seed
        self.temperature = temperature
        self.epoch = 0
        # validate now rather than at the first iteration
        mixed_indices(self.task_ids, strategy, seed, 0, temperature)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        seed = self.seed * 1_000_003 + self.epoch
        return iter(
            mixed_indices(self.task_ids, self.strategy, seed, self.num_samples, self.temperature)
        )

    def __len__(self) -> int:
        return self.num_samples
