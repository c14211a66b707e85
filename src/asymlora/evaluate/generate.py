"""Batched generation and prediction files.

Generation always runs with the model in eval mode (dropout off) under torch.no_grad(), and puts
the model back in the mode it was in. Prompts are left-padded so that every row's last prompt
token is in the last column. Predictions are keyed by example id; prediction files are written
fresh and atomically, one JSON object per line with the id, never appended to an older file.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.records import DataWarning, Example, check_unique_ids
from ..data.templates import Template, get_template
from ..data.tokenize import MultiTaskCollator, encode_prompt
from ..files import write_text_atomic
from .scoring import MAX_NEW_TOKENS, KindSpec, resolve_kinds, score_examples

__all__ = [
    "eval_mode",
    "generate_predictions",
    "write_predictions",
    "read_predictions",
    "EvalResult",
    "evaluate_examples",
    "PREDICTION_FIELDS",
    "generation_lengths",
]

PREDICTION_FIELDS = ("id", "task", "prediction", "gold", "score")


@contextmanager
def eval_mode(model: Any):
    """Eval mode and no_grad for the block; every module's previous mode is restored after.

    Restoring per module (not `model.train(was_training)`) keeps submodules that were
    deliberately in eval mode, e.g. a frozen base beside training adapters, as they were.
    """
    import torch

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, training in modes:
            m.training = training


def _model_device(model: Any) -> Any:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        import torch

        return torch.device("cpu")


LengthSpec = int | Mapping[str, int] | None


def generation_lengths(kinds: Mapping[str, str], max_new_tokens: LengthSpec = None) -> dict[str, int]:
    """New tokens per task: `max_new_tokens` for all, or a mapping by task or metric kind (a task's
    entry wins), the rest the metric's default (`MAX_NEW_TOKENS`: math 256, labels 32)."""
    out = {}
    for task, kind in kinds.items():
        if isinstance(max_new_tokens, int):
            n = max_new_tokens
        elif isinstance(max_new_tokens, Mapping):
            n = max_new_tokens.get(task, max_new_tokens.get(kind, MAX_NEW_TOKENS[kind]))
        else:
            n = MAX_NEW_TOKENS[kind]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"max_new_tokens for task {task!r} must be an integer >= 1, got {n!r}")
        out[task] = n
    return out


def _truncate_prompts(encoded: list[tuple[str, list[int]]], max_prompt_tokens: int | None) -> int:
    """Keep the last `max_prompt_tokens` of each prompt (its end holds the response marker);
    returns how many were cut."""
    if max_prompt_tokens is None:
        return 0
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    cut = 0
    for i, (ex_id, ids) in enumerate(encoded):
        if len(ids) > max_prompt_tokens:
            encoded[i] = (ex_id, ids[-max_prompt_tokens:])
            cut += 1
    return cut


def generate_predictions(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    template: Template | str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    progress: bool = True,
    max_prompt_tokens: int | None = None,
    **generate_kwargs: Any,
) -> dict[str, str]:
    """Greedy (num_beams=1) or beam-search responses, keyed by example id.

    Prompts are sorted by length before batching (less padding); the result is keyed by id, so
    order never matters. Only the newly generated tokens are decoded. Prompts longer than
    `max_prompt_tokens` keep their last tokens, with a warning that says how many were cut.
    """
    from transformers import GenerationConfig

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    check_unique_ids(examples)
    template = get_template(template, tokenizer)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    collate = MultiTaskCollator(pad, padding_side="left", return_task_ids=False)
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=num_beams,
        pad_token_id=pad,
        eos_token_id=eos,
        **generate_kwargs,
    )
    encoded = [(ex.id, encode_prompt(tokenizer, template, ex)) for ex in examples]
    cut = _truncate_prompts(encoded, max_prompt_tokens)
    if cut:
        warnings.warn(f"{cut} of {len(encoded)} prompts are longer than {max_prompt_tokens} tokens: "
                      "they keep their last tokens", DataWarning, stacklevel=2)
    encoded.sort(key=lambda item: len(item[1]))
    batches = [encoded[i : i + batch_size] for i in range(0, len(encoded), batch_size)]
    device = _model_device(model)
    out: dict[str, str] = {}
    iterator: Iterable[list[tuple[str, list[int]]]] = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="generate", unit="batch")
    with eval_mode(model):
        for batch in iterator:
            feats = [{"input_ids": ids} for _, ids in batch]
            enc = collate(feats)
            input_ids = enc["input_ids"].to(device)
            attention_mask = enc["attention_mask"].to(device)
            seqs = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config
            )
            new = seqs[:, input_ids.shape[1] :]
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            for (ex_id, _), text in zip(batch, texts):
                out[ex_id] = text.strip()
    return out


def write_predictions(path: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write prediction records to a fresh JSONL file, atomically (temp file + os.replace).

    Each record needs id, task, prediction, gold and score; ids must be unique. An existing
    file at `path` is replaced as a whole, never appended to.
    """
    path = Path(path)
    rows = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        missing = [k for k in PREDICTION_FIELDS if k not in rec]
        if missing:
            raise KeyError(f"prediction record {i}: missing field(s) {missing}")
        if rec["id"] in seen:
            raise ValueError(f"prediction record {i}: duplicate id {rec['id']!r}")
        seen.add(rec["id"])
        rows.append(json.dumps(dict(rec), ensure_ascii=False))
    return write_text_atomic(path, "".join(row + "\n" for row in rows))


def read_predictions(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a predictions JSONL file into id -> record (duplicate ids are an error)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    out: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {lineno}: malformed JSON ({err.msg})") from err
        if not isinstance(rec, dict) or "id" not in rec or "prediction" not in rec:
            raise ValueError(f"{path}: line {lineno}: expected an object with 'id' and 'prediction'")
        if rec["id"] in out:
            raise ValueError(f"{path}: line {lineno}: duplicate id {rec['id']!r}")
        out[rec["id"]] = rec
    return out


@dataclass
class EvalResult:
    """Per-task scores (percent) and one scored record per example."""

    per_task: dict[str, float]
    records: list[dict[str, Any]] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)  # task -> metric kind

    @property
    def average(self) -> float:
        return sum(self.per_task.values()) / len(self.per_task)


def evaluate_examples(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    kinds: KindSpec = None,
    template: Template | str | None = None,
    predictions_path: str | Path | None = None,
    batch_size: int = 8,
    max_new_tokens: LengthSpec = None,
    num_beams: int = 1,
    progress: bool = True,
    max_prompt_tokens: int | None = None,
) -> EvalResult:
    """Generate, score per task, and (optionally) write the predictions file.

    Each task's metric is settled and checked against its data (`resolve_kinds`) before anything
    is generated; generation length follows the metric unless `max_new_tokens` says otherwise.
    """
    resolved = resolve_kinds(examples, kinds)
    lengths = generation_lengths(resolved, max_new_tokens)
    preds: dict[str, str] = {}
    for n in sorted(set(lengths.values())):
        group = [ex for ex in examples if lengths[ex.task] == n]
        preds.update(generate_predictions(model, tokenizer, group, template, batch_size, n, num_beams, progress,
                                          max_prompt_tokens))
    per_task, records = score_examples(examples, preds, resolved)
    if predictions_path is not None:
        write_predictions(predictions_path, records)
    return EvalResult(per_task, records, resolved)
