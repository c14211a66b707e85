"""FedDPA's instance-wise weighting: the similarity -> weight arithmetic against hand-computed
values, and on a tiny real dual-LoRA Llama that each row of a batch really gets its own weights
(checked against PEFT's own per-adapter scaling), in forward and in generation, and that the
client stores its local sample's representations node-local as safetensors."""

from __future__ import annotations

import math

import pytest
import torch

from asymlora.federated.algorithms.feddpa import (
    TRAINING_WEIGHTS, instance_weights, local_weight, mean_cosine_similarity, pool_prompt,
)
from asymlora.federated.feddpa_inference import (
    InstanceAdapterWeights, dual_lora_layers, prompt_representations,
)

from asymlora.federated import feddpa_inference

from .fedhelpers import lora_model
from .runtime_helpers import tiny_config


# ---- the arithmetic ---------------------------------------------------------------------------
def test_pool_prompt_averages_only_unmasked_tokens():
    hidden = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 6.0]],
                           [[1.0, 0.0], [2.0, 0.0], [6.0, 3.0]]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    torch.testing.assert_close(pool_prompt(hidden, mask), torch.tensor([[2.0, 4.0], [3.0, 1.0]]))
    with pytest.raises(ValueError, match=r"rows \[1\] have no unmasked token"):
        pool_prompt(hidden, torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"attention mask has shape \(2, 2\)"):
        pool_prompt(hidden, torch.ones(2, 2))


def test_weights_by_hand():
    refs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 1.0],     # cos 1/sqrt2 to both: mean 0.7071, alpha 0.3536
                            [1.0, 0.0],     # cos 1 and 0: mean 0.5, alpha 0.25
                            [3.0, 0.0],     # the same direction, so the same weights
                            [-1.0, 0.0],    # mean -0.5: clipped to 0, global adapter only
                            [-1.0, 1.0]])   # cos -0.7071 and 0.7071: mean 0
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(mean_cosine_similarity(queries, refs), torch.tensor([r, 0.5, 0.5, -0.5, 0.0]))
    torch.testing.assert_close(local_weight(queries, refs), torch.tensor([r / 2, 0.25, 0.25, 0.0, 0.0]))
    expected = torch.tensor([[2 - r, r], [1.5, 0.5], [1.5, 0.5], [2.0, 0.0], [2.0, 0.0]])
    torch.testing.assert_close(instance_weights(queries, refs), expected)
    # an instance exactly like every local reference gets the training weights (1, 1) ...
    same = instance_weights(torch.tensor([[5.0, 5.0]]), torch.tensor([[2.0, 2.0], [1.0, 1.0]]))
    torch.testing.assert_close(same, torch.tensor([list(TRAINING_WEIGHTS)]))
    # ... and with scale 1 the local adapter alone, at the adapters' total weight
    torch.testing.assert_close(instance_weights(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), scale=1.0),
                               torch.tensor([[0.0, 2.0]]))
    torch.testing.assert_close(instance_weights(queries[:1], refs, training_weights=(0.5, 0.5)),
                               torch.tensor([[1 - r / 2, r / 2]]))


def test_bad_representations_are_named():
    refs = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="hidden size differs: queries have 5, the stored references 4"):
        mean_cosine_similarity(torch.ones(2, 5), refs)
    with pytest.raises(ValueError, match="local sample is empty"):
        mean_cosine_similarity(torch.ones(2, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="queries hold NaN or Inf"):
        mean_cosine_similarity(torch.tensor([[float("nan"), 0, 0, 0]]), refs)
    with pytest.raises(ValueError, match=r"similarity scale must be in \[0, 1\], got 1.5"):
        local_weight(torch.ones(1, 4), torch.ones(1, 4), scale=1.5)


# ---- on a tiny dual-LoRA model ----------------------------------------------------------------
def dual_model(seed: int = 0):
    model = lora_model(2, seed=seed, adapters=("global", "local"))
    model.base_model.set_adapter(["global", "local"])
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.eval()
    return model


def logits_with_peft_scaling(model, input_ids, attention_mask, w_global, w_local, **generate):
    """The reference: PEFT's own per-adapter scaling, one weight pair for the whole batch."""
    saved = []
    for _, layer in dual_lora_layers(model, "global", "local"):
        saved.append((layer, dict(layer.scaling)))
        layer.scaling["global"] = layer.scaling["global"] * float(w_global)
        layer.scaling["local"] = layer.scaling["local"] * float(w_local)
    try:
        with torch.no_grad():
            if generate:
                return model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate)
            return model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        for layer, scaling in saved:
            layer.scaling.clear()
            layer.scaling.update(scaling)


def test_each_row_gets_its_own_weights_in_forward():
    model = dual_model()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])
    mask = torch.ones_like(ids)
    weights = torch.tensor([[1.0, 1.0], [1.5, 0.5], [2.0, 0.0]])
    with torch.no_grad():
        fixed = model(input_ids=ids, attention_mask=mask).logits
    with InstanceAdapterWeights(model) as weighting, torch.no_grad():
        weighting.set(weights)
        weighted = model(input_ids=ids, attention_mask=mask).logits
        with pytest.raises(RuntimeError, match="a batch of 2 rows but weights for 3 instances"):
            model(input_ids=ids[:2], attention_mask=mask[:2])
    for i, (wg, wl) in enumerate(weights.tolist()):
        reference = logits_with_peft_scaling(model, ids[i:i + 1], mask[i:i + 1], wg, wl)
        torch.testing.assert_close(weighted[i:i + 1], reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weighted[0], fixed[0], rtol=1e-6, atol=1e-6)   # (1, 1) = the training weights
    assert (weighted[1] - fixed[1]).abs().max() > 1e-2                        # other weights change the output
    assert (weighted[2] - fixed[2]).abs().max() > 1e-2
    with torch.no_grad():                                                     # hooks gone after the block
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, fixed)


