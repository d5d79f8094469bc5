#!/usr/bin/env bash
# GRASPrune gate training under FSDP at LLaMA-2-7B shape on a lent GPU, and the 13B/70B-on-8-GPUs figures
# computed from it (see bench/gpu_fsdp.py). No network needed; the working tree travels.
#   bash bench/gpu_fsdp.sh           -> $OUT/gpu_fsdp.{json,md} (OUT defaults to bench/results)
#   bash bench/gpu_fsdp.sh --tiny    -> the same path on a tiny model (CPU and gloo when there is no GPU)
# Launched through torchrun (one process, --standalone: a rendezvous on this machine only), as a user's
# `torchrun ... -m grasprune prune --fsdp` is. A few minutes on an H200; cut off at 8 minutes so the
# 15-minute lease keeps time for a rerun.
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
if ! "$PY" -c 'import torch, transformers, safetensors' 2>"$OUT/gpu_fsdp-import-error.txt"; then
  echo "bench/gpu_fsdp.sh: $PY lacks torch/transformers/safetensors (see $OUT/gpu_fsdp-import-error.txt)" >&2
  exit 2
fi
rm -f "$OUT/gpu_fsdp-import-error.txt"
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m bench.gpu_fsdp --out "$OUT" "$@"
