from __future__ import annotations

from collections import Counter

import pytest
import torch

from asymlora.data.records import DataWarning, Example
from asymlora.data.templates import ALPACA_SHORT, ChatTemplate
from asymlora.data.tokenize import (
    IGNORE_INDEX,
    MultiTaskCollator,
    PackingCollator,
    TaskMixSampler,
    encode_prompt,
    mix_examples,
    mixed_indices,
    task_quotas,
    task_weights,
    tokenize_example,
    tokenize_examples,
)

EX = Example("add/s/0", "add", "Add the two numbers.", "12 + 30", "42")


def test_loss_on_response_only(tok):
    f = tokenize_example(EX, tok, cutoff_len=512)
    prompt_text = "### Instruction:\nAdd the two numbers.\n\n### Input:\n12 + 30\n\n### Response:\n"
    prompt_ids = tok(prompt_text)["input_ids"]  # independent: the tokenizer on the literal text
    n = len(prompt_ids)
    assert prompt_ids[0] == tok.bos_token_id
    assert f["input_ids"][:n] == prompt_ids
    assert f["labels"][:n] == [IGNORE_INDEX] * n
    assert f["labels"][n:] == f["input_ids"][n:]
    assert f["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(f["input_ids"][n:-1]) == "42"
    assert f["attention_mask"] == [1] * len(f["input_ids"])
    assert tok.bos_token_id not in f["input_ids"][n:]  # no BOS inside the response


def test_train_on_prompt_and_no_eos(tok):
    f = tokenize_example(EX, tok, train_on_prompt=True, add_eos=False)
    assert f["labels"] == f["input_ids"]
    assert f["input_ids"][-1] != tok.eos_token_id
    assert tok.decode(f["input_ids"], skip_special_tokens=True).endswith("### Response:\n42")


def test_cutoff(tok):
    full = tokenize_example(EX, tok, cutoff_len=10_000)
    n_prompt = len(encode_prompt(tok, ALPACA_SHORT, EX))
    cut = n_prompt + 1  # prompt and the first response token only
    f = tokenize_example(EX, tok, cutoff_len=cut)
    assert len(f["input_ids"]) == cut == len(f["labels"]) == len(f["attention_mask"])
    assert f["input_ids"] == full["input_ids"][:cut]
    assert tok.eos_token_id not in f["input_ids"]  # a cut response is not taught to stop
    assert f["labels"][-1] == full["input_ids"][cut - 1]
    with pytest.raises(ValueError, match="cutoff_len"):
        tokenize_example(EX, tok, cutoff_len=0)


def test_chat_template_adds_no_second_bos(tok):
    tok.chat_template = "{% for m in messages %}<s>[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}=>{% endif %}"
    f = tokenize_example(EX, tok, template=ChatTemplate(tok))
    assert f["input_ids"].count(tok.bos_token_id) == 1  # the one the chat template writes
    assert tok.decode(f["input_ids"]) == "<s>[Add the two numbers.\n\n12 + 30]=>42</s>"


def test_missing_eos(tok):
    tok.eos_token = None
    with pytest.raises(ValueError, match="no eos_token_id"):
        tokenize_example(EX, tok)


def test_tokenize_examples_task_ids_and_drop(tok):
    exs = [EX, Example("rev/s/0", "rev", "Reverse.", "abc", "cba"), Example("add/s/1", "add", "Add.", "1 + 1", "2")]
    feats, names = tokenize_examples(exs, tok)
    assert names == ["add", "rev"]
    assert [f["task_id"] for f in feats] == [0, 1, 0]
    # a cut-off inside the prompt leaves no target: dropped (or kept on request)
    with pytest.warns(DataWarning, match=r"3 examples: dropped 3 whose prompt fills the cut-off of 5 tokens "
                                         r"\(e.g. \['add/s/0', 'rev/s/0', 'add/s/1'\]; raise cutoff_len\); 0 are used"):
        short, _ = tokenize_examples(exs, tok, cutoff_len=5)
    assert short == []
    kept, _ = tokenize_examples(exs, tok, cutoff_len=5, drop_without_target=False)
    assert len(kept) == 3 and all(set(f["labels"]) == {IGNORE_INDEX} for f in kept)
    with pytest.raises(KeyError, match="task 'rev' not in task list"):
        tokenize_examples(exs, tok, task_names=["add"])


def test_nothing_dropped_or_cut_silently(tok):
    import warnings

    exs = [EX, Example("add/s/1", "add", "Add.", "1 + 1", "   "), Example("add/s/2", "add", "Add.", "1 + 1", "2" * 50)]
    full = len(tokenize_example(exs[2], tok, cutoff_len=10_000)["input_ids"])
    with pytest.warns(DataWarning) as record:
        feats, _ = tokenize_examples(exs, tok, cutoff_len=full - 3)
    assert len(record) == 1 and str(record[0].message) == (
        "3 examples: dropped 1 with an empty response (e.g. ['add/s/1']); "
        f"cut the response of 1 at {full - 3} tokens; 2 are used")
    assert len(feats) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything fits: no word
        assert len(tokenize_examples([EX], tok, cutoff_len=full)[0]) == 1


def test_collator_right_and_left_padding():
    feats = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "task_id": 1},
        {"input_ids": [8], "attention_mask": [1], "labels": [8], "task_id": 0},
    ]
    right = MultiTaskCollator(pad_token_id=0)(feats)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert right["task_ids"].tolist() == [1, 0]
    assert right["input_ids"].dtype == torch.long
    left = MultiTaskCollator(pad_token_id=0, padding_side="left", pad_to_multiple_of=4)(feats)
    assert left["input_ids"].tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert left["labels"].tolist() == [[-100, -100, 6, 7], [-100, -100, -100, 8]]
    no_labels = MultiTaskCollator(0, "left", return_task_ids=False)([{"input_ids": [1]}, {"input_ids": [2, 3]}])
    assert set(no_labels) == {"input_ids", "attention_mask"}


