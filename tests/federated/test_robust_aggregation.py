"""Robust aggregation with Flower's functions on hand-made uploads: median, trimmed mean, Krum,
Multi-Krum and Bulyan against a hand computation; one client scaled by 100 moves FedAvg out of the
honest clients' range but not the robust rules; refusals with their reasons."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")

from asymlora.federated.aggregation import AggregationError, AggregationRule  # noqa: E402
from asymlora.federated.algorithms import build_method  # noqa: E402
from asymlora.federated.flower.robust import make_combine  # noqa: E402

KEY_A, KEY_B = "m.q_proj.lora_A.weight", "m.q_proj.lora_B.weight"


def uploads(values):
    """One client per value v: A = v * [[1, 2]], B = v * [[1], [-1]]."""
    return [{KEY_A: torch.tensor([[1.0, 2.0]]) * v, KEY_B: torch.tensor([[1.0], [-1.0]]) * v} for v in values]


def combine(name, ups, counts=None, **kw):
    method = build_method("fedit")
    return method.aggregate_with(make_combine(AggregationRule(name, **kw)), ups, counts or [1] * len(ups))


def test_fedavg_is_the_example_weighted_mean():
    out = combine("fedavg", uploads([1.0, 4.0]), [3, 1])
    torch.testing.assert_close(out[KEY_A], torch.tensor([[1.75, 3.5]]))


def test_median_and_trimmed_mean_by_hand():
    ups = uploads([1.0, 2.0, 3.0, 10.0, -50.0])
    torch.testing.assert_close(combine("median", ups)[KEY_A], torch.tensor([[2.0, 4.0]]))
    # trim 0.2 of 5 = 1 at each end: mean of 1, 2, 3
    torch.testing.assert_close(combine("trimmed_mean", ups, trim_fraction=0.2)[KEY_A], torch.tensor([[2.0, 4.0]]))
    torch.testing.assert_close(combine("trimmed_mean", ups, trim_fraction=0.0)[KEY_B],
                               torch.tensor([[-6.8], [6.8]]))


def test_krum_picks_the_upload_closest_to_its_neighbours():
    # squared distances between whole uploads scale with (v_i - v_j)^2 x |[1, 2, 1, -1]|^2 = 7 (v_i - v_j)^2;
    # n = 5, f = 1: each score sums the n - f - 2 = 2 smallest distances to others
    vals = [1.0, 1.1, 1.3, 2.0, 9.0]
    scores = []
    for i, v in enumerate(vals):
        d = sorted(7 * (v - w) ** 2 for j, w in enumerate(vals) if j != i)
        scores.append(sum(d[:2]))
    best = vals[min(range(5), key=scores.__getitem__)]
    torch.testing.assert_close(combine("krum", uploads(vals), byzantine=1)[KEY_A], torch.tensor([[1.0, 2.0]]) * best)
    # Multi-Krum keeps the 3 best-scored and averages them (FedAvg over those 3)
    keep = sorted(range(5), key=scores.__getitem__)[:3]
    mean = sum(vals[i] for i in keep) / 3
    torch.testing.assert_close(combine("multikrum", uploads(vals), byzantine=1, keep=3)[KEY_A],
                               torch.tensor([[1.0, 2.0]]) * mean)


def bulyan_by_hand(vals, f):
    """Bulyan on uploads v * u (one direction u): n - 2f rounds of Krum, each keeping the best-scored
    upload and removing it; then the mean of the n - 4f kept values closest to their median."""
    left, kept = list(vals), []
    for _ in range(len(vals) - 2 * f):
        closest = max(1, len(left) - f - 2)
        scores = [sum(sorted((v - w) ** 2 for j, w in enumerate(left) if j != i)[:closest])
                  for i, v in enumerate(left)]
        kept.append(left.pop(min(range(len(left)), key=scores.__getitem__)))
    median = sorted(kept)[len(kept) // 2]
    nearest = sorted(kept, key=lambda v: abs(v - median))[:len(vals) - 4 * f]
    return sum(nearest) / len(nearest)


def test_bulyan_needs_4f_plus_3_and_stays_with_the_honest():
    vals = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 100.0]
    out = combine("bulyan", uploads(vals), byzantine=1)
    expected = bulyan_by_hand(vals, 1)
    assert 1.0 <= float(out[KEY_A][0, 0]) <= 1.5   # within the honest uploads, the attacker's 100 left out
    torch.testing.assert_close(out[KEY_A], torch.tensor([[1.0, 2.0]]) * expected)
    torch.testing.assert_close(out[KEY_B], torch.tensor([[1.0], [-1.0]]) * expected)
    with pytest.raises(AggregationError, match=r"bulyan with byzantine_clients 2 needs at least 11 uploads "
                                               r"\(4f \+ 3\), got 7"):
        combine("bulyan", uploads(vals), byzantine=2)


def test_one_scaled_client_of_eight_moves_fedavg_but_not_the_robust_rules():
    torch.manual_seed(0)
    honest = [{KEY_A: torch.randn(4, 8), KEY_B: torch.randn(8, 4)} for _ in range(7)]
    attacker = {k: v * 100 for k, v in honest[0].items()}
    ups = honest + [attacker]
    lo = {k: torch.stack([u[k] for u in honest]).min(0).values for k in (KEY_A, KEY_B)}
    hi = {k: torch.stack([u[k] for u in honest]).max(0).values for k in (KEY_A, KEY_B)}
    inside = lambda out: all(bool(((out[k] >= lo[k] - 1e-6) & (out[k] <= hi[k] + 1e-6)).all())  # noqa: E731
                             for k in out)
    assert not inside(combine("fedavg", ups))
    for name, kw in [("median", {}), ("trimmed_mean", {"trim_fraction": 0.2}), ("krum", {"byzantine": 1}),
                     ("multikrum", {"byzantine": 1})]:
        assert inside(combine(name, ups, **kw)), name


@pytest.mark.parametrize("method,reason", [
    ("flora", "flora: it stacks the uploads along the rank axis; nothing is averaged"),
    ("zeropadding", "zeropadding: it pads each client's factors to the round's largest rank"),
])
def test_rules_are_refused_where_nothing_is_averaged(method, reason):
    m = build_method(method, heterogeneous=True)
    with pytest.raises(AggregationError, match=reason):
        m.aggregate_with(make_combine(AggregationRule("median")), uploads([1.0, 2.0]), [1, 1])


@pytest.mark.parametrize("rule,message", [
    (AggregationRule("mean"), "aggregation: unknown rule 'mean'"),
    (AggregationRule("trimmed_mean", trim_fraction=0.5), r"trim_fraction must be in \[0, 0.5\), got 0.5"),
    (AggregationRule("krum", byzantine=-1), "byzantine_clients must be an integer >= 0, got -1"),
])
def test_bad_rules(rule, message):
    with pytest.raises(AggregationError, match=message):
        make_combine(rule)


# ---- in a run ---------------------------------------------------------------------------------------
def run_attacked(tmp_path, model_dir, aggregation, **kw):
    from asymlora.federated.session import ServerState

    from .runtime_helpers import run_recording, tiny_config

    cfg = tiny_config(tmp_path / aggregation, model_dir, "fedalora", [2, 2, 2, 2, 2], rounds=1, aggregation=aggregation,
                      byzantine={"clients": [4], "kind": "scale", "factor": 100.0}, **kw)
    sent, summary = run_recording(cfg)
    assert summary["aggregation"] == ("fedavg, " if aggregation == "fedavg" else f"{aggregation}; ") \
        + "simulated attack: clients 4 send scale uploads (factor 100)"
    return sent, ServerState.load(cfg.output_dir + "/server", cfg).latest


def test_a_scaled_attacker_in_a_run_poisons_fedavg_not_the_median(tmp_path, model_dir):
    sent, avg = run_attacked(tmp_path, model_dir, "fedavg")
    _, med = run_attacked(tmp_path, model_dir, "median")
    honest = [sent[c] for c in range(4)]
    for key in avg:
        stack = torch.stack([u[key] for u in honest])
        lo, hi = stack.min(0).values - 1e-6, stack.max(0).values + 1e-6
        assert torch.equal(sent[4][key], sent[4][key]) and sent[4][key].abs().max() > 10 * stack.abs().max()
        assert bool(((med[key] >= lo) & (med[key] <= hi)).all())
        assert not bool(((avg[key] >= lo) & (avg[key] <= hi)).all())


@pytest.mark.parametrize("overrides,message", [
    ({"method": "flora", "ranks": [2, 1], "aggregation": "median"},
     "aggregation median cannot apply to flora: it stacks the uploads along the rank axis"),
    ({"aggregation": "krum", "byzantine_clients": 1, "ranks": [2, 2, 2, 2]},
     r"krum with byzantine_clients 1 needs at least 5 uploads \(2f \+ 3\), got 4"),
    ({"aggregation": "trimmed_mean", "trim_fraction": 0.6}, r"trim_fraction must be in \[0, 0.5\), got 0.6"),
    ({"byzantine": {"clients": [7], "kind": "scale"}}, r"byzantine.clients: expected a non-empty list of client ids "
                                                       r"in 0..1, got \[7\]"),
    ({"byzantine": {"clients": [1], "kind": "flip"}}, "byzantine.kind: expected one of scale, sign_flip, gaussian, nan"),
])
def test_protection_settings_are_checked_before_anything_loads(tmp_path, overrides, message):
    from asymlora.federated.config import ConfigError, FederatedConfig

    base = dict(model="m", data_dir="d", output_dir="o", method="fedalora", ranks=[2, 2])
    with pytest.raises(ConfigError, match=message):
        FederatedConfig(**{**base, **overrides})


def test_attack_kinds():
    from asymlora.federated.byzantine import Attack

    up = {"k": torch.tensor([[1.0, -2.0], [3.0, 4.0]])}
    g = torch.Generator().manual_seed(0)
    assert torch.equal(Attack((0,), "scale", 10.0).corrupt(up, g)["k"], up["k"] * 10)
    assert torch.equal(Attack((0,), "sign_flip").corrupt(up, g)["k"], -up["k"])
    assert torch.isnan(Attack((0,), "nan").corrupt(up, g)["k"]).all()
    noisy = Attack((0,), "gaussian", 2.0).corrupt(up, g)["k"]
    assert noisy.shape == up["k"].shape and not torch.equal(noisy, up["k"])
