"""`asymlora analyze gates`: from a trained run directory to the Figure 6 map, through the CLI."""

import json

from asymlora.cli import main
from tests.train.test_compare import _model_dir, _write_tasks


def test_analyze_gates_on_a_trained_run(tmp_path, capsys):
    _write_tasks(tmp_path)
    model = _model_dir(tmp_path)
    rc = main(["train", "--model", str(model), "--method", "alora", "--out", str(tmp_path / "run"),
               "--data", f"reverse={tmp_path / 'reverse-train.json'}", "--data", f"add={tmp_path / 'add-train.json'}",
               "--max-steps", "2", "--batch-size", "4", "--grad-accum", "1", "--no-progress",
               "--r", "4", "--num-experts", "2", "--targets", "q_proj,v_proj"])
    assert rc == 0
    rc = main(["analyze", "gates", str(tmp_path / "run"), "--data", f"reverse={tmp_path / 'reverse-train.json'}",
               "--data", f"add={tmp_path / 'add-train.json'}", "--out", str(tmp_path / "gates")])
    assert rc == 0
    data = json.loads((tmp_path / "gates" / "gates.json").read_text())
    assert (tmp_path / "gates" / "gates_tsne.png").stat().st_size > 1000
    assert data["layer"].endswith("layers.1.self_attn.v_proj")  # the last routed layer by default
    capsys.readouterr()


def test_analyze_gates_needs_data_and_a_run(tmp_path, capsys):
    assert main(["analyze", "gates", str(tmp_path / "nope")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["analyze", "gates", str(tmp_path / "nope"), "--data", str(tmp_path / "x.json")]) == 2
    assert "x.json" in capsys.readouterr().err
