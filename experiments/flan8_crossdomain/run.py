"""Table 3 (cross-domain FLAN) with SmolLM2-135M on the CPU: configs/flan8-crossdomain-cpu.yaml.

    .venv/bin/python experiments/flan8_crossdomain/run.py [--threads 1]

Finished runs are cached under runs/ (ignored by git), so an interrupted run picks up where it
stopped; results/ holds results.json, results.md, results.png and the predictions of every row.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from asymlora.train.compare import compare

ROOT = Path(__file__).resolve().parents[2]

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a shared 2-core machine)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "flan8-crossdomain-cpu.yaml"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    summary = compare(args.config)
    print(Path(summary["files"]["markdown"]).read_text())
    print(f"wall time {(time.time() - started) / 3600:.2f} h")
