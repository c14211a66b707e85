from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from asymlora.analysis.adapter_files import AdapterFileError, load_adapter_factors
from asymlora.analysis.commands import register
from asymlora.analysis.compare import run_dynamics, run_similarity
from asymlora.analysis.dynamics import magnitude_direction_change

LAYER = "base_model.model.model.layers.0.self_attn.q_proj"


def _lora_dir(path, layers: dict[str, tuple[torch.Tensor, torch.Tensor]], alpha: float = 4.0, **cfg):
    path.mkdir(parents=True)
    state = {}
    for name, (A, B) in layers.items():
        state[f"{name}.lora_A.weight"] = A.float().clone()
        state[f"{name}.lora_B.weight"] = B.float().clone()
    save_file(state, str(path / "adapter_model.safetensors"))
    r = next(iter(layers.values()))[0].shape[0]
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha, **cfg}))
    return path


def test_similarity_of_hand_made_lora_adapters(tmp_path):
    e4, e3 = torch.eye(4), torch.eye(3)
    R = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    A1 = torch.stack([e4[0], e4[1]])  # row space span{e1, e2}
    A2 = torch.stack([e4[0], e4[2]])  # span{e1, e3}: Sim 1/2
    B1 = torch.stack([e3[0], e3[1]], dim=1)
    other = "base_model.model.model.layers.1.self_attn.q_proj"
    a = _lora_dir(tmp_path / "a", {LAYER: (A1, B1), other: (A1, B1)})
    b = _lora_dir(tmp_path / "b", {LAYER: (A2, B1 @ R), other: (A1, B1)})  # B rotated within the rank: Sim 1
    res = run_similarity(a, b, tmp_path / "out")
    rows = {r["layer"]: r for r in res["layers"]}
    assert rows[LAYER]["sim_A"] == pytest.approx(0.5, abs=1e-6)
    assert rows[LAYER]["sim_B"] == pytest.approx(1.0, abs=1e-6)
    assert rows[other]["sim_A"] == pytest.approx(1.0, abs=1e-6)
    assert res["mean"]["sim_A"] == pytest.approx(0.75, abs=1e-6)
    saved = json.loads((tmp_path / "out" / "similarity.json").read_text())
    assert saved["layers"][0]["sim_A_experts"] == [pytest.approx(0.5, abs=1e-6)]
    md = (tmp_path / "out" / "similarity.md").read_text()
    assert "| L0.q_proj | 0.5000 | 1.0000 |" in md and "| mean | 0.7500 | 1.0000 |" in md
    assert (tmp_path / "out" / "similarity.png").read_bytes()[:4] == b"\x89PNG"


def test_dynamics_of_hand_made_lora_adapters(tmp_path):
    A0 = torch.tensor([[3.0, 0.0], [4.0, 1.0]])  # columns (3, 4) and (0, 1)
    A1 = torch.tensor([[0.0, 2.0], [5.0, 0.0]])  # columns (0, 5) and (2, 0): dM = 0.5, dD = 0.6
    B0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    B1 = 2 * B0  # pure magnitude change: dM = 1, dD = 0, Sim = 1
    before = _lora_dir(tmp_path / "before", {LAYER: (A0, B0)}, alpha=4.0)  # scaling 4 / 2 = 2
    after = _lora_dir(tmp_path / "after", {LAYER: (A1, B1)}, alpha=4.0)
    res = run_dynamics(before, after, tmp_path / "out")
    row = res["layers"][0]
    assert row["dM_A"] == pytest.approx(0.5) and row["dD_A"] == pytest.approx(0.6)
    assert row["dM_B"] == pytest.approx(1.0) and row["dD_B"] == pytest.approx(0.0, abs=1e-12)
    assert row["sim_B"] == pytest.approx(1.0) and row["sim_A"] == pytest.approx(1.0)  # A spans R^2 both times
    # dW = s B A: before 2 * [[3, 0], [4, 1], [0, 0]], after 2 * 2 * [[0, 2], [5, 0], [0, 0]]
    # columns: (6, 8, 0) |10| -> (0, 20, 0) |20|, cos 0.8;  (0, 2, 0) |2| -> (8, 0, 0) |8|, cos 0
    assert row["dM_dW"] == pytest.approx((10 + 6) / 2)
    assert row["dD_dW"] == pytest.approx((0.2 + 1.0) / 2)
    md = (tmp_path / "out" / "dynamics.md").read_text()
    assert "ΔM ΔW" in md and "| L0.q_proj |" in md
    assert (tmp_path / "out" / "dynamics.png").read_bytes()[:4] == b"\x89PNG"


