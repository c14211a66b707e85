"""The decomposition's upload forms (`upload: factors | product | auto`): what a client sends, that
the server's aggregate is the same whatever the form, how the server checks a form against the
configuration, and a whole run in each form."""

from __future__ import annotations

import json

import pytest
import torch

from asymlora.federated.algorithms import FedALoRAHet, FedSALoRAHet, build_method
from asymlora.federated.config import ConfigError
from asymlora.federated.keys import group_by_module, parse_key
from asymlora.federated.validation import ClientUpdate, validate_updates

from .fedhelpers import decomposed_state

# Ranks and d_m chosen so that `auto` mixes the forms: with d_m 5 the product (d x 5) is no larger
# than the factors ((d + 5) r) from r = 4 for d = 16 (80 <= 84) but only from r = 5 for d = 32.
RANKS, DM = [6, 4, 1], 5
SIDES = [("B", FedALoRAHet, "declora_B0", "declora_B2", "declora_B1"),
         ("A", FedSALoRAHet, "declora_A0", "declora_A1", "declora_A2")]


def roles(upload):
    return {parse_key(k).role for k in upload}


def uploads_of(cls, side, upload, ranks=RANKS):
    states = [decomposed_state(r, DM, side, seed=i) for i, r in enumerate(ranks)]
    return states, [cls(upload=upload, rank=r).client_upload(s) for s, r in zip(states, ranks)]


@pytest.mark.parametrize("side, cls, acc, left, right", SIDES)
def test_product_upload_is_the_product_under_the_accumulator_key(side, cls, acc, left, right):
    state = decomposed_state(4, DM, side, seed=3)
    up = cls(upload="product").client_upload(state)
    assert roles(up) == {acc}
    for module, r in group_by_module(up).items():
        key = r[acc]
        torch.testing.assert_close(up[key], state[key.replace(acc, left)] @ state[key.replace(acc, right)],
                                   rtol=0, atol=0)
        assert up[key].shape == state[key].shape          # the accumulator's shape, whatever the rank
    factors = cls().client_upload(state)
    assert roles(factors) == {left, right}


@pytest.mark.parametrize("side, cls, acc, left, right", SIDES)
def test_auto_sends_the_smaller_form_per_module(side, cls, acc, left, right):
    _, ups = uploads_of(cls, side, "auto")
    for up, r in zip(ups, RANKS):
        for module, got in group_by_module(up).items():
            if acc in got:
                rows, cols = up[got[acc]].shape
                assert rows * cols <= (rows + cols) * r, (module, r)
            else:
                rows, cols = up[got[left]].shape[0], up[got[right]].shape[1]
                assert (rows + cols) * r < rows * cols, (module, r)
    assert roles(ups[0]) == {acc} and roles(ups[2]) == {left, right}
    if side == "B":   # rank 4: v_proj (d_out 16) as its product, q_proj and down_proj (d_out 32) as factors
        assert roles(ups[1]) == {acc, left, right}


@pytest.mark.parametrize("side, cls, acc, left, right", SIDES)
@pytest.mark.parametrize("upload", ["product", "auto"])
def test_aggregate_equals_the_factors_aggregate(side, cls, acc, left, right, upload):
    states, factor_ups = uploads_of(cls, side, "factors")
    _, ups = uploads_of(cls, side, upload)
    server = cls(upload=upload)
    out, ref = server.aggregate(ups, [3, 5, 7]), cls().aggregate(factor_ups, [3, 5, 7])
    assert set(out) == set(ref) and roles(out) == {acc}
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-6, atol=1e-6)
        # by hand: sum_i n_i / 15 * left_i right_i
        hand = sum(n / 15 * (s[k.replace(acc, left)].double() @ s[k.replace(acc, right)].double())
                   for s, n in zip(states, [3, 5, 7]))
        torch.testing.assert_close(out[k].double(), hand, rtol=1e-5, atol=1e-6)
    # with products it is a plain weighted sum of same-shape uploads
    if upload == "product":
        for k in out:
            torch.testing.assert_close(out[k], sum(n / 15 * up[k] for up, n in zip(ups, [3, 5, 7])))


def upd(cid, tensors, n=4):
    return ClientUpdate(cid, tensors, n)


