#!/usr/bin/env bash
# Run on the CPU machine, in the root of the checkout that the device calls send, before the GPU
# calls of benchmarks/gpu_suite.sh. Nothing from here is committed (the folders are git-ignored):
#   .device-model/a, .device-model/b  SmolLM2-135M's GGUF in two parts and the gguf wheel
#                                     (../shared/tools/device-model)
#   .gpu-suite/wheels                 benchmarks/gpu_wheels.txt, for the GPU machine's Python 3.12
#   .gpu-suite/data                   the two FLAN sets of ../shared/data (../shared does not travel)
# then checks the wheels against the GPU machine's packages and prints the two device calls: a call
# carries at most 64 MiB, so the first takes the first model part and the wheels, the second the rest.
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
platforms="--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
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
one=$(mib .device-model/a .gpu-suite/wheels) two=$(mib .device-model/b .gpu-suite/data)
echo "call 1 carries about $one MiB, call 2 about $two MiB with the tracked files (limit 64)"
if [ "$one" -ge 64 ] || [ "$two" -ge 64 ]; then echo "gpu_prepare: a call would carry too much" >&2; exit 1; fi
cat <<'EOF'

Device calls, in quick succession (the machine stays warm ~30 s and keeps what call 1 installed):
  1) carry [".device-model/a", ".gpu-suite/wheels"]   timeout_s 120
     command: bash benchmarks/gpu_suite.sh --stage
  2) carry [".device-model/b", ".gpu-suite/data"]     timeout_s 580
     command: bash benchmarks/gpu_suite.sh
If call 2 says the first GGUF part is missing (the machine went cold), make call 1 again, then 2.
EOF