def test_rslora_and_alpha_pattern_scaling(tmp_path):
    A, B = torch.eye(4)[:2], torch.eye(3)[:, :2]
    d = _lora_dir(tmp_path / "rs", {LAYER: (A, B)}, alpha=8.0, use_rslora=True)
    assert load_adapter_factors(d).layers[LAYER].scaling == pytest.approx(8 / math.sqrt(2))
    d = _lora_dir(tmp_path / "pat", {LAYER: (A, B)}, alpha=8.0, alpha_pattern={"q_proj": 2.0})
    assert load_adapter_factors(d).layers[LAYER].scaling == pytest.approx(1.0)


def test_saved_alora_and_hydralora_runs(make_adapted, tmp_path):
    # Same init seed, different base-model draws: A experts identical, Sim 1; another seed: low Sim.
    make_adapted("alora", seed=0, init_seed=7, zero_b=False).save_pretrained(tmp_path / "s7a")
    make_adapted("alora", seed=1, init_seed=7, zero_b=False).save_pretrained(tmp_path / "s7b")
    make_adapted("alora", seed=0, init_seed=8, zero_b=False).save_pretrained(tmp_path / "s8")
    f = load_adapter_factors(tmp_path / "s7a")
    assert f.method == "alora" and len(f.layers) == 4
    first = next(iter(f.layers.values()))
    assert first.A.shape == (3, 4, 32) and first.B.shape[0] == 1 and first.delta_weight() is None
    same = run_similarity(tmp_path / "s7a", tmp_path / "s7b", tmp_path / "o1")
    assert all(r["sim_A"] == pytest.approx(1.0, abs=1e-5) and r["sim_B"] == pytest.approx(1.0, abs=1e-5)
               for r in same["layers"])
    diff = run_similarity(tmp_path / "s7a", tmp_path / "s8", tmp_path / "o2")
    assert all(r["sim_A"] < 0.6 for r in diff["layers"])  # random 4-dim subspaces of R^32: about 4/32
    assert all(len(r["sim_A_experts"]) == 3 for r in diff["layers"])

    # the real set-up: B saved at its zero initialisation has no column space; the run says so
    make_adapted("hydralora", seed=0, init_seed=3, zero_b=True).save_pretrained(tmp_path / "h0")
    make_adapted("hydralora", seed=0, init_seed=3, zero_b=False).save_pretrained(tmp_path / "h1")
    res = run_dynamics(tmp_path / "h0", tmp_path / "h1", tmp_path / "o3")
    row = res["layers"][0]
    assert row["sim_B"] is None and row["dD_B"] == pytest.approx(1.0) and row["dM_dW"] is None
    assert row["sim_A"] == pytest.approx(1.0, abs=1e-5) and row["dM_A"] == pytest.approx(0.0, abs=1e-6)
    assert any(n["factor"] == "B" and "numerical rank 0" in n["reason"] for n in res["notes"])
    h = load_adapter_factors(tmp_path / "h1").layers[row["layer"]]
    assert h.A.shape == (1, 4, 32) and h.B.shape == (3, 32, 4)
    assert row["dM_B"] == pytest.approx(sum(magnitude_direction_change(torch.zeros(32, 4), h.B[i])[0]
                                            for i in range(3)) / 3)


