#!/usr/bin/env bash
# A GRASPrune checkpoint served by vLLM through integrations/vllm_grasprune, greedy tokens checked against
# transformers' (bench/gpu_vllm.py says how), on a GPU machine whose python has vLLM:
#   bash bench/gpu_vllm.sh      -> $OUT/gpu_vllm_llama.json, $OUT/gpu_vllm_mistral.json
# Without vLLM it says so in one line and exits 3 (nothing can be fetched on the lent machines).
# Installs the plugin into that python (pip, from this tree, no network). Each family is served in its
# own process, cut off at 4.5 minutes, so the two fit in a 10-minute device call.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh gpu_vllm
"$PY" -m bench.gpu_vllm --preflight || exit 3
if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index ./integrations/vllm_grasprune; then
  echo "bench/gpu_vllm.sh: could not install integrations/vllm_grasprune into $PY" >&2
  exit 4
fi
status=0
for family in llama mistral; do
  timeout 270 "$PY" -m bench.gpu_vllm --family "$family" --out "$OUT" "$@" || status=1
done
exit $status
