#!/usr/bin/env bash
# GRASPrune at LLaMA-2-7B shape on a lent GPU machine (no network; the working tree travels).
#   bash bench/gpu.sh           -> $OUT/gpu.json (OUT defaults to bench/results)
#   bash bench/gpu.sh --tiny    -> the same path on a tiny model (CPU when there is no GPU)
# Needs python with torch and transformers 5.x (PYTHON=... to choose); finishes in a few minutes
# on an H200, and is cut off at 9 minutes so the 15-minute lease keeps time for a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! "$PY" -c 'import torch, transformers, safetensors' 2>"$OUT/gpu-import-error.txt"; then
  echo "bench/gpu.sh: $PY lacks torch/transformers/safetensors (see $OUT/gpu-import-error.txt)" >&2
  exit 2
fi
rm -f "$OUT/gpu-import-error.txt"
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 540 "$PY" -m bench.gpu --out "$OUT" "$@"
