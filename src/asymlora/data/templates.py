"""Prompt templates: the paper's `alpaca_short`, user JSON templates, and the model's chat template.

A template turns (instruction, input) into the prompt text; the response follows it. The same
object is used for training and for generation, so both see exactly the same prompt.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .records import Example

__all__ = [
    "TemplateError",
    "Template",
    "PromptTemplate",
    "ChatTemplate",
    "ALPACA_SHORT",
    "BUILTIN_TEMPLATES",
    "load_template",
    "get_template",
    "example_prompt",
]


class TemplateError(ValueError):
    """A template is unusable (missing field, wrong placeholders)."""


# The text of the paper's template (shared/data/templates/alpaca_short.json), embedded so that the
# package works without the benchmark folder.
_ALPACA_SHORT = {
    "description": "A shorter template to experiment with.",
    "prompt_input": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    "prompt_no_input": "### Instruction:\n{instruction}\n\n### Response:\n",
    "response_split": "### Response:",
}


class Template(Protocol):
    """What tokenisation and generation need from any template."""

    name: str
    #: Whether the tokenizer should add its special tokens (BOS) to the prompt; chat templates
    #: write their own.
    add_special_tokens: bool

    def format_prompt(self, instruction: str, input: str = "") -> str: ...


def _placeholders(text: str, where: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:  # unbalanced braces
        raise TemplateError(f"{where}: invalid format string ({err})") from err
    names = set()
    for _, field, spec, conv in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise TemplateError(f"{where}: positional placeholder '{{{field}}}' is not allowed")
        if spec or conv:
            raise TemplateError(f"{where}: placeholder '{{{field}}}' must not carry a format spec")
        names.add(field)
    return names


@dataclass(frozen=True)
class PromptTemplate:
    """An Alpaca-style template: one prompt with an input section and one without."""

    name: str
    prompt_input: str
    prompt_no_input: str
    response_split: str
    description: str = ""
    add_special_tokens: bool = True

    def __post_init__(self) -> None:
        where = f"template {self.name!r}"
        for key, required in (
            ("prompt_input", {"instruction", "input"}),
            ("prompt_no_input", {"instruction"}),
        ):
            text = getattr(self, key)
            if not isinstance(text, str):
                raise TemplateError(f"{where}: {key} must be a string, got {type(text).__name__}")
            found = _placeholders(text, f"{where}, {key}")
            missing = required - found
            if missing:
                raise TemplateError(
                    f"{where}, {key}: missing placeholder(s) "
                    + ", ".join("{" + m + "}" for m in sorted(missing))
                )
            extra = found - required
            if extra:
                raise TemplateError(
                    f"{where}, {key}: unknown placeholder(s) "
                    + ", ".join("{" + m + "}" for m in sorted(extra))
                    + "; allowed: "
                    + ", ".join("{" + m + "}" for m in sorted(required))
                )
        if not isinstance(self.response_split, str) or not self.response_split:
            raise TemplateError(f"{where}: response_split must be a non-empty string")
        if self.response_split not in self.prompt_no_input.format(instruction="x"):
            raise TemplateError(
                f"{where}: response_split {self.response_split!r} does not occur in prompt_no_input"
            )

    def format_prompt(self, instruction: str, input: str = "") -> str:
        if input:
            return self.prompt_input.format(instruction=instruction, input=input)
        return self.prompt_no_input.format(instruction=instruction)

    def extract_response(self, text: str) -> str:
        """The text after the last response marker: for outputs decoded with their prompt."""
        return text.split(self.response_split)[-1].strip()

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "custom") -> PromptTemplate:
        where = f"template {name!r}"
        if not isinstance(data, dict):
            raise TemplateError(f"{where}: expected a JSON object, got {type(data).__name__}")
        required = ("prompt_input", "prompt_no_input", "response_split")
        missing = [k for k in required if k not in data]
        if missing:
            raise TemplateError(f"{where}: missing field(s) {missing}")
        unknown = set(data) - {*required, "description"}
        if unknown:
            raise TemplateError(f"{where}: unknown field(s) {sorted(unknown)}")
        return cls(
            name=name,
            prompt_input=data["prompt_input"],
            prompt_no_input=data["prompt_no_input"],
            response_split=data["response_split"],
            description=data.get("description", ""),
        )


class ChatTemplate:
    """The model's own chat template: instruction (and input) as one user turn.

    The prompt ends with the generation prompt (the assistant header), so the response tokens
    follow directly, as they will at generation time.
    """

    add_special_tokens = False

    def __init__(self, tokenizer: Any, system_prompt: str | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                f"tokenizer {type(tokenizer).__name__} has no chat template; "
                "use 'alpaca_short' or a template file"
            )
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.name = "chat"

    def format_prompt(self, instruction: str, input: str = "") -> str:
        user = f"{instruction}\n\n{input}" if input else instruction
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": user})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


ALPACA_SHORT = PromptTemplate.from_dict(_ALPACA_SHORT, name="alpaca_short")
BUILTIN_TEMPLATES: dict[str, PromptTemplate] = {"alpaca_short": ALPACA_SHORT}


def load_template(path: str | Path) -> PromptTemplate:
    """Read a template JSON file with the alpaca fields (prompt_input, prompt_no_input, response_split)."""
    from ..files import read_settings

    path = Path(path)
    data = read_settings(path, "template file", TemplateError, fmt="json")
    try:
        return PromptTemplate.from_dict(data, name=path.stem)
    except TemplateError as err:
        raise TemplateError(f"{path}: {err}") from None


def get_template(spec: str | Path | Template | None = None, tokenizer: Any = None) -> Template:
    """Resolve a template from a name ('alpaca_short', 'chat'), a JSON path, or an object.

    None means 'alpaca_short', the paper's template.
    """
    if spec is None:
        return ALPACA_SHORT
    if isinstance(spec, (PromptTemplate, ChatTemplate)):
        return spec
    if isinstance(spec, (str, Path)):
        s = str(spec)
        if s in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[s]
        if s == "chat":
            if tokenizer is None:
                raise TemplateError("the 'chat' template needs the model's tokenizer")
            return ChatTemplate(tokenizer)
        if s.endswith(".json") or Path(s).exists():
            return load_template(s)
        raise TemplateError(
            f"unknown template {s!r}: use one of {sorted(BUILTIN_TEMPLATES) + ['chat']} "
            "or a path to a .json template file"
        )
    if hasattr(spec, "format_prompt"):
        return spec
    raise TypeError(f"cannot use {spec!r} as a template")


def example_prompt(template: Template, example: Example) -> str:
    """The prompt text of an example under a template."""
    return template.format_prompt(example.instruction, example.input)
