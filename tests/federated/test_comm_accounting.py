"""Communication formulas from a model config: the paper's Params.(M) and hand-counted shapes."""

from __future__ import annotations

import json

import pytest
from .fedhelpers import TINY

from asymlora.federated.comm import KNOWN_MODULES, comm_cost, layer_shapes, load_model_config

LLAMA2_7B = {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
             "intermediate_size": 11008, "num_hidden_layers": 32, "model_type": "llama"}
HET = [64, 64, 32, 32, 16, 16, 8, 8]
QV = ["q_proj", "v_proj"]


@pytest.mark.parametrize("method, ranks, dm, paper", [
    ("fedit", [8], None, 8.39),
    ("feddpa", [8], None, 16.78),
    ("fedsa", [8], None, 4.19),
    ("fedalora", [8], None, 4.19),
    ("zeropadding", HET, None, 49.28),
    ("flora", HET, None, 141.56),
    ("fedalora", HET, 16, 12.09),
])
def test_reproduces_paper_params_millions(method, ranks, dm, paper):
    report = comm_cost(LLAMA2_7B, QV, method, ranks, dm=dm)
    assert round(report.total_params / 1e6, 2) == paper
    assert report.num_adapted_layers == 64


def test_decomposition_paper_variant_is_12_12_and_exact_counts():
    for method in ("fedalora", "fedsa"):
        report = comm_cost(LLAMA2_7B, QV, method, HET, dm=16)
        # mean rank 30: (4096 + 16) * 30 up + 4096 * 16 down, per layer, 64 layers
        assert report.upload_params == 64 * (4096 + 16) * 30
        assert report.download_params == 64 * 4096 * 16
        assert report.total_params == 12_089_344
        # the paper's print: upload (4096 + 2 * 16) * 30
        assert report.paper_total_params == 64 * ((4096 + 32) * 30 + 4096 * 16)
        assert round(report.paper_total_params / 1e6, 2) == 12.12
        assert report.setting == "heterogeneous"


@pytest.mark.parametrize("method", ["fedalora", "fedsa"])
def test_upload_forms_llama2_7b(method):
    """Issue 9: Params.(M) per client per round, factors 12.09, product 8.39, auto 7.87."""
    got = {u: comm_cost(LLAMA2_7B, QV, method, HET, dm=16, upload=u) for u in ("factors", "product", "auto")}
    assert {u: round(r.total_params / 1e6, 2) for u, r in got.items()} == \
        {"factors": 12.09, "product": 8.39, "auto": 7.87}
    # by hand, per layer (64 of them): the product is 4096 x 16 = 65,536 whatever the rank; the
    # factors (4096 + 16) r are smaller only at rank 8 (32,896); the download is 65,536 in every form
    assert got["product"].upload_params == 64 * 65_536
    assert got["auto"].upload_params == 64 * (6 * 65_536 + 2 * 32_896) / 8
    assert got["auto"].total_params == 7_866_368
    assert [c.upload_form for c in got["auto"].clients] == ["product"] * 6 + ["factors"] * 2
    assert {c.upload_form for c in got["product"].clients} == {"product"}
    assert {c.upload_form for c in got["factors"].clients} == {"factors"}
    for upload, r in got.items():
        assert r.upload == upload and r.download_params == 64 * 65_536
        assert round(r.paper_total_params / 1e6, 2) == 12.12       # the paper's figure, beside ours
        assert r.wire_total_params == r.total_params


def test_auto_decides_per_layer():
    # v_proj 32 -> 16, q_proj 32 -> 32, d_m 5, rank 4: the product is smaller for v_proj only
    r = comm_cost(TINY, QV, "fedalora", [4], dm=5, upload="auto")
    assert r.clients[0].upload_form == "mixed"
    assert r.upload_params == 2 * ((32 + 5) * 4 + 16 * 5)


def test_upload_needs_the_decomposition():
    with pytest.raises(ValueError, match="upload product applies to the decomposition only .*fedit sends its"):
        comm_cost(LLAMA2_7B, QV, "fedit", [8], upload="product")
    with pytest.raises(ValueError, match="upload auto applies to the decomposition only"):
        comm_cost(LLAMA2_7B, QV, "fedalora", [8], upload="auto")
    with pytest.raises(ValueError, match="unknown upload 'sum'; known: factors, product, auto"):
        comm_cost(LLAMA2_7B, QV, "fedalora", HET, dm=16, upload="sum")


def test_feddpa_reports_paper_count_and_the_wire_count():
    report = comm_cost(LLAMA2_7B, QV, "feddpa", [8])
    fedit = comm_cost(LLAMA2_7B, QV, "fedit", [8])
    assert report.total_params == 2 * fedit.total_params
    assert report.wire_total_params == fedit.total_params
    assert any("global LoRA" in n for n in report.notes)


