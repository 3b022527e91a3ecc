#!/usr/bin/env bash
# One-call accelerator check (at most 8 minutes on one H100/H200): the model, loss, attention
# and chunked-logits tests on the GPU, then MLE and IQLearn step time, tokens/s and MFU for
# T5-base, T5-large and the Gemma 3 1B shape in bf16, each with our einsum attention and with
# cuDNN's fused attention, printed as one table (and $OUT/mfu.jsonl).
#
# A bare GPU machine lacks our Python packages: prepare them here once with
#   bash scripts/gpu_check.sh --download      (wheels for Python 3.12 into .whl/, ~20 MB)
# and carry `.whl` with the tree; this script installs from it, offline, what is missing.
# Usage (repo root): bash scripts/gpu_check.sh [OUT_DIR]
set -uo pipefail
py=${PYTHON:-python3}
# Pure-Python packages the benchmark and the tests import beyond jax / jaxlib / numpy.
packages="flax optax ml_collections etils absl-py msgpack treescope rich markdown-it-py mdurl
  pygments typing_extensions pyyaml orbax-checkpoint pytest iniconfig pluggy packaging
  opt_einsum"
if [ "${1:-}" = "--download" ]; then
  $py -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform any -d .whl $packages
  du -sh .whl; exit
fi
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} XLA_PYTHON_CLIENT_PREALLOCATE=false
if ! $py -c "import flax, optax, ml_collections, etils, pytest" 2>/dev/null; then
  [ -d .whl ] || { echo "missing packages and no .whl/ (run --download here, carry .whl)"; exit 2; }
  $py -m pip install --quiet --no-index --no-deps --find-links .whl $packages 2>&1 | tail -3
fi
bench() {  # model, batch, input_len, target_len, extra args; at most 120 s each
  timeout 120 $py scripts/bench_mfu.py --model="$1" --batch="$2" --input_len="$3" \
    --target_len="$4" --dtype=bfloat16 --attention=einsum,cudnn --steps=6 --warmup=1 \
    --out="$out/mfu.jsonl" "${@:5}"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
  echo "== tests on the accelerator (float32 matmuls at highest precision)"
  JAX_DEFAULT_MATMUL_PRECISION=highest timeout 120 $py -m pytest -q -p no:cacheprovider \
    tests/test_losses.py tests/test_chunked_losses.py tests/test_attention.py tests/test_perf.py \
    tests/test_t5.py tests/test_decoding.py
  echo "== MFU: bf16, batch as large as fits without remat (halved on out-of-memory)"
  bench t5_base 256 512 128
  bench t5_large 128 512 128
  # Gemma 3 1B: vocabulary 262k, so the logits are chunked (a whole [B, T, V] is 1 GB/row).
  bench gemma3_1b 32 512 512 --logits_chunk_size=512
} 2>&1 | grep -v -E "^(W0000|I0000|WARNING: All log)" | tee "$out/gpu_check.log"
