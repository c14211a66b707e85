from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from asymlora.train.trainer import (
    CheckpointMismatchError,
    MultiTaskTrainer,
    heldout_loss,
    load_trained,
    read_run,
    train,
)

from . import helpers

FAST = dict(batch_size=4, grad_accum=1, logging_steps=1, progress=False, learning_rate=1e-2)


class _Killed(RuntimeError):
    pass


class KillAfterSave(TrainerCallback):
    """Simulates a crash right after the checkpoint at `step` was written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Killed(f"killed at step {state.global_step}")


def _adapter_tensors(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_training_changes_adapter_only_and_never_passes_task_ids(tmp_path):
    train_ex, _ = helpers.tasks(n_train=4)
    base = helpers.model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    seen_kwargs = []
    base.register_forward_pre_hook(lambda m, a, kw: seen_kwargs.append(set(kw)), with_kwargs=True)
    res = train(base, helpers.tokenizer(), train_ex, "alora", tmp_path / "run", max_steps=3, **FAST)
    assert seen_kwargs and all("task_ids" not in kw for kw in seen_kwargs)
    assert all("labels" in kw for kw in seen_kwargs)
    losses = [h["loss"] for h in res.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    named = dict(res.model.named_parameters())
    for key, old in before.items():  # every base weight is untouched
        new = named.get("base_model.model." + key.replace(".weight", ".base_layer.weight")) \
            if any(t in key for t in ("q_proj", "o_proj")) else named["base_model.model." + key]
        assert torch.equal(new, old), key
    trainable = {n: p for n, p in named.items() if p.requires_grad}
    assert trainable and all("alora_" in n for n in trainable)
    assert all(p.abs().sum() > 0 for n, p in trainable.items() if "alora_B" in n)  # B left zero


def test_run_record_and_reload_reproduce_the_trained_model(tmp_path):
    train_ex, test_ex = helpers.tasks(n_train=4)
    tok = helpers.tokenizer()
    res = train(helpers.model(), tok, train_ex, "hydralora", tmp_path / "run", max_steps=2, seed=3, **FAST)
    files = {p.name for p in res.adapter_dir.iterdir()}
    assert "adapter_model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    run = read_run(tmp_path / "run")
    assert run["method"] == "hydralora" and run["status"] == "done" and run["seed"] == 3
    assert run["adapter_config"]["num_experts"] == 3 and run["adapter_config"]["r"] == 8
    assert run["training"]["max_steps"] == 2 and run["metrics"]["global_step"] == 2
    assert run["data"]["tasks"] == {"add": 4, "reverse": 4, "uppercase": 4}
    assert run["task_names"] == ["add", "reverse", "uppercase"]
    assert read_run(res.adapter_dir) == run  # found from the adapter folder too
    model, _, _ = load_trained(tmp_path / "run", base_model=helpers.model(), tokenizer=tok)
    ids = torch.randint(0, helpers.VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    res.model.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(res.model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_killed_run_resumes_to_the_same_adapter(tmp_path):
    """8 steps over 2 epochs with dropout on; the kill comes mid-way through epoch 2, right after
    the step-5 checkpoint, so resuming must skip batches, restore the RNG and the epoch's mix."""
    train_ex, _ = helpers.tasks(n_train=6, n_test=0, names=("reverse", "add"))  # 12 examples
    kw = dict(FAST, batch_size=3, num_epochs=2, save_steps=5, seed=11)  # 4 steps per epoch
    tok = helpers.tokenizer()
    full = train(helpers.model(), tok, train_ex, "alora", tmp_path / "full", **kw)
    with pytest.raises(_Killed):
        train(helpers.model(), tok, train_ex, "alora", tmp_path / "cut", callbacks=[KillAfterSave(5)], **kw)
    assert not (tmp_path / "cut" / "adapter").exists()
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-5").is_dir()
    with pytest.raises(FileExistsError, match="resume"):
        train(helpers.model(), tok, train_ex, "alora", tmp_path / "cut", **kw)
    resumed = train(helpers.model(), tok, train_ex, "alora", tmp_path / "cut", resume=True, **kw)
    assert resumed.run["resumed_from"].endswith("checkpoint-5")
    assert resumed.run["metrics"]["global_step"] == 8
    a, b = _adapter_tensors(tmp_path / "full"), _adapter_tensors(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    loss = lambda h: [(x["step"], x["loss"]) for x in h if "loss" in x]  # noqa: E731
    assert loss(resumed.log_history) == loss(full.log_history)
    # the comparison could fail: the steps after the checkpoint moved the adapter
    ckpt = load_file(str(tmp_path / "cut" / "checkpoints" / "checkpoint-5" / "adapter_model.safetensors"))
    assert all(not torch.equal(ckpt[k], b[k]) for k in b if "alora_B" in k)


def test_checkpoint_of_another_method_is_refused(tmp_path):
    train_ex, _ = helpers.tasks(n_train=2)
    tok = helpers.tokenizer()
    train(helpers.model(), tok, train_ex, "lora", tmp_path / "run", max_steps=1, save_steps=1, **FAST)
    with pytest.raises(CheckpointMismatchError, match="holds a run of method 'lora'"):
        train(helpers.model(), tok, train_ex, "alora", tmp_path / "run", max_steps=2, resume=True, **FAST)
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-1"
    with pytest.raises(CheckpointMismatchError, match=r"peft_type 'LORA'.*'alora'"):
        train(helpers.model(), tok, train_ex, "alora", tmp_path / "new", max_steps=2, resume=ckpt, **FAST)
    with pytest.raises(CheckpointMismatchError, match="r: checkpoint 16 vs run 8"):
        train(helpers.model(), tok, train_ex, "lora", tmp_path / "new2", max_steps=2, resume=ckpt,
              adapter={"r": 8}, **FAST)
    with pytest.raises(CheckpointMismatchError, match="learning_rate"):
        train(helpers.model(), tok, train_ex, "lora", tmp_path / "run", max_steps=2, resume=True,
              **dict(FAST, learning_rate=5e-3))


def test_balanced_sampling_mixes_tasks_equally(tmp_path):
    train_ex, _ = helpers.tasks(n_train=2, n_test=0, names=("reverse",))
    more, _ = helpers.tasks(n_train=6, n_test=0, names=("add",))
    tok = helpers.tokenizer()
    from asymlora.data import tokenize_examples
    from asymlora.train.trainer import _training_arguments
    from asymlora.train.config import TrainConfig

    feats, names = tokenize_examples(train_ex + more, tok)
    counts = {}
    for sampling in ("proportional", "balanced"):
        trainer = MultiTaskTrainer(model=helpers.model(), args=_training_arguments(TrainConfig(), tmp_path),
                                   train_dataset=feats, sampling=sampling)
        order = list(trainer._get_train_sampler())
        assert order == list(trainer._get_train_sampler())  # same seed, same order
        counts[sampling] = [sum(feats[i]["task_id"] == t for i in order) for t in range(2)]
    assert counts["proportional"] == [6, 2]  # names are sorted: add, reverse
    assert counts["balanced"] == [4, 4]


def test_adalora_allocates_ranks_each_step(tmp_path):
    train_ex, _ = helpers.tasks(n_train=4)
    res = train(helpers.model(), helpers.tokenizer(), train_ex, "adalora", tmp_path / "run", max_steps=6, **FAST)
    assert res.run["adapter_config"]["total_step"] == 6
    E = [p for n, p in res.model.named_parameters() if "lora_E" in n]
    zeros = sum(int((e == 0).sum()) for e in E)
    total = sum(e.numel() for e in E)
    # the budget falls from init_r = 12 towards target_r = 8 per module; masking zeroes Lambda entries
    assert total == 4 * 12 and zeros > 0


def test_heldout_loss_matches_model_loss():
    _, test_ex = helpers.tasks(n_train=1, n_test=2)
    tok, model = helpers.tokenizer(), helpers.model()
    overall, per_task = heldout_loss(model, tok, test_ex, batch_size=4)
    from asymlora.data import MultiTaskCollator, tokenize_examples

    feats, names = tokenize_examples(test_ex, tok)
    token_losses = []
    for t, name in enumerate(names):
        sub = [f for f in feats if f["task_id"] == t]
        batch = MultiTaskCollator(tok.pad_token_id)([sub[0]])
        with torch.no_grad():
            one = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        n0 = sum(x != -100 for x in sub[0]["labels"])
        batch = MultiTaskCollator(tok.pad_token_id)([sub[1]])
        with torch.no_grad():
            two = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        n1 = sum(x != -100 for x in sub[1]["labels"])
        expect = (one * n0 + two * n1) / (n0 + n1)  # token-weighted mean over the task's examples
        assert per_task[name] == pytest.approx(float(expect), rel=1e-5)
        token_losses.append((float(expect), n0 + n1))
    assert overall == pytest.approx(sum(l * n for l, n in token_losses) / sum(n for _, n in token_losses), rel=1e-5)
