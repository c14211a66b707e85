"""Differential privacy with Flower's clipping and noise: clipped norms <= C, noise of the configured
standard deviation (seeded, statistical bound), the client mod, a whole run whose clients share the
initial adapter plus the noised total and whose results carry dp-accounting's epsilon, an exact resume
under DP, and every refusal with its reason."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("flwr")

from asymlora.federated.dp import DPSettings  # noqa: E402
from asymlora.federated.flower.dp import DPCombine  # noqa: E402
from asymlora.federated.privacy import epsilon  # noqa: E402

from .runtime_helpers import tiny_config  # noqa: E402


def updates(n=4, size=(50, 40), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"m.lora_B.weight": torch.randn(size, generator=g) * (i + 1), "m.lora_A.weight": torch.randn(3, 7, generator=g)}
            for i in range(n)]


def norm(u):
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in u.values())))


def test_server_side_clipping_bounds_every_update_and_the_mean_is_unweighted():
    ups = updates()
    combine = DPCombine(DPSettings(clip_norm=2.0, noise_multiplier=0.0))
    out = combine(ups, [1, 100, 1, 1])                      # example counts do not weight a DP mean
    clipped = [{k: v * min(1.0, 2.0 / norm(u)) for k, v in u.items()} for u in ups]
    for u in clipped:
        assert norm(u) <= 2.0 * (1 + 1e-6)
    for k in out:
        torch.testing.assert_close(out[k], sum(u[k] for u in clipped) / 4, rtol=1e-5, atol=1e-6)
    norms = [float(norm(u)) for u in ups]
    assert combine.last["update_norms"] == pytest.approx(norms)  # before clipping, in upload order
    assert combine.last["clipped"] == 4                          # every norm is above 2
    between = DPCombine(DPSettings(clip_norm=(norms[1] + norms[2]) / 2, noise_multiplier=0.0))
    between(updates(), [1] * 4)
    assert between.last["clipped"] == 2                          # the two larger ones


def test_the_noise_has_std_z_c_over_n_and_is_seeded():
    ups = [{"k": torch.zeros(200, 500)} for _ in range(5)]
    combine = DPCombine(DPSettings(clip_norm=3.0, noise_multiplier=2.0))
    combine.seed = 7
    out = combine(ups, [1] * 5)["k"]
    expected = 2.0 * 3.0 / 5                                 # z C / n
    assert abs(float(out.std()) / expected - 1) < 0.01     # 1e5 draws: the sample std is within 1%
    assert abs(float(out.mean())) < 4 * expected / 316     # mean within 4 standard errors of 0
    assert torch.equal(combine(ups, [1] * 5)["k"], out)    # same seed, same noise (a resumed round)
    combine.seed = 8
    assert not torch.equal(combine(ups, [1] * 5)["k"], out)


def test_adaptive_clipping_moves_the_norm_towards_the_quantile():
    ups = updates(n=6)                                      # norms grow with i: all far above 0.1
    combine = DPCombine(DPSettings(clipping="adaptive", clip_norm=0.1, noise_multiplier=0.0,
                                   clip_learning_rate=0.5, target_quantile=0.5))
    combine(ups, [1] * 6)
    assert combine.last["clipped"] == 6
    # every update clipped: the unclipped fraction 0 is below 0.5, so the norm grows by exp(0.5 * 0.5)
    assert combine.clip_norm == pytest.approx(0.1 * torch.exp(torch.tensor(0.25)).item())


def test_the_client_mod_clips_and_adds_local_noise():
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from asymlora.federated.flower.dp import CLIP_NORM, NOISE_SEED, client_dp_mod
    from asymlora.federated.flower.inprocess import InProcessGrid  # noqa: F401  (sets Flower's task identity)
    from asymlora.federated.flower.records import ARRAYS, CONFIG, from_record, to_record

    InProcessGrid(None, [])
    up = {"k": torch.ones(100, 100) * 5.0}
    msg = Message(RecordDict({CONFIG: ConfigRecord({CLIP_NORM: 2.0, NOISE_SEED: 3})}), dst_node_id=1,
                  message_type="train")
    msg.metadata.__dict__["_message_id"] = "x"

    def answer(m, c):
        return Message(RecordDict({ARRAYS: to_record(up)}), reply_to=m)

    for mode, std in (("central", 0.0), ("local", 1.5 * 2.0)):
        ctx = Context(run_id=0, node_id=1, node_config={}, state=RecordDict(),
                      run_config={"dp": json.dumps({"mode": mode, "clipping": "client", "noise_multiplier": 1.5})})
        out = from_record(client_dp_mod(msg, ctx, answer).content[ARRAYS])["k"].double()
        clipped = up["k"].double() * 2.0 / float(up["k"].double().norm())
        if mode == "central":
            torch.testing.assert_close(out, clipped)
            assert float(out.norm()) == pytest.approx(2.0)
        else:
            assert abs(float((out - clipped).std()) / std - 1) < 0.03


def test_a_central_dp_run(tmp_path, model_dir):
    from asymlora.federated.client import FederatedClient
    from asymlora.federated.engine import LocalEngine
    from asymlora.federated.session import ServerState

    dp = {"mode": "central", "clipping": "server", "clip_norm": 0.05, "noise_multiplier": 0.8, "delta": 1e-4}
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2, 2], rounds=2, fraction=0.5, dp=dp)   # 2 of 3
    summary = LocalEngine(cfg).run()
    assert summary["privacy"]["epsilon"] == pytest.approx(epsilon(0.8, 2 / 3, 2, 1e-4))
    rounds = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"]
    assert [r["privacy"]["epsilon"] for r in rounds] == pytest.approx([epsilon(0.8, 2 / 3, t, 1e-4) for t in (1, 2)])
    assert "## Differential privacy (central, clipping server, noise multiplier 0.8" in \
        (tmp_path / "out" / "results.md").read_text()
    total = ServerState.load(tmp_path / "out" / "server", cfg).latest
    for c in range(3):   # every client's shared B: its initial B (zero) plus the noised running total
        client = FederatedClient(cfg, c)
        b = {k: v for k, v in client.state.items() if ".lora_B." in k}
        assert b.keys() == total.keys()
        for k in b:
            torch.testing.assert_close(b[k], total[k])


def test_a_dp_run_resumes_exactly(tmp_path, model_dir):
    from asymlora.federated.engine import LocalEngine
    from asymlora.federated.session import ServerState

    dp = {"mode": "central", "clipping": "adaptive", "clip_norm": 0.05, "noise_multiplier": 0.5,
          "clipped_count_stddev": 1.0}
    whole = tiny_config(tmp_path / "whole", model_dir, "fedit", [2, 2, 2], rounds=3, eval_every=3, dp=dp)
    LocalEngine(whole).run()
    cut = tiny_config(tmp_path / "cut", model_dir, "fedit", [2, 2, 2], rounds=3, eval_every=3, dp=dp)

    class Killed(BaseException):
        pass

    def die(phase, t):
        if phase == "checkpoint" and t == 2:
            raise Killed

    with pytest.raises(Killed):
        LocalEngine(cut, on_phase=die).run()
    LocalEngine(cut).run()
    a, b = (ServerState.load(c.output_dir + "/server", c) for c in (whole, cut))
    assert a.dp_clip_norm == b.dp_clip_norm and a.dp_clip_norm != 0.05
    for k in a.latest:
        assert torch.equal(a.latest[k], b.latest[k])


@pytest.mark.parametrize("overrides,message", [
    ({"method": "flora", "ranks": [2, 1]}, "dp: cannot protect flora's uploads: it stacks the uploads"),
    ({"aggregation": "median"}, "dp: the noise is calibrated to the mean of clipped updates; it cannot be combined "
                                "with aggregation median"),
    ({"client_init": "own"}, "dp: clients send updates from one common start; set client_init: shared"),
    ({"dp": {"noise_multiplier": -1}}, r"dp.noise_multiplier: must be >= 0, got -1.0"),
    ({"dp": {"delta": 1.0}}, r"dp.delta: must be in \(0, 1\), got 1.0"),
    ({"dp": {"mode": "local", "clipping": "adaptive"}}, "dp.clipping: local DP clips on the client"),
    ({"dp": {"clipping": "adaptive", "noise_multiplier": 1.0}},
     r"noise_multiplier 1 needs dp.clipped_count_stddev > 0.5 \(default: sampled clients / 20 = 0.1\)"),
    ({"dp": {"epsilon": 3}}, r"dp: unknown key\(s\) \['epsilon'\]"),
])
def test_dp_settings_are_checked_before_anything_loads(overrides, message):
    from asymlora.federated.config import ConfigError, FederatedConfig

    base = dict(model="m", data_dir="d", output_dir="o", method="fedalora", ranks=[2, 2], dp={"clip_norm": 1.0})
    with pytest.raises(ConfigError, match=message):
        FederatedConfig(**{**base, **overrides})
