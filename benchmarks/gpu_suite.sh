#!/usr/bin/env bash
# Every benchmark that needs a GPU, in one device call (results land in benchmarks/results/ with the
# device named; copy them back from $OUT). On the lent GPU machine (torch, transformers and peft are
# installed there, asymlora is not; ../shared is not carried), after the two calls of
# ../shared/tools/device-model that put SmolLM2's GGUF at /root/m/smollm2.gguf and gguf under /tmp/site:
#
#   ASYMLORA_SMOLLM2_GGUF=/root/m/smollm2.gguf PYTHONPATH=/tmp/site bash benchmarks/gpu_suite.sh
#
# Runs: the step-time benchmark (LLaMA-2-7B layer shape; targets in issue 2) and the training
# throughput on SmolLM2-135M's shape, 64 x 512, plain and fast path, eager and compiled (issue 5).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export ASYMLORA_CACHE="${ASYMLORA_CACHE:-/tmp/asymlora-cache}" TOKENIZERS_PARALLELISM=false
python3 -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name())"
python3 benchmarks/step_time.py --device cuda
python3 benchmarks/throughput.py --device cuda --batch 64 --seq 512 --steps 20 --warmup 5 --compile
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*cuda* "$OUT"/; fi
