from __future__ import annotations

import json

import pytest

from asymlora.data.records import Example
from asymlora.data.templates import (
    ALPACA_SHORT,
    ChatTemplate,
    PromptTemplate,
    TemplateError,
    example_prompt,
    get_template,
    load_template,
)
from tests.conftest import SHARED_DATA

CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.mark.skipif(not (SHARED_DATA / "templates").is_dir(), reason="shared templates not found")
def test_embedded_alpaca_short_equals_shared_file():
    shared = json.loads((SHARED_DATA / "templates" / "alpaca_short.json").read_text())
    assert ALPACA_SHORT.prompt_input == shared["prompt_input"]
    assert ALPACA_SHORT.prompt_no_input == shared["prompt_no_input"]
    assert ALPACA_SHORT.response_split == shared["response_split"]
    assert load_template(SHARED_DATA / "templates" / "alpaca_short.json") == PromptTemplate(
        "alpaca_short", **{k: shared[k] for k in ("prompt_input", "prompt_no_input", "response_split")},
        description=shared["description"],
    )


def test_alpaca_short_prompts():
    assert ALPACA_SHORT.format_prompt("Add.", "1 + 2") == (
        "### Instruction:\nAdd.\n\n### Input:\n1 + 2\n\n### Response:\n"
    )
    assert ALPACA_SHORT.format_prompt("Add.") == "### Instruction:\nAdd.\n\n### Response:\n"
    # braces in user text are content, not placeholders
    assert "{x}" in ALPACA_SHORT.format_prompt("print {x}")
    text = ALPACA_SHORT.format_prompt("Add.") + "3"
    assert ALPACA_SHORT.extract_response(text) == "3"
    ex = Example("t/s/0", "t", "Add.", "1 + 2", "3")
    assert example_prompt(ALPACA_SHORT, ex) == ALPACA_SHORT.format_prompt("Add.", "1 + 2")


def _write(tmp_path, data, name="mine.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data), encoding="utf-8")
    return p


GOOD = {"prompt_input": "Q: {instruction}\nC: {input}\nA:", "prompt_no_input": "Q: {instruction}\nA:", "response_split": "A:"}


def test_user_template_file(tmp_path):
    t = load_template(_write(tmp_path, GOOD))
    assert t.name == "mine"
    assert t.format_prompt("hi", "ctx") == "Q: hi\nC: ctx\nA:"
    assert get_template(str(tmp_path / "mine.json")) == t


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt_input": "Q: {instruction}\nA:"}, r"prompt_input: missing placeholder\(s\) \{input\}"),
        ({"prompt_no_input": "A:"}, r"prompt_no_input: missing placeholder\(s\) \{instruction\}"),
        ({"prompt_no_input": "{instruction} {input} A:"}, r"prompt_no_input: unknown placeholder\(s\) \{input\}"),
        ({"prompt_input": "{instruction} {input} {context} A:"}, r"unknown placeholder\(s\) \{context\}"),
        ({"prompt_input": "{instruction} {input} {"}, "invalid format string"),
        ({"prompt_input": "{0} {instruction} {input}"}, "positional placeholder"),
        ({"prompt_input": "{instruction:>10} {input}"}, "format spec"),
        ({"response_split": "### Answer:"}, "does not occur in prompt_no_input"),
    ],
)
def test_bad_templates_fail_clearly(tmp_path, change, message):
    with pytest.raises(TemplateError, match=message):
        load_template(_write(tmp_path, {**GOOD, **change}))


def test_template_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="template file not found"):
        load_template(tmp_path / "none.json")
    bad = {k: v for k, v in GOOD.items() if k != "response_split"}
    with pytest.raises(TemplateError, match=r"mine\.json.*missing field\(s\) \['response_split'\]"):
        load_template(_write(tmp_path, bad))
    with pytest.raises(TemplateError, match=r"unknown field\(s\) \['prompt'\]"):
        load_template(_write(tmp_path, {**GOOD, "prompt": "x"}))
    p = tmp_path / "broken.json"
    p.write_text("{", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"broken\.json: malformed JSON"):
        load_template(p)
    with pytest.raises(TemplateError, match="unknown template 'alpaca'"):
        get_template("alpaca")


def test_chat_template(tok):
    with pytest.raises(TemplateError, match="has no chat template"):
        ChatTemplate(tok)
    with pytest.raises(TemplateError, match="needs the model's tokenizer"):
        get_template("chat")
    tok.chat_template = CHAT
    t = get_template("chat", tok)
    assert t.add_special_tokens is False
    assert t.format_prompt("Add.", "1 + 2") == "<|user|>Add.\n\n1 + 2\n<|assistant|>"
    assert ChatTemplate(tok, system_prompt="Be brief.").format_prompt("Hi") == (
        "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>"
    )


def test_default_is_alpaca_short():
    assert get_template(None) is ALPACA_SHORT
    assert get_template("alpaca_short") is ALPACA_SHORT
