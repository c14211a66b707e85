"""A two-process `torchrun` launch on the CPU: the data is split between the processes (half the
steps each) and only the main process writes the run record and the adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.train import helpers
from asymlora.train import train
torch.set_num_threads(1)
tr, _ = helpers.tasks(n_train=8)  # 24 examples
res = train(helpers.model(), helpers.tokenizer(), tr, "alora", {out!r}, num_epochs=1, batch_size=2,
            grad_accum=1, progress=False, logging_steps=1)
print("RANK", res.run["metrics"]["global_step"], flush=True)
"""


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    root = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(root=root, out=str(tmp_path / "run")))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", str(script)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("RANK")]
    assert steps == [6, 6]  # 24 examples / (2 processes x batch 2); one process alone takes 12
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "done" and run["metrics"]["global_step"] == 6
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
