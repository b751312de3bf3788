#!/usr/bin/env bash
# Builds Spillway's `cuda` feature (candle's CUDA backend) on a machine with no
# GPU and no CUDA toolkit, so CI checks that the GPU build never rots.
#
# The toolkit comes from NVIDIA's CUDA 13.0 wheels on PyPI (nvcc, headers,
# runtime, cuBLAS, cuRAND; ~650 MB, cached in $CUDA_CACHE), and libcuda.so,
# which no wheel ships, from a link-time stand-in generated from cuda.h (the
# driver's own libcuda.so.1 is what runs). Users with a CUDA toolkit build with
# `cargo build --release --features cuda` directly (README).
#
# usage: .ci/build-cuda.sh [extra cargo args, e.g. --release]
#   env: CUDA_CACHE (default ~/.cache/cuda13-pypi),
#        CUDA_COMPUTE_CAP (default 90: H100/H200; 86 RTX 30xx, 89 RTX 40xx)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${CUDA_CACHE:-$HOME/.cache/cuda13-pypi}
mkdir -p "$CACHE"
# A venv with pip: Debian splits venv out of python3, and a failed attempt
# leaves a venv without pip behind.
if [ ! -x "$CACHE/venv/bin/pip" ]; then
  rm -rf "$CACHE/venv"
  if ! python3 -m venv "$CACHE/venv"; then
    rm -rf "$CACHE/venv"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv
    python3 -m venv "$CACHE/venv"
  fi
fi
# Every wheel pinned to 13.0 without dependencies: newer nvvm/crt wheels emit
# PTX a CUDA 13.0 driver cannot load, and cudarc 0.19 accepts nvcc <= 13.4.
if [ ! -x "$CACHE/cuda/bin/nvcc" ]; then
  "$CACHE/venv/bin/pip" install -q --no-deps \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  CU=$("$CACHE/venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
  ln -sfn "$CU" "$CACHE/cuda"
  (
    cd "$CU" && ln -sfn lib lib64 && cd lib
    for l in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13 libcurand.so.10 libnvvm.so.4; do
      ln -sfn "$l" "${l%.so.*}.so"
    done
    mkdir -p stubs
    gcc -E -P "$CU/include/cuda.h" | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u \
      | sed 's/.*/void &(void) {}/' > stubs/libcuda_stub.c
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so stubs/libcuda_stub.c
  )
fi
export CUDA_HOME=$CACHE/cuda CUDA_PATH=$CACHE/cuda PATH=$CACHE/cuda/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
# Its own target folder: the feature rebuilds candle, and the CPU build's
# artifacts stay untouched.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
exec cargo build --locked --features cuda "$@"
