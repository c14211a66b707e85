"""The traffic counted from the tensors each method really sends equals comm.py's formula, for
every method, on a tiny real model with q_proj, v_proj (grouped-query: 32 -> 16) and down_proj."""

from __future__ import annotations

import pytest
import torch

from asymlora.federated.algorithms import build_method
from asymlora.federated.comm import comm_cost, measure_comm

from .fedhelpers import TARGETS, TINY, decomposed_state, lora_model, lora_state

HOM, HET, DM = [2, 2, 2], [4, 2, 1], 3


def feddpa_state(rank, seed):
    model = lora_model(rank, seed, adapters=("global", "local"))
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


CASES = {
    "fedit": (dict(), HOM, None, lambda r, s: lora_state(r, s)),
    "feddpa": (dict(), HOM, None, feddpa_state),
    "fedsa": (dict(), HOM, None, lambda r, s: lora_state(r, s)),
    "fedalora": (dict(), HOM, None, lambda r, s: lora_state(r, s)),
    "zeropadding": (dict(heterogeneous=True), HET, None, lambda r, s: lora_state(r, s)),
    "flora": (dict(heterogeneous=True), HET, None, lambda r, s: lora_state(r, s)),
    "fedalora-het": (dict(heterogeneous=True), HET, DM, lambda r, s: decomposed_state(r, DM, "B", s)),
    "fedsa-het": (dict(heterogeneous=True), HET, DM, lambda r, s: decomposed_state(r, DM, "A", s)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_measured_traffic_equals_formula(case):
    opts, ranks, dm, make = CASES[case]
    name = case.split("-")[0]
    method = build_method(name, **opts)
    states = [make(r, i) for i, r in enumerate(ranks)]
    uploads = [method.client_upload(s) for s in states]
    broadcast = method.aggregate(uploads, [3, 5, 7])
    measured = measure_comm(uploads, broadcast)
    report = comm_cost(TINY, TARGETS, name, ranks, dm=dm, dtype_bytes=4)
    assert measured.per_client_upload_params == [c.upload_params for c in report.clients] or name == "feddpa"
    exact = lambda x: pytest.approx(x, rel=1e-12)  # noqa: E731  (means over 3 clients)
    assert measured.upload_params == exact(report.wire_upload_params)
    assert measured.download_params == report.wire_download_params
    assert measured.total_params == exact(report.wire_total_params)
    assert measured.total_bytes == exact(4 * report.wire_total_params)  # float32 tensors
    if name != "feddpa":
        assert report.total_params == exact(report.wire_total_params)
    else:
        assert report.total_params == exact(2 * measured.total_params)  # the paper's count, documented
    assert all(t.dtype == torch.float32 for t in broadcast.values())


@pytest.mark.parametrize("side", ["B", "A"])
@pytest.mark.parametrize("upload", ["factors", "product", "auto"])
def test_measured_traffic_equals_formula_in_every_upload_form(side, upload):
    """d_m 5, ranks 6, 4, 1: under auto, rank 6 sends products, rank 1 factors, and (B side) rank 4
    mixes them across layers of different d_out."""
    name, ranks, dm = ("fedalora" if side == "B" else "fedsa"), [6, 4, 1], 5
    states = [decomposed_state(r, dm, side, i) for i, r in enumerate(ranks)]
    uploads = [build_method(name, heterogeneous=True, upload=upload, rank=r).client_upload(s)
               for s, r in zip(states, ranks)]
    measured = measure_comm(uploads, build_method(name, heterogeneous=True, upload=upload).aggregate(uploads, [1, 2, 3]))
    report = comm_cost(TINY, TARGETS, name, ranks, dm=dm, upload=upload)
    assert measured.per_client_upload_params == [c.upload_params for c in report.clients]
    assert measured.download_params == report.download_params
    assert measured.total_params == pytest.approx(report.total_params, rel=1e-12)
    if upload == "auto" and side == "B":
        assert [c.upload_form for c in report.clients] == ["product", "mixed", "factors"]
