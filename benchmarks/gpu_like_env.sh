#!/usr/bin/env bash
# A Python environment holding only the GPU machine's packages, to check on the CPU that the GPU suite
# needs nothing else:
#   bash benchmarks/gpu_like_env.sh /tmp/gpulike
#   GPU_SUITE_SITE=/tmp/gpulike/carried PYTHON=/tmp/gpulike/venv/bin/python \
#     bash benchmarks/gpu_suite.sh --dry-run --fresh
# The packages of gpu_device_packages.txt are linked from this checkout's .venv, except transformers
# and huggingface_hub, downloaded at the GPU machine's versions; the packages of gpu_wheels.txt go to
# DIR/carried, where `gpu_suite.sh --stage` installs them there. What stays different: Python (3.11
# here, 3.12 there) and torch (the venv's CPU 2.13, 2.11 there).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: gpu_like_env.sh DIR}
VENV_PY=${PYTHON:-.venv/bin/python}
rm -rf "$dir" && mkdir -p "$dir/site" "$dir/carried"
base=$("$VENV_PY" -c "import sys; print(sys.base_prefix)")/bin/python3
"$base" -m venv "$dir/venv"
"$dir/venv/bin/python" -c "import site, sys; open(site.getsitepackages()[0] + '/gpu_like.pth', 'w').write(sys.argv[1])" \
  "$(cd "$dir" && pwd)/site"
"$VENV_PY" - "$dir" <<'EOF'
import importlib.metadata as md
import os
import re
import sys
from pathlib import Path

here, dest = Path("benchmarks"), Path(sys.argv[1])
norm = lambda n: re.sub(r"[-_.]+", "-", n.strip().lower())  # noqa: E731
entries = lambda f: [l.split("#")[0].strip() for l in (here / f).read_text().splitlines() if l.split("#")[0].strip()]  # noqa: E731,E741
device = {norm(n) for n in entries("gpu_device_packages.txt")} - {"transformers", "huggingface-hub"}
carried = {norm(w.split("==")[0]) for w in entries("gpu_wheels.txt")}
for dist in md.distributions():
    name = norm(dist.metadata["Name"])
    folders = [dest / "site"] * (name in device) + [dest / "carried"] * (name in carried)  # peft: both
    for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith(("..", "bin/"))}:
        src = Path(dist.locate_file(top))
        for folder in folders:
            if src.exists() and not (folder / top).exists():
                os.symlink(src, folder / top)
EOF
python3 -m pip download -q --no-deps --only-binary=:all: -d "$dir/whl" transformers==5.17.0 huggingface_hub==1.33.0
python3 -m pip install -q --no-deps --no-compile --target "$dir/site" "$dir"/whl/*.whl
"$dir/venv/bin/python" -c "import torch, transformers, peft; print('gpu-like env:', torch.__version__, transformers.__version__, peft.__version__)"