def test_representations_ignore_padding_and_the_adapters():
    model = dual_model()
    prompts = [[5, 6, 7, 8, 9], [20, 21, 22]]
    alone = torch.cat([prompt_representations(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long))
                       for p in prompts])
    ids = torch.tensor([prompts[0], [0, 0] + prompts[1]])
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    padded = prompt_representations(model, ids, mask)
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with torch.no_grad():                       # the frozen base: changing the adapters changes nothing
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(3.0)
    torch.testing.assert_close(prompt_representations(model, ids, mask), padded)


def test_generate_weights_every_prompt_from_its_similarity():
    model = dual_model()
    refs = prompt_representations(model, torch.tensor([[30, 31, 32, 33]]), torch.ones(1, 4, dtype=torch.long))
    prompts = [[30, 31, 32, 34], [40, 50, 60]]           # one close to the local sample, one not
    ids = torch.tensor([prompts[0], [0] + prompts[1]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    reps = torch.cat([prompt_representations(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long))
                      for p in prompts])
    expected = instance_weights(reps, refs)
    gen = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=None, output_scores=True,
               return_dict_in_generate=True)
    with InstanceAdapterWeights(model, refs) as weighting, torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, **gen)
    assert "generate" not in vars(model)                 # the wrapper is removed
    torch.testing.assert_close(torch.cat(weighting.local_weights), expected[:, 1], rtol=1e-5, atol=1e-5)
    assert expected[0, 1] > expected[1, 1]               # the more alike, the more local weight
    fixed = logits_with_peft_scaling(model, ids, mask, 1.0, 1.0, **gen)
    for i, (wg, wl) in enumerate(expected.tolist()):
        reference = logits_with_peft_scaling(model, ids, mask, wg, wl, **gen)
        assert torch.equal(out.sequences[i], reference.sequences[i])
        for step, ref_step, fixed_step in zip(out.scores, reference.scores, fixed.scores):
            torch.testing.assert_close(step[i], ref_step[i], rtol=1e-4, atol=1e-4)
        assert max((s[i] - f[i]).abs().max() for s, f in zip(out.scores, fixed.scores)) > 1e-3


# ---- the client -------------------------------------------------------------------------------
def test_client_stores_its_sample_and_weights_every_test_instance(tmp_path, model_dir, monkeypatch):
    from safetensors import safe_open

    from asymlora.data.templates import get_template
    from asymlora.data.tokenize import encode_prompt
    from asymlora.federated import feddpa_inference
    from asymlora.federated.client import FederatedClient

    cfg = tiny_config(tmp_path, model_dir, "feddpa", [2, 2], n_train=[6, 6], max_eval_examples=2,
                      feddpa_reference_size=4)
    client = FederatedClient(cfg, 0)
    client.fit(1)
    res = client.evaluate()
    path = client.store.root / "feddpa_reference.safetensors"
    with safe_open(str(path), framework="pt") as f:
        refs = f.get_tensor("references")
    assert refs.shape == (4, 32)                                   # 4 of the 6 training prompts, hidden 32
    model, tok = client._ensure_model(), client._tokenizer
    template = get_template(cfg.training.template, tok)
    _, test = client.examples()
    reps = torch.cat([prompt_representations(model, torch.tensor([encode_prompt(tok, template, ex)]),
                                             torch.ones(1, len(encode_prompt(tok, template, ex)), dtype=torch.long))
                      for ex in test])
    local = instance_weights(reps, refs)[:, 1]
    assert res.metrics["feddpa_local_weight_mean"] == pytest.approx(float(local.mean()), abs=1e-5)
    assert res.metrics["feddpa_local_weight_min"] == pytest.approx(float(local.min()), abs=1e-5)
    # a restarted client reads the stored sample instead of recomputing it
    monkeypatch.setattr(feddpa_inference, "reference_representations",
                        lambda *a, **k: pytest.fail("the stored representations were recomputed"))
    again = FederatedClient(cfg, 0).evaluate()
    assert again.metrics == pytest.approx(res.metrics)
    assert [r["prediction"] for r in again.records] == [r["prediction"] for r in res.records]


def test_fixed_weighting_stores_nothing_and_reports_no_weights(tmp_path, model_dir):
    from asymlora.federated.client import FederatedClient

    cfg = tiny_config(tmp_path, model_dir, "feddpa", [2, 2], feddpa_weighting="fixed")
    client = FederatedClient(cfg, 1)
    res = client.evaluate()
    assert res.metrics == {}
    assert not (client.store.root / "feddpa_reference.safetensors").exists()


def test_a_stored_sample_of_another_client_is_refused(tmp_path, model_dir):
    import shutil

    from asymlora.federated.client import ClientStateError, FederatedClient

    cfg = tiny_config(tmp_path, model_dir, "feddpa", [2, 2])
    first = FederatedClient(cfg, 0)
    feddpa_inference.client_references(first, 16)
    second = FederatedClient(cfg, 1)
    shutil.copy(first.store.root / "feddpa_reference.safetensors", second.store.root / "feddpa_reference.safetensors")
    with pytest.raises(ClientStateError, match=r"feddpa_reference\.safetensors belongs to another run or client"):
        feddpa_inference.client_references(second, 16)
