"""Task records, prompt templates, tokenisation and task mixing, and the demo's generated tasks."""

from __future__ import annotations

from .records import (
    KNOWN_FORMATS,
    Example,
    RecordError,
    RecordFormat,
    check_unique_ids,
    group_by_task,
    load_examples,
    load_hf_dataset,
    load_task_dir,
    read_records,
    records_to_examples,
)
from .synthetic import DEMO_TASK_KINDS, DEMO_TASKS, make_demo_tasks
from .templates import (
    ALPACA_SHORT,
    ChatTemplate,
    PromptTemplate,
    TemplateError,
    get_template,
    load_template,
)
from .tokenize import (
    IGNORE_INDEX,
    MultiTaskCollator,
    TaskMixSampler,
    encode_prompt,
    mix_examples,
    mixed_indices,
    task_names_of,
    task_weights,
    tokenize_example,
    tokenize_examples,
)

__all__ = [
    "KNOWN_FORMATS",
    "Example",
    "RecordError",
    "RecordFormat",
    "check_unique_ids",
    "group_by_task",
    "load_examples",
    "load_hf_dataset",
    "load_task_dir",
    "read_records",
    "records_to_examples",
    "DEMO_TASK_KINDS",
    "DEMO_TASKS",
    "make_demo_tasks",
    "ALPACA_SHORT",
    "ChatTemplate",
    "PromptTemplate",
    "TemplateError",
    "get_template",
    "load_template",
    "IGNORE_INDEX",
    "MultiTaskCollator",
    "TaskMixSampler",
    "encode_prompt",
    "mix_examples",
    "mixed_indices",
    "task_names_of",
    "task_weights",
    "tokenize_example",
    "tokenize_examples",
]