def test_validation_accepts_the_configured_form_and_names_the_wrong_one():
    _, prods = uploads_of(FedALoRAHet, "B", "product")
    _, facts = uploads_of(FedALoRAHet, "B", "factors")
    product = FedALoRAHet(upload="product")
    expected = product.upload_pattern(prods[0])
    assert set(v for v in expected.values()) <= {(32, DM), (16, DM)}   # fixed shapes, no rank axis
    res = validate_updates(product, [upd("p", prods[2]), upd("f", facts[1])], expected=expected)
    assert [u.client_id for u in res.accepted] == ["p"]
    assert "unexpected key" in res.rejected[0].reason
    assert "fedalora-het uploads declora_B0, the product declora_B2 declora_B1, with upload: product" \
        in res.rejected[0].reason
    factors = FedALoRAHet()
    res = validate_updates(factors, [upd("f", facts[1]), upd("p", prods[1])],
                           expected=factors.upload_pattern(facts[0]))
    assert [u.client_id for u in res.accepted] == ["f"]
    assert "(fedalora-het uploads declora_B2/declora_B1, with upload: factors)" in res.rejected[0].reason


def test_auto_validation_takes_both_forms_against_one_pattern():
    _, ups = uploads_of(FedALoRAHet, "B", "auto")
    auto = FedALoRAHet(upload="auto")
    expected = auto.upload_pattern(ups[0])                 # client 0's: all products
    res = validate_updates(auto, [upd(str(i), u) for i, u in enumerate(ups)], expected=expected)
    assert [u.client_id for u in res.accepted] == ["0", "1", "2"] and not res.rejected
    # a product of the wrong width, and factors of another d_m, are still caught, named by their key
    key = next(k for k in ups[0] if "v_proj" in k)
    wide = {**ups[0], key: torch.ones(16, DM + 1)}
    b1 = next(k for k in ups[2] if k.endswith("declora_B1"))
    other_dm = {**ups[2], b1: torch.ones(1, DM + 1)}
    res = validate_updates(auto, [upd("wide", wide), upd("dm", other_dm)], expected=expected, min_clients=0)
    reasons = {r.client_id: r.reason for r in res.rejected}
    assert f"{key!r} has shape (16, 6), expected (16, 5)" in reasons["wide"]
    assert f"{b1!r} has shape (1, 6), expected (r, 5)" in reasons["dm"]


def test_auto_rejects_the_larger_form_and_a_half_of_each():
    _, facts = uploads_of(FedALoRAHet, "B", "factors")
    _, prods = uploads_of(FedALoRAHet, "B", "product")
    auto = FedALoRAHet(upload="auto")
    problems = auto.check_upload(facts[0])                 # rank 6: every product is smaller
    assert problems and all("upload: auto sends the smaller" in p for p in problems)
    assert "sends factors of rank 6 (222 values) where the product has 160" in " ".join(problems)
    assert not auto.check_upload(prods[2])                 # a product carries no rank: the server cannot tell
    assert "at rank 1 are 37: upload: auto sends the smaller" in " ".join(
        FedALoRAHet(upload="auto", rank=1).check_upload(prods[2]))   # the client's own method can
    module_key = next(iter(prods[0]))
    mixed = {module_key: prods[0][module_key], module_key.replace("declora_B0", "declora_B1"): torch.ones(6, DM)}
    assert "sends declora_B0/declora_B1, expected declora_B2/declora_B1 or declora_B0" in " ".join(
        auto.check_upload(mixed))


def test_unknown_upload_mode():
    with pytest.raises(ValueError, match="upload: expected one of factors, product, auto, got 'sum'"):
        FedALoRAHet(upload="sum")


# ---- the config key and whole runs ----------------------------------------------------------------
def test_config_upload_key(tmp_path, model_dir):
    from .runtime_helpers import tiny_config

    cfg = tiny_config(tmp_path, model_dir, "fedsa", [4, 1], upload="auto")
    method = cfg.make_method(4)
    assert isinstance(method, FedSALoRAHet) and (method.upload, method.rank) == ("auto", 4)
    # the forms give one aggregate: a run may switch, and older runs keep their fingerprints
    assert cfg.fingerprint() == tiny_config(tmp_path, model_dir, "fedsa", [4, 1]).fingerprint()
    with pytest.raises(ConfigError, match="upload: product applies to the decomposition only"):
        tiny_config(tmp_path, model_dir, "fedalora", [2, 2], upload="product")
    with pytest.raises(ConfigError, match="upload: expected one of factors, product, auto, got 'both'"):
        tiny_config(tmp_path, model_dir, "fedalora", [4, 1], upload="both")
    assert build_method("fedalora", heterogeneous=True).upload == "factors"