def test_bad_adapter_directories(make_adapted, tmp_path):
    make_adapted("alora").save_pretrained(tmp_path / "alora")
    make_adapted("hydralora").save_pretrained(tmp_path / "hydra")
    make_adapted("moslora").save_pretrained(tmp_path / "mos")
    make_adapted("lora", targets=("q_proj",)).save_pretrained(tmp_path / "lora_q")
    make_adapted("lora", targets=("q_proj", "v_proj")).save_pretrained(tmp_path / "lora_qv")
    with pytest.raises(AdapterFileError, match=r"RUN_A adapter .* is ALoRA but RUN_B adapter .* is HydraLoRA"):
        run_similarity(tmp_path / "alora", tmp_path / "hydra", tmp_path / "o")
    with pytest.raises(AdapterFileError, match="ASYMLORA_MOSLORA"):
        run_dynamics(tmp_path / "mos", tmp_path / "mos", tmp_path / "o")
    with pytest.raises(AdapterFileError, match=r"adapt different layers: only in RUN_A .*: \[\]; only in RUN_B .*v_proj"):
        run_similarity(tmp_path / "lora_q", tmp_path / "lora_qv", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="adapter directory not found"):
        load_adapter_factors(tmp_path / "nowhere")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2}')
    (tmp_path / "pickled" / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="pickled weights are never loaded"):
        load_adapter_factors(tmp_path / "pickled")
    (tmp_path / "pickled" / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match="adapter_config.json: malformed JSON at line 1"):
        load_adapter_factors(tmp_path / "pickled")
    A, B = torch.eye(4)[:2], torch.eye(3)[:, :2]
    _lora_dir(tmp_path / "r2", {LAYER: (A, B)})
    _lora_dir(tmp_path / "r3", {LAYER: (torch.eye(4)[:3], torch.eye(3))})
    with pytest.raises(AdapterFileError, match=r"layer '.*q_proj': BEFORE has A \(1, 2, 4\), B \(1, 3, 2\) but AFTER"):
        run_dynamics(tmp_path / "r2", tmp_path / "r3", tmp_path / "o")
    _lora_dir(tmp_path / "dora", {LAYER: (A, B)}, use_dora=True)
    with pytest.raises(AdapterFileError, match="DoRA"):
        load_adapter_factors(tmp_path / "dora")


def test_cli_commands(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="asymlora")
    register(parser.add_subparsers(dest="command"))
    A, B = torch.eye(4)[:2], torch.eye(3)[:, :2]
    _lora_dir(tmp_path / "a", {LAYER: (A, B)})
    _lora_dir(tmp_path / "b", {LAYER: (torch.eye(4)[1:3], B)})  # A: span{e1,e2} vs span{e2,e3}: Sim 1/2
    args = parser.parse_args(["analyze", "similarity", str(tmp_path / "a"), str(tmp_path / "b"),
                              "--out", str(tmp_path / "sim")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "mean Sim A 0.5000, mean Sim B 1.0000" in out
    assert (tmp_path / "sim" / "similarity.json").is_file()
    args = parser.parse_args(["analyze", "dynamics", str(tmp_path / "a"), str(tmp_path / "b"),
                              "--out", str(tmp_path / "dyn")])
    assert args.func(args) == 0
    assert "Sim A 0.5000, Sim B 1.0000" in capsys.readouterr().out

    rec = {"step": 1, "layer": LAYER, "grad_norm": 2.0, "n_conflicts": 1}
    for name, label in (("ha", "sharing A"), ("al", "sharing B")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "gradient_conflicts.json").write_text(json.dumps({"label": label, "records": [rec]}))
    args = parser.parse_args(["analyze", "conflicts", str(tmp_path / "ha" / "gradient_conflicts.json"),
                              str(tmp_path / "al" / "gradient_conflicts.json"), "--out", str(tmp_path / "c")])
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "c" / "conflicts.json").read_text())["series"]
    assert summary["sharing A"]["mean_grad_norm"] == 2.0 and "sharing B" in summary
    assert (tmp_path / "c" / "conflicts.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        parser.parse_args(["analyze"])


def test_package_exposes_the_entry_points():
    import asymlora.analysis as an
    from asymlora.analysis import compare, recorder

    assert an.run_similarity is compare.run_similarity and an.run_dynamics is compare.run_dynamics
    assert an.GradientConflictRecorder is recorder.GradientConflictRecorder
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        an.nothing  # noqa: B018
