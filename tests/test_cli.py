"""The single entry point: every area's subcommands are reachable, and user errors exit non-zero."""

import json
import subprocess
import sys

import pytest

from asymlora.cli import COMMAND_MODULES, build_parser, main


def test_every_command_module_registers_its_commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"demo", "train", "evaluate", "compare", "export", "comm", "federate", "analyze"} <= set(sub.choices)
    assert len(COMMAND_MODULES) == len(set(COMMAND_MODULES))


def test_user_error_is_one_line_and_exit_code_two(tmp_path, capsys):
    rc = main(["analyze", "similarity", str(tmp_path / "missing_a"), str(tmp_path / "missing_b")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "missing_a" in err and "Traceback" not in err


def test_comm_json_through_the_installed_console_script(tmp_path):
    config = {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
              "intermediate_size": 11008, "num_hidden_layers": 32}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-m", "asymlora.cli", "comm", "--model", str(path), "--method",
                          "fedalora", "--ranks", "8", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    # 64 adapted layers x 2 x d_out x r = 4.19M (paper Table 4)
    assert round(report["total_params"] / 1e6, 2) == 4.19
    bad = subprocess.run([sys.executable, "-m", "asymlora.cli", "comm", "--model", str(path), "--method",
                          "fedalora", "--ranks", "8", "--targets", "qq_proj"], capture_output=True, text=True)
    assert bad.returncode != 0 and "qq_proj" in bad.stderr


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_system_errors_and_data_warnings_are_one_line(monkeypatch, capsys):
    import argparse
    import warnings

    from asymlora import cli
    from asymlora.data.records import DataWarning

    def handler(args):
        warnings.warn("2 of 5 prompts are longer than 8 tokens", DataWarning)
        raise PermissionError(13, "Permission denied", "/root/out/scores.json")

    def parser(command=None):
        p = argparse.ArgumentParser()
        p.add_argument("--traceback", action="store_true")
        p.set_defaults(func=handler, command="evaluate")
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == ("asymlora: warning: 2 of 5 prompts are longer than 8 tokens\n"
                   "asymlora evaluate: error: cannot use /root/out/scores.json: Permission denied\n")


def test_the_command_table_matches_what_each_module_registers():
    import argparse
    import importlib

    from asymlora.cli import COMMANDS

    registered = {}
    for module in COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        for action in sub._choices_actions:
            registered[action.dest] = (module, action.help)
    assert registered == COMMANDS


def test_a_command_parses_with_only_its_own_module(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--help"])
    assert exc.value.code == 0 and "--max-new-tokens" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["nonsense"])
    assert exc.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err


def test_every_option_of_the_training_commands_says_what_it_does():
    import argparse

    from asymlora.train import commands

    sub = argparse.ArgumentParser().add_subparsers()
    commands.register(sub)
    for name, parser in sub.choices.items():
        silent = [a.option_strings or a.dest for a in parser._actions if not a.help]
        assert not silent, (name, silent)
        text = parser.format_help()
        assert "%%" not in text and "%(" not in text, name