def test_runs_in_each_form_end_alike_and_measure_their_formula(tmp_path, model_dir):
    """Fed-ALoRA, ranks 4, 2, 1, d_m 3 on the tiny model: under auto, client 0 sends products and the
    others factors. Final client states agree with the factors run to float rounding."""
    from asymlora.federated.client import FederatedClient
    from asymlora.federated.engine import LocalEngine
    from asymlora.federated.results import formula_comm

    from .runtime_helpers import tiny_config

    finals, sent = {}, {}
    for upload in ("factors", "auto", "product"):
        cfg = tiny_config(tmp_path / upload, model_dir, "fedalora", [4, 2, 1], upload=upload)
        LocalEngine(cfg).run()
        finals[upload] = [FederatedClient(cfg, c).state for c in range(3)]
        rounds = json.loads((tmp_path / upload / "out" / "results.json").read_text())["rounds"]
        assert [len(r["accepted"]) for r in rounds] == [3, 3]
        formula = formula_comm(cfg)
        assert all(r["comm"]["upload_params"] == formula["upload_params"] for r in rounds)
        assert all(r["comm"]["total_params"] == formula["wire_total_params"] for r in rounds)
        sent[upload] = formula["upload_params"]
    # per client, 2 layers of q_proj (32 x d_m) and v_proj (16 x d_m): factors (32 + 3) r + (16 + 3) r,
    # product 96 + 48; auto takes the product at rank 4 only; means over ranks 4, 2, 1
    assert sent == {"factors": 2 * 54 * 7 / 3, "product": 2 * 144, "auto": 2 * (144 + 54 * 3) / 3}
    for upload in ("auto", "product"):
        for ref, got in zip(finals["factors"], finals[upload]):
            assert set(ref) == set(got)
            for k in ref:
                # bit for bit here (the product is the same float32 matmul on the client or on the
                # server); the contract is float rounding, as on a GPU client and a CPU server
                torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)


# ---- what products open up: other rules than the weighted mean ------------------------------------
def test_only_products_can_go_to_another_aggregation_rule():
    pytest.importorskip("flwr")
    from asymlora.federated.aggregation import AggregationError, AggregationRule
    from asymlora.federated.flower.robust import make_combine

    _, prods = uploads_of(FedALoRAHet, "B", "product")
    median = make_combine(AggregationRule("median"))
    out = FedALoRAHet(upload="product").aggregate_with(median, prods, [1, 1, 1])
    for k in out:   # three clients: the element-wise middle value of their products
        torch.testing.assert_close(out[k], torch.stack([u[k] for u in prods]).median(0).values)
    mean = FedALoRAHet(upload="product").aggregate_with(make_combine(AggregationRule("fedavg")), prods, [3, 5, 7])
    ref = FedALoRAHet(upload="product").aggregate(prods, [3, 5, 7])
    for k in ref:
        torch.testing.assert_close(mean[k], ref[k])
    for upload in ("factors", "auto"):
        with pytest.raises(AggregationError, match=f"upload: {upload} sends factors; set upload: product"):
            FedALoRAHet(upload=upload).aggregate_with(median, prods, [1, 1, 1])


def test_a_median_run_needs_and_takes_products(tmp_path, model_dir):
    pytest.importorskip("flwr")
    from asymlora.federated.session import ServerState

    from .runtime_helpers import run_recording, tiny_config

    with pytest.raises(ConfigError, match="aggregation median cannot apply to fedalora: .* set upload: product"):
        tiny_config(tmp_path, model_dir, "fedalora", [4, 2, 1], aggregation="median")
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [4, 2, 1], aggregation="median", upload="product", rounds=1)
    sent, _ = run_recording(cfg)
    total = ServerState.load(cfg.output_dir + "/server", cfg).latest
    assert set(total) == set(sent[0]) == set(sent[2]) and roles(total) == {"declora_B0"}
    for k in total:
        torch.testing.assert_close(total[k], torch.stack([sent[c][k] for c in range(3)]).median(0).values)
