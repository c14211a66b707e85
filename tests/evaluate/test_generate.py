from __future__ import annotations

import json

import pytest
import torch

from asymlora.data.records import Example
from asymlora.data.synthetic import DEMO_TASK_KINDS, make_demo_tasks
from asymlora.data.templates import ALPACA_SHORT
from asymlora.evaluate.generate import (
    eval_mode,
    evaluate_examples,
    generate_predictions,
    read_predictions,
    write_predictions,
)
from tests.data.tiny_tokenizer import tiny_tokenizer

NEW = 6


@pytest.fixture(scope="module")
def model_and_tok():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        attention_dropout=0.5,  # so that train mode would change the outputs
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg), tok


@pytest.fixture(scope="module")
def examples():
    # prompts of different lengths, so left padding matters
    _, test = make_demo_tasks(0, 1, seed=0, tasks=["add", "sort", "opposite", "reverse"])
    return test + [Example("long/x/0", "long", "Write the word backwards, letter by letter. " * 3, "abc", "cba", "cba")]


def _reference_greedy(model, tok, ex, n_new):
    """Greedy decoding by hand: full forward each step, argmax, no padding, no cache."""
    ids = tok(ALPACA_SHORT.format_prompt(ex.instruction, ex.input))["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(torch.tensor([ids + out])).logits[0, -1]
            nxt = int(logits.argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True).strip()


def test_batched_greedy_equals_reference_and_one_at_a_time(model_and_tok, examples):
    model, tok = model_and_tok
    model.eval()
    # a sampling default on the model must not leak into greedy evaluation
    model.generation_config.do_sample = True
    model.generation_config.temperature = 5.0
    batched = generate_predictions(model, tok, examples, batch_size=3, max_new_tokens=NEW, progress=False)
    single = generate_predictions(model, tok, examples, batch_size=1, max_new_tokens=NEW, progress=False)
    assert set(batched) == {e.id for e in examples}
    assert batched == single
    for ex in examples:
        assert batched[ex.id] == _reference_greedy(model, tok, ex, NEW), ex.id


def test_eval_mode_and_no_grad_during_generation(model_and_tok, examples):
    model, tok = model_and_tok
    seen = []

    def hook(module, args, kwargs):
        seen.append((module.training, torch.is_grad_enabled()))

    handle = model.model.layers[0].self_attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model.train()
        generate_predictions(model, tok, examples[:2], batch_size=2, max_new_tokens=2, progress=False)
        assert seen and all(s == (False, False) for s in seen)
        assert model.training  # restored
        assert all(m.training for m in model.modules())
        # a submodule deliberately in eval mode stays so
        model.model.layers[1].eval()
        generate_predictions(model, tok, examples[:1], max_new_tokens=1, progress=False)
        assert model.training and model.model.layers[0].training
        assert not any(m.training for m in model.model.layers[1].modules())
        model.eval()
        with eval_mode(model):
            pass
        assert not model.training
    finally:
        handle.remove()
        model.eval()


def test_beam_search(model_and_tok, examples):
    model, tok = model_and_tok
    beams = generate_predictions(model, tok, examples, batch_size=2, max_new_tokens=NEW, num_beams=3, progress=False)
    assert set(beams) == {e.id for e in examples} and all(isinstance(v, str) for v in beams.values())
    with pytest.raises(ValueError, match="num_beams"):
        generate_predictions(model, tok, examples, num_beams=0)
    with pytest.raises(ValueError, match="duplicate example id"):
        generate_predictions(model, tok, examples[:1] * 2, progress=False)


def test_write_predictions_fresh_and_atomic(tmp_path):
    path = tmp_path / "preds" / "p.jsonl"
    first = [
        {"id": f"t/s/{i}", "task": "t", "prediction": "a", "gold": "a", "score": 100.0} for i in range(5)
    ]
    write_predictions(path, first)
    second = [{"id": "u/s/0", "task": "u", "prediction": "é", "gold": "b", "score": 0.0}]
    write_predictions(path, second)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == second  # replaced, not appended
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.jsonl"]  # no temp file left
    assert read_predictions(path) == {"u/s/0": second[0]}
    with pytest.raises(KeyError, match=r"prediction record 0: missing field\(s\) \['gold', 'score'\]"):
        write_predictions(path, [{"id": "x", "task": "t", "prediction": "p"}])
    with pytest.raises(ValueError, match="record 1: duplicate id 't/s/0'"):
        write_predictions(path, first[:1] * 2)
    assert [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] == second  # intact
    path.write_text('{"id": "a", "prediction": "x"}\n{"id": "a", "prediction": "y"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: duplicate id 'a'"):
        read_predictions(path)


def test_evaluate_examples_end_to_end(model_and_tok, examples, tmp_path):
    model, tok = model_and_tok
    exs = [e for e in examples if e.task in DEMO_TASK_KINDS]
    path = tmp_path / "preds.jsonl"
    res = evaluate_examples(model, tok, exs, DEMO_TASK_KINDS, predictions_path=path, max_new_tokens=3, progress=False)
    assert set(res.per_task) == {e.task for e in exs}
    rows = read_predictions(path)
    assert set(rows) == {e.id for e in exs}
    for e in exs:
        r = rows[e.id]
        assert r["task"] == e.task and r["gold"] == e.answer
        assert r["score"] == (100.0 if r["prediction"] == e.answer else 0.0)
    assert res.average == pytest.approx(sum(res.per_task.values()) / len(res.per_task))


def test_long_prompts_keep_their_end_with_a_warning(model_and_tok, examples):
    from asymlora.data.records import DataWarning

    model, tok = model_and_tok
    long = [e for e in examples if e.task == "long"]
    n = len(tok(ALPACA_SHORT.format_prompt(long[0].instruction, long[0].input))["input_ids"])
    with pytest.warns(DataWarning, match=f"1 of 1 prompts are longer than {n - 5} tokens: they keep their last tokens"):
        cut = generate_predictions(model, tok, long, max_new_tokens=NEW, progress=False, max_prompt_tokens=n - 5)
    # the same as generating from the prompt's last n-5 tokens by hand
    ids = tok(ALPACA_SHORT.format_prompt(long[0].instruction, long[0].input))["input_ids"][5:]
    out = []
    with torch.no_grad():
        for _ in range(NEW):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    assert cut[long[0].id] == tok.decode(out, skip_special_tokens=True).strip()


def test_generation_length_follows_the_metric(model_and_tok):
    from asymlora.evaluate.generate import generation_lengths

    kinds = {"gsm": "math", "exam": "aqua", "boolq": "commonsense", "summ": "rouge1"}
    assert generation_lengths(kinds) == {"gsm": 256, "exam": 256, "boolq": 32, "summ": 32}
    assert generation_lengths(kinds, 8) == dict.fromkeys(kinds, 8)
    assert generation_lengths(kinds, {"math": 300, "summ": 64}) == {"gsm": 300, "exam": 256, "boolq": 32, "summ": 64}
    with pytest.raises(ValueError, match="max_new_tokens for task 'gsm' must be an integer >= 1, got 0"):
        generation_lengths(kinds, {"gsm": 0})
