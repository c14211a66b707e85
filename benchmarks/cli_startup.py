"""CLI start-up: wall time of `asymlora --help` (and of `asymlora comm --help`) against
`python -c "import torch"` measured in the same run, each in a fresh interpreter.

The target is `asymlora --help` <= 0.5x the time of importing torch: the top-level help imports no
torch, transformers or peft. Runs are interleaved (one of each per round) so that a busy machine
slows every command alike; the median of the rounds is reported.

    python benchmarks/cli_startup.py            # -> benchmarks/results/cli_startup-<device>.json
    python benchmarks/cli_startup.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

RESULTS = Path(__file__).resolve().parent / "results"
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "asymlora --help": [sys.executable, "-m", "asymlora.cli", "--help"],
    "asymlora comm --help": [sys.executable, "-m", "asymlora.cli", "comm", "--help"],
    "python -c pass": [sys.executable, "-c", "pass"],
}


def wall_time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def device_name() -> str:
    """'cpu' unless an accelerator is present: the file name says where it was measured."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return "cuda"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="runs of each command (default 7)")
    parser.add_argument("--out", type=Path, help="result file (default benchmarks/results/cli_startup-<device>.json)")
    args = parser.parse_args()
    for cmd in COMMANDS.values():  # warm the file cache once
        wall_time(cmd)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in tqdm(range(args.rounds), desc="rounds"):
        for name, cmd in COMMANDS.items():
            times[name].append(wall_time(cmd))
    median = {name: statistics.median(t) for name, t in times.items()}
    torch_s = median["import torch"]
    device = device_name()
    result = {
        "device": device,
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "rounds": args.rounds,
        "median_seconds": {k: round(v, 4) for k, v in median.items()},
        "ratio_to_import_torch": {k: round(v / torch_s, 3) for k, v in median.items()},
        "target": "asymlora --help <= 0.5 x import torch",
        "target_met": median["asymlora --help"] <= 0.5 * torch_s,
        "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }
    out = args.out or RESULTS / f"cli_startup-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name in COMMANDS:
        print(f"{name:<22} {median[name]:7.3f} s  {median[name] / torch_s:6.2f} x import torch")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
