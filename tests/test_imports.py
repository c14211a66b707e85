"""Each public module imports on its own in a fresh interpreter (no import cycle hidden by the order
in which a test session happens to import things)."""

from __future__ import annotations

import subprocess
import sys

MODULES = ["asymlora.metrics", "asymlora.evaluate", "asymlora.train", "asymlora.analysis", "asymlora.data",
           "asymlora.federated", "asymlora.files", "asymlora.models", "asymlora.cli"]


def test_every_public_module_imports_alone():
    procs = {m: subprocess.Popen([sys.executable, "-c", f"import {m}"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for m in MODULES}
    failed = {}
    for m, p in procs.items():
        _, err = p.communicate(timeout=300)
        if p.returncode != 0:
            failed[m] = err.strip().splitlines()[-1]
    assert not failed, failed
