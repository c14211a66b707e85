from __future__ import annotations

import pytest

from asymlora import models


def test_smollm2_gguf_from_the_environment(tmp_path, monkeypatch):
    gguf = tmp_path / "smollm2.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("ASYMLORA_SMOLLM2_GGUF", str(gguf))
    assert models.smollm2_gguf() == gguf
    monkeypatch.setenv("ASYMLORA_SMOLLM2_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match=r"ASYMLORA_SMOLLM2_GGUF names a missing file: .*missing\.gguf"):
        models.smollm2_gguf()
    monkeypatch.delenv("ASYMLORA_SMOLLM2_GGUF")
    assert models.smollm2_gguf().name.endswith(".gguf")  # the wheel's own file (installed by make)
