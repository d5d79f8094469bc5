# Sourced by bench/gpu.sh and bench/gpu_fsdp.sh: from the repository root, pick the python ($PYTHON, else
# .venv's, else python3) into $PY, make $OUT, set an offline environment, check the imports (the error goes
# to $OUT/<name>-import-error.txt, exit 2) and print the versions and the GPU. $1: the script's name.
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! "$PY" -c 'import torch, transformers, safetensors' 2>"$OUT/$1-import-error.txt"; then
  echo "bench/$1.sh: $PY lacks torch/transformers/safetensors (see $OUT/$1-import-error.txt)" >&2
  exit 2
fi
rm -f "$OUT/$1-import-error.txt"
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