def test_collator_errors():
    with pytest.raises(ValueError, match="padding_side"):
        MultiTaskCollator(0, padding_side="middle")
    with pytest.raises(ValueError, match="pad_token_id is None"):
        MultiTaskCollator(None)
    c = MultiTaskCollator(0)
    with pytest.raises(KeyError, match=r"feature\(s\) \[1\] have no 'task_id'"):
        c([{"input_ids": [1], "task_id": 0}, {"input_ids": [2]}])
    with pytest.raises(ValueError, match="feature 0: labels length 1 != input_ids length 2"):
        c([{"input_ids": [1, 2], "labels": [1], "task_id": 0}])
    with pytest.raises(ValueError, match="empty batch"):
        c([])


def test_task_weights():
    sizes = {"a": 300, "b": 100}
    assert task_weights(sizes) == {"a": 0.75, "b": 0.25}
    assert task_weights(sizes, "balanced") == {"a": 0.5, "b": 0.5}
    w = task_weights(sizes, "temperature", temperature=2.0)
    assert w["a"] == pytest.approx(300**0.5 / (300**0.5 + 100**0.5))
    with pytest.raises(ValueError, match="unknown sampling strategy 'uniform'"):
        task_weights(sizes, "uniform")
    with pytest.raises(ValueError, match="task 'b' has no examples"):
        task_weights({"a": 1, "b": 0})
    assert task_quotas({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 10) == {"a": 4, "b": 3, "c": 3}


def test_proportional_mix_is_a_permutation():
    tasks = ["a"] * 6 + ["b"] * 2
    idx = mixed_indices(tasks, "proportional", seed=3)
    assert sorted(idx) == list(range(8))
    assert idx == mixed_indices(tasks, "proportional", seed=3)
    assert idx != mixed_indices(tasks, "proportional", seed=4)


def test_balanced_mix_upsamples_small_task_without_early_repeats():
    tasks = ["a"] * 6 + ["b"] * 2
    idx = mixed_indices(tasks, "balanced", seed=0)  # 8 draws: 4 per task
    counts = Counter(tasks[i] for i in idx)
    assert counts == {"a": 4, "b": 4}
    assert len(set(i for i in idx if tasks[i] == "a")) == 4  # 'a' draws are distinct
    assert Counter(i for i in idx if tasks[i] == "b") == {6: 2, 7: 2}  # each 'b' twice
    exs = [Example(f"{t}/s/{i}", t, "x", "", "y") for i, t in enumerate(tasks)]
    mixed = mix_examples(exs, "balanced", seed=0, num_samples=12)
    assert Counter(e.task for e in mixed) == {"a": 6, "b": 6}


def test_sampler_epochs_and_len():
    tasks = [0] * 5 + [1] * 3
    s = TaskMixSampler(tasks, "balanced", num_samples=10, seed=1)
    assert len(s) == 10
    e0 = list(s)
    assert e0 == list(s)  # same epoch, same order
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and Counter(tasks[i] for i in e1) == {0: 5, 1: 5}
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=4, sampler=s)
    assert sum(len(b) for b in loader) == 10
    with pytest.raises(ValueError, match="unknown sampling strategy"):
        TaskMixSampler(tasks, "nope")


