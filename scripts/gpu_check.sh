#!/usr/bin/env bash
# One-call accelerator check: model and loss tests on the GPU, then the step benchmark from a
# tiny config up to about T5-base in bf16. Needs only jax/flax/optax/numpy/pytest and
# ml_collections (the GPU image has no TensorFlow/seqio, so the input pipeline is not run).
# Usage (repo root): bash scripts/gpu_check.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} XLA_PYTHON_CLIENT_PREALLOCATE=false
py=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
  echo "== tests on the accelerator (float32 matmuls at highest precision)"
  JAX_DEFAULT_MATMUL_PRECISION=highest $py -m pytest -q -p no:cacheprovider \
    tests/test_losses.py tests/test_t5.py tests/test_decoding.py tests/test_hf_t5.py tests/test_hf_decoder_only.py
  echo "== step benchmark: tiny, float32"
  $py scripts/bench_step.py --d_model=64 --d_kv=16 --d_ff=128 --num_heads=4 --num_layers=2 \
    --vocab_size=512 --batch=16 --input_len=32 --target_len=16
  echo "== step benchmark: CPU-test size, bf16"
  $py scripts/bench_step.py --dtype=bfloat16
  echo "== step benchmark: ~T5-base shape, bf16, batch 32 x (512 -> 128)"
  $py scripts/bench_step.py --dtype=bfloat16 --d_model=768 --d_kv=64 --d_ff=2048 \
    --num_heads=12 --num_layers=12 --batch=32 --input_len=512 --target_len=128 --steps=30
} 2>&1 | grep -v -E "^(W0000|I0000|WARNING: All log)" | tee "$out/gpu_check.log"
