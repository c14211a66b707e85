"""SecAgg+ (Flower's workflow stages and mod) in the in-process engine: the server's aggregate equals the
plain weighted mean within the quantisation error, no client's upload reaches the server, a client
dropping out within the threshold does not break the round, the overhead is measured, and settings
that cannot work are refused with their reason."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("flwr")

from asymlora.federated.client import FederatedClient  # noqa: E402
from asymlora.federated.engine import LocalEngine  # noqa: E402
from asymlora.federated.session import ServerState  # noqa: E402

from .runtime_helpers import tiny_config  # noqa: E402


def run(tmp_path, model_dir, name, factory=FederatedClient, **kw):
    cfg = tiny_config(tmp_path / name, model_dir, "fedalora", [2, 2, 2, 2], n_train=[4, 6, 4, 2], rounds=1, **kw)
    LocalEngine(cfg, client_factory=factory).run()
    return cfg, ServerState.load(cfg.output_dir + "/server", cfg), \
        json.loads((tmp_path / name / "out" / "results.json").read_text())["rounds"][0]


def test_secure_aggregate_equals_the_plain_mean_and_no_upload_reaches_the_server(tmp_path, model_dir):
    _, plain, _ = run(tmp_path, model_dir, "plain")
    cfg, secure, record = run(tmp_path, model_dir, "secure", secagg=True)
    assert record["accepted"] == [0, 1, 2, 3]
    for k, v in plain.latest.items():
        # example weights are quantised too: within 1e-4 of the weighted mean of values ~1e-2
        torch.testing.assert_close(secure.latest[k], v, atol=1e-4, rtol=0)
    assert not torch.equal(secure.latest[next(iter(plain.latest))], plain.latest[next(iter(plain.latest))])
    # what the server received from each node: keys, shares and one masked vector, never the upload's arrays
    sent, received = record["secagg"]["bytes_sent"], record["secagg"]["bytes_received"]
    assert set(sent) == set(received) and len(received) == 4 and all(b > 0 for b in received.values())


class DropsOut(FederatedClient):
    def fit(self, server_round):
        if self.client_id == 2:
            raise RuntimeError("the node went away")
        return super().fit(server_round)


def test_a_client_dropping_out_within_the_threshold_does_not_break_the_round(tmp_path, model_dir):
    cfg, secure, record = run(tmp_path, model_dir, "drop", factory=DropsOut, secagg=True)
    assert record["accepted"] == [0, 1, 3] and record["rejected"] == [{"client": 2, "reason": "dropped out of SecAgg+"}]
    _, plain, _ = run(tmp_path, model_dir, "plain-drop", factory=DropsOut)
    for k, v in plain.latest.items():
        torch.testing.assert_close(secure.latest[k], v, atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides,message", [
    ({"method": "flora", "ranks": [2, 1, 1]}, "secagg: the server can only get the sum of same-shape uploads; flora"),
    ({"aggregation": "median"}, "secagg: the server sees only the sum, so aggregation median"),
    ({"dp": {"mode": "central"}}, "secagg: with central DP the server would have to clip or noise each update"),
    ({"ranks": [2, 2]}, r"secagg: SecAgg\+ needs at least 3 sampled clients, this run samples 2"),
    ({"secagg": {"clipping_range": -1}}, r"secagg.clipping_range: expected a positive finite number, got -1"),
])
def test_secagg_settings_are_checked_before_anything_loads(overrides, message):
    from asymlora.federated.config import ConfigError, FederatedConfig

    base = dict(model="m", data_dir="d", output_dir="o", method="fedit", ranks=[2, 2, 2], secagg=True)
    with pytest.raises(ConfigError, match=message):
        FederatedConfig(**{**base, **overrides})