def test_packing_collator_fills_rows_first_fit_decreasing():
    feats = [
        {"input_ids": [1, 2], "labels": [1, 2], "task_id": 0},            # 2 tokens
        {"input_ids": [3, 4, 5, 6], "labels": [-100, -100, 5, 6], "task_id": 1},  # 4 tokens
        {"input_ids": [7, 8, 9], "labels": [-100, 8, 9], "task_id": 2},   # 3 tokens
        {"input_ids": [10], "labels": [10], "task_id": 0},                # 1 token
    ]
    c = PackingCollator(pad_token_id=0, row_len=5)
    # longest first: 4 -> row 0 (1 left); 3 -> row 1 (2 left); 2 -> row 1 (0 left); 1 -> row 0
    assert c.rows_of([2, 4, 3, 1]) == [[1, 3], [2, 0]]
    b = c(feats)
    assert b["input_ids"].tolist() == [[3, 4, 5, 6, 10], [7, 8, 9, 1, 2]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    # every example's first label is dropped (it would be predicted across the boundary)
    assert b["labels"].tolist() == [[-100, -100, 5, 6, -100], [-100, 8, 9, -100, 2]]
    assert b["task_ids"].tolist() == [0, 1, 2, 0]
    assert "attention_mask" not in b and b["use_cache"] is False  # the position restarts are the boundaries

    tail = PackingCollator(pad_token_id=0, row_len=6)([feats[2]])
    assert tail["input_ids"].tolist() == [[7, 8, 9, 0, 0, 0]]
    assert tail["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2]]  # padding is a block of its own
    assert tail["labels"].tolist() == [[-100, 8, 9, -100, -100, -100]]


def test_packing_balances_rows_when_no_two_examples_fit_beside_the_longest():
    # eight examples of similar length (flan8-federated's first batch): one per row would be 8 x 72 = 576
    # tokens. Longest first to the least-filled of two rows: 71 | 62, 60 -> 122 | 53 -> 124 | 50 -> 172 |
    # 50 -> 174 | 47 -> 219 | 46 -> 220: rows {2, 3, 6, 1} (220) and {0, 7, 4, 5} (219), 2 x 224 tokens
    lengths = [62, 46, 71, 53, 50, 47, 50, 60]
    c = PackingCollator(pad_token_id=0, row_len=256)
    length, rows = c.layout(lengths)
    assert (length, sorted(sorted(r) for r in rows)) == (224, [[0, 4, 5, 7], [1, 2, 3, 6]])
    assert sorted(sum(lengths[i] for i in r) for r in rows) == [219, 220]
    feats = [{"input_ids": [1] * n, "labels": [1] * n, "task_id": 0} for n in lengths]
    assert c(feats)["input_ids"].shape == (2, 224)
    # attention weighs long rows: when a position of attention costs as much as the linear layers at
    # 64 positions, 2 x 224 x (1 + 224/64) = 2016 loses to 8 x 72 x (1 + 72/64) = 1224
    assert PackingCollator(0, 256, attention_positions=64).layout(lengths)[0] == 72
    with pytest.raises(ValueError, match="attention_positions must be > 0"):
        PackingCollator(0, 256, attention_positions=0)


def test_packed_rows_are_as_long_as_the_longest_example_so_never_larger_than_padding():
    lengths = [3, 2, 2, 1]
    feats = [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1)), "task_id": 0} for n in lengths]
    b = PackingCollator(pad_token_id=0, row_len=512, pad_to_multiple_of=4)(feats)
    assert b["input_ids"].tolist() == [[1, 2, 3, 1], [1, 2, 1, 2]]  # rows of 4 = 3 rounded up to 4
    assert b["input_ids"].numel() <= MultiTaskCollator(0)(feats)["input_ids"].numel()
    assert PackingCollator(0, row_len=512, pad_to_multiple_of=8)(feats)["input_ids"].shape == (1, 8)


def test_packing_collator_errors():
    with pytest.raises(ValueError, match="row_len must be >= 1"):
        PackingCollator(0, 0)
    with pytest.raises(ValueError, match="pad_token_id is None"):
        PackingCollator(None, 8)
    c = PackingCollator(0, 3)
    with pytest.raises(ValueError, match="feature 0 has 4 tokens, more than the row length 3"):
        c([{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4], "task_id": 0}])
    with pytest.raises(ValueError, match="feature 1 has no labels"):
        c([{"input_ids": [1], "labels": [1], "task_id": 0}, {"input_ids": [2]}])
    with pytest.raises(ValueError, match="empty batch"):
        c([])
