from __future__ import annotations

import json
from enum import Enum

import pytest

from asymlora.files import atomic_path, read_settings, write_json_atomic


class Custom(ValueError):
    pass


def test_read_settings_json_and_yaml(tmp_path):
    (tmp_path / "a.json").write_text('{"r": 8, "targets": ["q_proj"]}')
    (tmp_path / "a.yaml").write_text("r: 8\ntargets: [q_proj]\n")
    assert read_settings(tmp_path / "a.json") == read_settings(tmp_path / "a.yaml") == {"r": 8, "targets": ["q_proj"]}


def test_read_settings_names_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"template file not found: .*nope\.json"):
        read_settings(tmp_path / "nope.json", "template file")
    (tmp_path / "bad.json").write_text('{\n  "r": 8,\n  "alpha": \n}')
    with pytest.raises(Custom, match=r"bad\.json: malformed JSON at line 4"):
        read_settings(tmp_path / "bad.json", error=Custom)
    (tmp_path / "bad.yml").write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yml: malformed YAML at line \d+, column \d+: .*"
                                         r"\(while parsing a flow sequence at line 2\)"):
        read_settings(tmp_path / "bad.yml")
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(ValueError, match=r"empty\.json: the file is empty"):
        read_settings(tmp_path / "empty.json")
    (tmp_path / "comments.yaml").write_text("# nothing\n")
    with pytest.raises(ValueError, match=r"comments\.yaml: holds no settings"):
        read_settings(tmp_path / "comments.yaml")


def test_format_by_suffix_yaml_otherwise_or_forced(tmp_path):
    (tmp_path / "cmp.txt").write_text("model: smollm2-135m\nlr: 1.0e-3\n")
    assert read_settings(tmp_path / "cmp.txt") == {"model": "smollm2-135m", "lr": 1e-3}
    (tmp_path / "adapter.yaml").write_text('{"lora_dropout": 1e-05}')  # JSON under another name
    assert read_settings(tmp_path / "adapter.yaml", fmt="json") == {"lora_dropout": 1e-05}
    assert read_settings(tmp_path / "adapter.yaml") == {"lora_dropout": "1e-05"}  # YAML 1.1's float needs a dot


def test_atomic_write_leaves_the_old_file_or_the_new_one_never_half(tmp_path):
    target = tmp_path / "sub" / "run.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["run.json"]  # no temporary left behind


def test_write_json_atomic_converts_sets_tuples_enums_and_paths(tmp_path):
    class Kind(Enum):
        A = "alora"

    out = write_json_atomic(tmp_path / "x.json", {"s": {"v", "q"}, "t": (1, 2), "k": Kind.A, "p": tmp_path})
    assert json.loads(out.read_text()) == {"s": ["q", "v"], "t": [1, 2], "k": "alora", "p": str(tmp_path)}


def test_a_key_given_twice_is_refused_yaml_and_json(tmp_path):
    from asymlora.files import read_settings

    y = tmp_path / "c.yaml"
    y.write_text("training:\n  learning_rate: 1.0e-3\n  batch_size: 2\n  learning_rate: 3.0e-4\n")
    with pytest.raises(ValueError, match=r"c\.yaml: malformed YAML at line 4, column 3: key 'learning_rate' "
                                         r"appears twice \(first at line 2\)"):
        read_settings(y)
    # YAML merge keys may still be overridden: that is what they are for
    y.write_text("base: &b {lr: 1}\nrun:\n  <<: *b\n  lr: 2\n")
    assert read_settings(y) == {"base": {"lr": 1}, "run": {"lr": 2}}
    j = tmp_path / "c.json"
    j.write_text('{"a": 1, "b": {"c": 1, "c": 2}}')
    with pytest.raises(ValueError, match=r"c\.json: key 'c' appears twice in one mapping"):
        read_settings(j)


def test_a_folder_given_for_a_file_and_unwritable_outputs(tmp_path):
    from asymlora.files import check_writable_dir, read_settings

    with pytest.raises(IsADirectoryError, match=f"config file {tmp_path} is a folder, not a file"):
        read_settings(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"--out: .*/f is a file, not a folder"):
        check_writable_dir(tmp_path / "f" / "deeper", "--out")
    assert check_writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, nothing created
