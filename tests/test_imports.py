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


HEAVY = ("torch", "transformers", "peft")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_asymlora_and_top_level_help_load_no_torch():
    code = ("import sys, contextlib, io\n"
            "import asymlora\n"
            "from asymlora.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "assert 'federate' in out.getvalue() and 'evaluate' in out.getvalue()\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert _run(code) == "[]"


def test_import_asymlora_still_registers_with_peft_whatever_the_order():
    check = ("from asymlora.models import tiny_llama\n"
             "import asymlora\n"
             "m = peft.get_peft_model(tiny_llama(), asymlora.ALoRAConfig(r=2, num_experts=2, target_modules=['q_proj']))\n"
             "print(type(m.base_model).__name__, 'ASYMLORA_ALORA' in peft.PeftType.__members__)")
    for first in ("import peft, asymlora", "import asymlora, peft",
                  "import asymlora, importlib.util; importlib.util.find_spec('peft'); import transformers, peft",
                  "import asymlora; from peft import PeftModel; import peft"):
        out = _run(first + "\n" + check)
        assert out.endswith(" True"), (first, out)
    # a saved adapter loads back through PEFT's own entry point, asymlora imported before peft
    code = ("import tempfile, asymlora\n"
            "from peft import PeftModel, get_peft_model\n"
            "from asymlora.models import tiny_llama\n"
            "d = tempfile.mkdtemp()\n"
            "get_peft_model(tiny_llama(), asymlora.HydraLoRAConfig(r=2, num_experts=2, target_modules=['q_proj']))"
            ".save_pretrained(d)\n"
            "print(type(PeftModel.from_pretrained(tiny_llama(), d).peft_config['default']).__name__)")
    assert _run(code).endswith("HydraLoRAConfig")
