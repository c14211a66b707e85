"""The Flower ServerApp side (the one round loop) and the ClientApp, run through a loopback Grid: the
same apps as under simulation and deployment, every message inspectable."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from asymlora.federated.flower.apps import build_client_app  # noqa: E402
from asymlora.federated.flower.records import WireError, from_record, record_numel, to_record  # noqa: E402
from asymlora.federated.flower.strategy import make_strategy  # noqa: E402
from asymlora.federated.keys import parse_key  # noqa: E402
from asymlora.federated.results import formula_comm  # noqa: E402

from .flower_helpers import LoopbackGrid  # noqa: E402
from .runtime_helpers import tiny_config  # noqa: E402


def run(cfg, n_nodes=None, grid=None, rounds=None):
    grid = grid or LoopbackGrid(build_client_app(), cfg.to_run_config(), n_nodes or cfg.n_clients)
    strategy = make_strategy(cfg)
    strategy.start(grid, num_rounds=rounds or cfg.rounds)
    return grid, strategy, json.loads((Path(cfg.output_dir) / "results.json").read_text())


def roles(keys):
    return {parse_key(k.split("::")[-1]).role for k in keys}


def test_arrays_travel_without_pickle():
    t = {"m.lora_A.default.weight": torch.randn(2, 3), "m.lora_B.default.weight": torch.randn(4, 2)}
    rec = to_record(t)
    back = from_record(rec)
    assert all(torch.equal(back[k], t[k]) for k in t) and record_numel(rec) == 14
    assert to_record({"x": torch.ones(2, dtype=torch.bfloat16)})["x"].dtype == "float32"
    from flwr.app import Array, ArrayRecord
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)   # a pickled payload
    rec = ArrayRecord({"x": Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buf.getvalue())})
    with pytest.raises(WireError, match="array 'x': cannot be read.*allow_pickle"):
        from_record(rec)


@pytest.mark.parametrize("method,ranks", [("fedit", [2, 2]), ("feddpa", [2, 2]), ("fedsa", [2, 1]),
                                          ("fedalora", [2, 2]), ("fedalora", [2, 1]), ("zeropadding", [2, 1]),
                                          ("flora", [2, 1])])
def test_strategy_runs_and_measures_what_the_formula_says(tmp_path, model_dir, method, ranks):
    cfg = tiny_config(tmp_path, model_dir, method, ranks, max_local_steps=1, eval_every=2)
    grid, strategy, results = run(cfg)
    formula = formula_comm(cfg)
    assert [r["accepted"] for r in results["rounds"]] == [[0, 1], [0, 1]]
    for r in results["rounds"]:
        assert r["comm"]["total_params"] == formula["wire_total_params"]          # the tensors aggregated
    # what the messages carried: each upload once, each round's broadcast once to each client
    up = [sum(record_numel(a) for a in m.content.array_records.values()) for m in grid.received
          if m.metadata.message_type == "train" and not m.has_error()]
    down = [sum(record_numel(a) for a in m.content.array_records.values()) for m in grid.sent]
    wire = [(sum(p for p, _ in r["wire"]["upload"].values()), sum(p for p, _ in r["wire"]["download"].values()))
            for r in results["rounds"]]
    assert sum(up) == sum(u for u, _ in wire) and sum(down) == sum(d for _, d in wire)
    assert results["summary"]["params_m_measured"] * 1e6 == pytest.approx(formula["wire_total_params"])
    assert set(results["summary"]["clients"]) == {"0", "1"}
    assert strategy.state.round == 2


@pytest.mark.parametrize("ranks,private", [([2, 2], {"lora_A"}), ([2, 1], {"declora_A", "declora_M"})])
def test_fedalora_messages_never_carry_a(tmp_path, model_dir, ranks, private):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", ranks, max_local_steps=1, eval_every=2)
    grid, _, _ = run(cfg)
    up, down = roles(grid.array_keys(grid.received)), roles(grid.array_keys(grid.sent))
    assert up and down and not (up | down) & private
    assert up == ({"lora_B"} if ranks[0] == ranks[1] else {"declora_B1", "declora_B2"})


def test_timeout_restart_and_resume(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "flora", [2, 1, 1], max_local_steps=1, rounds=3, eval_every=1)
    grid = LoopbackGrid(build_client_app(), cfg.to_run_config(), 3)
    grid.silent.add((2, "train", 1))            # client 2 does not answer in round 1
    run(cfg, grid=grid, rounds=1)               # the ServerApp stops after round 1
    # client 1's SuperNode restarts under a new node id; a new ServerApp process resumes the run
    grid.remove_node(1001)
    grid.add_node(2001, 1)
    grid2, strategy, results = run(cfg, grid=grid)
    r1, r2, r3 = results["rounds"]
    assert r1["accepted"] == [0, 1]
    assert r1["rejected"] == [{"client": 2, "reason": "timed out: no reply within 3600s"}]
    assert r2["accepted"] == r3["accepted"] == [0, 1, 2]
    assert strategy.nodes == {1000: 0, 2001: 1, 1002: 2}
    # every client merged every round's stack exactly once (FLoRA catches up a client that missed one)
    from asymlora.federated.client import FederatedClient
    deltas = [FederatedClient(cfg, c).base_deltas for c in range(3)]
    for m in deltas[0]:
        torch.testing.assert_close(deltas[1][m], deltas[0][m])
        torch.testing.assert_close(deltas[2][m], deltas[0][m])
    stacks = strategy.state.kept
    m = next(iter(deltas[0]))
    expected = sum(stacks[r][f"{m}.lora_B.default.weight"] @ stacks[r][f"{m}.lora_A.default.weight"]
                   for r in (1, 2, 3))
    torch.testing.assert_close(deltas[0][m], expected)


def test_crashing_client_app_is_reported_with_its_error(tmp_path, model_dir):
    def crash_in_round_1(msg, ctx, call_next):
        if msg.metadata.message_type == "train" and int(ctx.node_config["partition-id"]) == 1 \
                and int(msg.content["config"]["server-round"]) == 1:
            raise MemoryError("killed by the OOM killer")
        return call_next(msg, ctx)

    cfg = tiny_config(tmp_path, model_dir, "fedsa", [2, 2], max_local_steps=1, eval_every=2)
    grid = LoopbackGrid(build_client_app(mods=[crash_in_round_1]), cfg.to_run_config(), 2)
    _, _, results = run(cfg, grid=grid)
    r1 = results["rounds"][0]
    assert r1["accepted"] == [0] and r1["participants"] == [0, 1]
    assert r1["rejected"] == [{"client": 1, "reason": "crashed: MemoryError: killed by the OOM killer"}]