def test_per_client_rows_heterogeneous():
    zp = comm_cost(LLAMA2_7B, QV, "zeropadding", HET, dtype_bytes=2)
    assert [c.rank for c in zp.clients] == HET
    # client 6 (rank 8): uploads its own 8192 x 8 per layer, downloads r_max = 64
    assert zp.clients[6].upload_params == 64 * 8192 * 8
    assert zp.clients[6].download_params == 64 * 8192 * 64
    assert zp.clients[6].total_bytes == 2 * zp.clients[6].total_params
    assert zp.total_bytes == 2 * zp.total_params
    fl = comm_cost(LLAMA2_7B, QV, "flora", HET)
    assert {c.download_params for c in fl.clients} == {64 * 8192 * 240}


def test_grouped_query_attention_hand_count():
    # q_proj 32 -> 32, v_proj 32 -> 16 (2 kv heads of 8), 2 layers, rank 4
    cfg = dict(TINY)
    assert comm_cost(cfg, QV, "fedalora", [4]).upload_params == 2 * (32 * 4 + 16 * 4)
    assert comm_cost(cfg, QV, "fedsa", [4]).upload_params == 2 * (32 * 4 + 32 * 4)
    assert comm_cost(cfg, ["o_proj", "down_proj"], "fedit", [2]).upload_params == 2 * ((32 + 32) * 2 + (64 + 32) * 2)
    het = comm_cost(cfg, ["v_proj"], "fedalora", [4, 2], dm=3)
    assert [c.upload_params for c in het.clients] == [2 * (16 + 3) * 4, 2 * (16 + 3) * 2]
    assert het.download_params == 2 * 16 * 3


def test_layer_shapes_match_a_real_transformers_model():
    cfg = dict(TINY, head_dim=16)  # explicit head_dim different from hidden / heads
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**cfg))
    block = model.model.layers[0]
    for ls in layer_shapes(cfg, KNOWN_MODULES):
        layer = getattr(block.self_attn if ls.module in ("q_proj", "k_proj", "v_proj", "o_proj") else block.mlp,
                        ls.module)
        assert (ls.d_in, ls.d_out) == (layer.in_features, layer.out_features), ls.module
        assert ls.count == 2


def test_config_from_file_and_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_7B))
    a = comm_cost(tmp_path / "config.json", QV, "fedit", [8])
    b = comm_cost(str(tmp_path), QV, "fedit", [8])
    assert a.total_params == b.total_params == 8_388_608
    assert load_model_config({"text_config": LLAMA2_7B}).hidden_size == 4096


def test_single_rank_with_num_clients():
    r = comm_cost(LLAMA2_7B, QV, "flora", [8], num_clients=4)
    assert r.ranks == [8, 8, 8, 8]
    assert r.download_params == 64 * 8192 * 32


@pytest.mark.parametrize("kwargs, match", [
    (dict(targets=["q_proj", "qkv"]), r"unknown target module 'qkv'; known: q_proj, k_proj, v_proj, o_proj, "
                                       r"gate_proj, up_proj, down_proj"),
    (dict(method="fedavg"), r"unknown method 'fedavg'; known: fedit"),
    (dict(method="fedit", ranks=[8, 4]), r"fedit .* needs one rank"),
    (dict(method="fedalora", ranks=[8, 4]), r"needs its width d_m \(--dm"),
    (dict(ranks=[8, 0]), r"rank must be a positive integer, got 0"),
    (dict(ranks=[8, 4], num_clients=3, method="flora"), r"2 ranks given for 3 clients"),
    (dict(targets=[]), r"no target modules"),
])
def test_bad_arguments(kwargs, match):
    args = dict(config=LLAMA2_7B, targets=QV, method="fedalora", ranks=[8])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        comm_cost(**args)


def test_bad_configs(tmp_path):
    with pytest.raises(FileNotFoundError, match="model config not found"):
        load_model_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: malformed JSON at line 1 "):
        load_model_config(bad)
    missing = {k: v for k, v in LLAMA2_7B.items() if k != "num_hidden_layers"}
    with pytest.raises(ValueError, match=r"field 'num_hidden_layers' is missing"):
        load_model_config(missing)
    no_mlp = {k: v for k, v in LLAMA2_7B.items() if k != "intermediate_size"}
    with pytest.raises(ValueError, match=r"down_proj needs intermediate_size"):
        comm_cost(no_mlp, ["down_proj"], "fedit", [8])
