#!/usr/bin/env bash
# GRASPrune at LLaMA-2-7B shape on a lent GPU machine (no network; the working tree travels).
#   bash bench/gpu.sh           -> $OUT/gpu.json (OUT defaults to bench/results)
#   bash bench/gpu.sh --tiny    -> the same path on a tiny model (CPU when there is no GPU)
# Needs python with torch and transformers 5.x (PYTHON=... to choose); finishes in a few minutes
# on an H200, and is cut off at 9 minutes so the 15-minute lease keeps time for a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh gpu
timeout 540 "$PY" -m bench.gpu --out "$OUT" "$@"
