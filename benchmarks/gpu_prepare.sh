#!/usr/bin/env bash
# Run on the CPU machine, in the root of the checkout that the device calls send, before the GPU
# calls of benchmarks/gpu_suite.sh. Nothing from here is committed (both folders are git-ignored):
#   .device-model/a, .device-model/b  SmolLM2-135M's GGUF in two parts and the gguf wheel
#                                     (../shared/tools/device-model; a call carries at most 64 MiB)
#   .gpu-suite/data                   the two FLAN sets of ../shared/data (../shared does not travel)
#   .gpu-suite/wheels                 benchmarks/gpu_wheels.txt, for the GPU machine's Python 3.12
# then checks the wheels against the GPU machine's packages and prints the two device calls.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${ASYMLORA_SHARED:-../shared}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
[ -f .device-model/b/SHA256 ] || "$shared/tools/device-model"
rm -rf .gpu-suite
mkdir -p .gpu-suite/data .gpu-suite/wheels
data=${ASYMLORA_SHARED_DATA:-$shared/data}
cp -r "$data/flan8-crossdomain" "$data/flan8-federated" .gpu-suite/data/
platforms="--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any"
grep -o '^[^#[:space:]]*' benchmarks/gpu_wheels.txt | while read -r pin; do
  [ -n "$pin" ] || continue
  name=${pin%%==*}
  if ls .device-model/b/"$(echo "$name" | tr - _)"-*.whl >/dev/null 2>&1; then continue; fi  # carried there
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms -d .gpu-suite/wheels "$pin" 2>/dev/null \
    || python3 -m pip wheel -q --no-deps -w .gpu-suite/wheels "$pin"  # sdist only (rouge-score): build it
done
ls .gpu-suite/wheels .device-model/b
PYTHONPATH=src "$PY" benchmarks/gpu_suite.py --plan --work /tmp/gpu-suite-plan
repo=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
mib() { echo $(( (repo + $(du -cb "$@" | tail -1 | cut -f1)) / 1048576 )); }
echo "call 1 carries about $(mib .device-model/a) MiB, call 2 about $(mib .device-model/b .gpu-suite) MiB" \
     "with the tracked files (limit 64)"
cat <<'EOF'

Device calls (the machine stays warm ~30 s between them and keeps what the first carried):
  1) carry [".device-model/a"]                 timeout_s 120
     command: mkdir -p /root/m && cp .device-model/a/part.* /root/m/
  2) carry [".device-model/b", ".gpu-suite"]   timeout_s 580
     command: bash benchmarks/gpu_suite.sh
If call 2 says the first GGUF part is missing (the machine went cold), make call 1 again, then 2.
EOF
