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
. bench/gpu_env.sh gpu_fsdp
timeout 480 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m bench.gpu_fsdp --out "$OUT" "$@"
