"""The fast training path (packing, chunked label-only loss) must give the plain path's loss."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asymlora import ALoRAConfig
from asymlora.adapters.registry import get_peft_model
from asymlora.data.tokenize import MultiTaskCollator, PackingCollator, tokenize_examples
from asymlora.train.config import ConfigError, TrainConfig
from asymlora.train.loss import HiddenStatesHead, chunked_causal_lm_loss, install_chunked_loss
from asymlora.train.trainer import train

from . import helpers

FAST = dict(batch_size=4, grad_accum=2, logging_steps=1, progress=False, learning_rate=1e-2)


def _reference_loss(hidden, weight, labels, num_items=None):
    """Transformers' causal-LM loss written out: full logits, shift, float32, -100 ignored."""
    logits = (hidden @ weight.T).float()
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    if num_items is None:
        return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum") / num_items


@pytest.mark.parametrize("chunk", [1, 3, 1000])
@pytest.mark.parametrize("num_items", [None, 7])
def test_chunked_loss_equals_full_logits_loss_in_value_and_gradients(chunk, num_items):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, 8, generator=g, requires_grad=True)
    weight = torch.randn(11, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (2, 6), generator=g)
    labels[0, :3] = -100  # a prompt
    labels[1, 4:] = -100  # padding
    ref = _reference_loss(hidden, weight, labels, num_items)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    got = chunked_causal_lm_loss(hidden, weight, labels, chunk, num_items)
    got_grads = torch.autograd.grad(got, (hidden, weight))
    torch.testing.assert_close(got, ref)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_chunked_loss_bad_shapes_and_no_labels():
    with pytest.raises(ValueError, match=r"hidden must be \(batch, seq, d\)"):
        chunked_causal_lm_loss(torch.zeros(2, 3, 4), torch.zeros(5, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"head weight \(5, 3\) does not match hidden size 4"):
        chunked_causal_lm_loss(torch.zeros(2, 3, 4), torch.zeros(5, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunked_causal_lm_loss(torch.zeros(1, 2, 4), torch.zeros(5, 4), torch.zeros(1, 2, dtype=torch.long), 0)
    none = torch.full((1, 3), -100)
    assert torch.isnan(chunked_causal_lm_loss(torch.zeros(1, 3, 4), torch.zeros(5, 4), none))
    # a micro-batch whose only label is on the first token (never predicted): zero, and backward works
    hidden = torch.randn(1, 3, 4, requires_grad=True)
    only_first = torch.tensor([[2, -100, -100]])
    loss = chunked_causal_lm_loss(hidden, torch.randn(5, 4), only_first, num_items_in_batch=4)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(hidden.grad, torch.zeros_like(hidden))


def _alora_model(seed=0):
    model = get_peft_model(helpers.model(seed), ALoRAConfig(r=4, num_experts=3, target_modules=["q_proj", "v_proj"],
                                                            lora_dropout=0.0, init_seed=seed))
    with torch.no_grad():  # a trained-looking B, so that the adapters take part in the loss
        for n, p in model.named_parameters():
            if "alora_B" in n:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    return model


def _features(train_on_prompt=False):
    """Six real examples and one twice as long, so that the short ones share rows."""
    train_ex, _ = helpers.tasks(n_train=3)
    feats, _ = tokenize_examples(train_ex[:6], helpers.tokenizer(), cutoff_len=48, train_on_prompt=train_on_prompt)
    long = {k: feats[0][k] + feats[1][k] for k in ("input_ids", "attention_mask", "labels")}
    return [{**long, "task_id": 0}, *feats]


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_packed_batch_gives_the_padded_batch_loss_and_gradients(train_on_prompt):
    feats = _features(train_on_prompt)
    model = _alora_model()
    padded = MultiTaskCollator(0, return_task_ids=False)(feats)
    packed = PackingCollator(0, row_len=48 * 2, return_task_ids=False)(feats)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    assert packed["input_ids"].shape[0] < len(feats)  # really several examples per row

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    loss_pad, grads_pad = loss_and_grads(padded)
    loss_pack, grads_pack = loss_and_grads(packed)
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-5, atol=1e-6)
    for n in grads_pad:
        torch.testing.assert_close(grads_pack[n], grads_pad[n], rtol=1e-4, atol=1e-6, msg=n)


def test_installed_chunked_loss_equals_model_loss_and_undo_restores_the_head():
    feats = _features()
    batch = MultiTaskCollator(0, return_task_ids=False)(feats)
    model = _alora_model()
    expected = model(**batch).loss
    head = model.get_base_model().lm_head
    loss_func, undo = install_chunked_loss(model, chunk_size=5)
    assert isinstance(model.get_base_model().lm_head, HiddenStatesHead)
    labels = batch.pop("labels")
    outputs = model(**batch)
    assert outputs.logits.shape[-1] == head.in_features  # hidden states, not logits
    torch.testing.assert_close(loss_func(outputs, labels), expected, rtol=1e-5, atol=1e-6)
    undo()
    assert model.get_base_model().lm_head is head
    torch.testing.assert_close(model(**batch, labels=labels).loss, expected)


def test_chunked_loss_refuses_heads_it_would_get_wrong():
    model = helpers.model()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        install_chunked_loss(model, 8)
    model = helpers.model()
    model.lm_head = nn.Sequential(model.lm_head)
    with pytest.raises(ValueError, match=r"output layer is torch\.nn\.modules\.container\.Sequential, not a plain"):
        install_chunked_loss(model, 8)
    with pytest.raises(ConfigError, match="loss_chunk_size must be >= 0"):
        TrainConfig(loss_chunk_size=-1)


def test_adalora_with_chunked_loss_is_refused_before_training(tmp_path):
    train_ex, _ = helpers.tasks(n_train=2)
    with pytest.raises(ConfigError, match="loss_chunk_size is not available with adalora"):
        train(helpers.model(), helpers.tokenizer(), train_ex, "adalora", tmp_path / "r", max_steps=1,
              loss_chunk_size=64, **FAST)
    assert not (tmp_path / "r").exists()


def _losses(res):
    return [h["loss"] for h in res.log_history if "loss" in h]


@pytest.mark.parametrize("method", ["alora", "lora"])
def test_fast_path_training_follows_the_plain_loss_curve(tmp_path, method):
    train_ex, _ = helpers.tasks(n_train=6)
    # no dropout: its masks are drawn per tensor element, so other shapes draw other masks
    adapter = {"lora_dropout": 0.0}
    plain = train(helpers.model(), helpers.tokenizer(), train_ex, method, tmp_path / "plain", max_steps=4,
                  cutoff_len=64, adapter=adapter, **FAST)
    fast = train(helpers.model(), helpers.tokenizer(), train_ex, method, tmp_path / "fast", max_steps=4,
                 cutoff_len=64, packing=True, loss_chunk_size=16, adapter=adapter, **FAST)
    assert len(_losses(plain)) == 4
    torch.testing.assert_close(torch.tensor(_losses(fast)), torch.tensor(_losses(plain)), rtol=1e-4, atol=1e-5)
    plain_w = {n: p for n, p in plain.model.named_parameters() if p.requires_grad}
    fast_w = {n: p for n, p in fast.model.named_parameters() if p.requires_grad}
    assert plain_w.keys() == fast_w.keys()
    for n in plain_w:
        torch.testing.assert_close(fast_w[n], plain_w[n], rtol=1e-3, atol=1e-5, msg=n)
    # the trained model has its real head back and generates
    assert isinstance(fast.model.get_base_model().lm_head, nn.Linear)
    ids = torch.tensor([[5, 6, 7]])
    out = fast.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
    assert out.shape == (1, 5)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_fast_path_trains_like_eager(tmp_path):
    """torch.compile through the Trainer: our layers trace, and the losses are the eager ones."""
    train_ex, _ = helpers.tasks(n_train=6)
    kw = dict(max_steps=2, cutoff_len=64, adapter={"lora_dropout": 0.0}, packing=True, loss_chunk_size=16, **FAST)
    eager = train(helpers.model(), helpers.tokenizer(), train_ex, "alora", tmp_path / "eager", **kw)
    compiled = train(helpers.model(), helpers.tokenizer(), train_ex, "alora", tmp_path / "compiled",
                     torch_compile=True, **kw)
    torch.testing.assert_close(torch.tensor(_losses(compiled)), torch.tensor(_losses(eager)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.bfloat16])
def test_chunked_loss_under_bf16_mixed_precision_matches_the_plain_path(tmp_path, weights_dtype):
    """The Trainer's autocast covers only the model's forward; the chunked head must run as the
    model's own head would (bf16), whatever the weights' dtype."""
    train_ex, _ = helpers.tasks(n_train=4)
    kw = dict(max_steps=2, cutoff_len=64, adapter={"lora_dropout": 0.0}, precision="bf16", **FAST)
    plain = train(helpers.model().to(weights_dtype), helpers.tokenizer(), train_ex, "alora", tmp_path / "p", **kw)
    fast = train(helpers.model().to(weights_dtype), helpers.tokenizer(), train_ex, "alora", tmp_path / "f",
                 loss_chunk_size=16, **kw)
    # a float32 head instead of the bf16 one moves the loss by ~1e-4 here
    torch.testing.assert_close(torch.tensor(_losses(fast)), torch.tensor(_losses(plain)), rtol=0, atol=1e-5)


def test_fast_path_refusals(tmp_path):
    train_ex, _ = helpers.tasks(n_train=2)
    with pytest.raises(ConfigError, match="cannot apply label_smoothing_factor"):
        train(helpers.model(), helpers.tokenizer(), train_ex, "lora", tmp_path / "a", max_steps=1, loss_chunk_size=8,
              extra_args={"label_smoothing_factor": 0.1}, **FAST)
    flash = helpers.model()
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ConfigError, match="packing needs sdpa, eager or flex_attention; the model uses 'flash_attention_2'"):
        train(flash, helpers.tokenizer(), train_ex, "lora", tmp_path / "b", max_steps=1, packing=True, **FAST)


def test_head_is_restored_when_training_fails(tmp_path):
    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            raise RuntimeError("boom")

    train_ex, _ = helpers.tasks(n_train=2)
    base = helpers.model()
    head = base.lm_head
    with pytest.raises(RuntimeError, match="boom"):
        train(base, helpers.tokenizer(), train_ex, "lora", tmp_path / "r", max_steps=1, loss_chunk_size=8,
              callbacks=[Boom()], **FAST)
    assert base.lm_head is head
