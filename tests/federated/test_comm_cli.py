"""The `comm` subcommand, driven through an argparse parser as the CLI will build it."""

from __future__ import annotations

import argparse
import json

import pytest

from asymlora.federated.commands import register

LLAMA2_7B = {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
             "intermediate_size": 11008, "num_hidden_layers": 32}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA2_7B))
    return str(path)


def run(argv):
    parser = argparse.ArgumentParser(prog="asymlora")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_json_output(config, capsys):
    rc = run(["comm", "--model", config, "--targets", "q_proj,v_proj", "--method", "fedalora",
              "--ranks", "64,64,32,32,16,16,8,8", "--dm", "16", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_params"] == 12_089_344
    assert out["upload_params"] == 64 * 4112 * 30 and out["download_params"] == 64 * 4096 * 16
    assert len(out["clients"]) == 8 and out["clients"][0]["rank"] == 64
    assert out["upload_bytes"] == 4 * out["upload_params"]


@pytest.mark.parametrize("upload, total, table", [
    ("factors", 12_089_344, "Params.(M) = 12.09 (the paper counts this setting as 12.12)"),
    ("product", 8_388_608, "Params.(M) = 8.39 (the paper counts this setting as 12.12)"),
    ("auto", 7_866_368, "Params.(M) = 7.87 (the paper counts this setting as 12.12)"),
])
def test_upload_modes(config, capsys, upload, total, table):
    argv = ["comm", "--model", config, "--method", "fedalora", "--ranks", "64,64,32,32,16,16,8,8", "--dm", "16",
            "--upload", upload]
    assert run(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_params"] == total and out["upload"] == upload
    assert round(out["paper_total_params"] / 1e6, 2) == 12.12
    assert run(argv) == 0
    text = capsys.readouterr().out
    assert table in text and f"upload {upload}" in text


def test_upload_without_the_decomposition_is_an_error(config, capsys):
    assert run(["comm", "--model", config, "--method", "fedit", "--ranks", "8", "--upload", "product"]) == 2
    assert "upload product applies to the decomposition only" in capsys.readouterr().err


def test_table_output_and_dtype(config, capsys):
    assert run(["comm", "--model", config, "--method", "fedit", "--ranks", "8", "--dtype-bytes", "2"]) == 0
    out = capsys.readouterr().out
    assert "Params.(M) = 8.39" in out
    assert "FedIT (homogeneous)" in out and "2 bytes per parameter" in out


def test_bad_module_is_an_error(config, capsys):
    rc = run(["comm", "--model", config, "--targets", "q_proj,attn", "--method", "fedit", "--ranks", "8"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown target module 'attn'" in err and "gate_proj" in err


def test_missing_file_is_an_error(tmp_path, capsys):
    assert run(["comm", "--model", str(tmp_path / "x.json"), "--method", "fedit", "--ranks", "8"]) == 2
    assert "model config not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--method", "fedavg", "--ranks", "8"], "invalid choice: 'fedavg'"),
    (["--method", "fedit", "--ranks", "8,x"], "expected comma-separated integers, got '8,x'"),
    (["--method", "fedit", "--ranks", "0"], "expected positive integers, got '0'"),
])
def test_bad_method_or_ranks_exit_from_argparse(config, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run(["comm", "--model", config] + argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_comm_imports_no_torch(tmp_path):
    """`asymlora comm` reads a config and counts: it starts without torch, transformers or peft."""
    import subprocess
    import sys

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32}))
    code = ("import sys; from asymlora.cli import main; "
            f"rc = main(['comm', '--model', {str(cfg)!r}, '--method', 'fedalora', '--ranks', '8', '--json']); "
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules); "
            "print(rc, heavy, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "0 []", proc.stderr[-2000:]
    assert json.loads(proc.stdout)["total_params"] > 0
