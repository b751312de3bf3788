#!/usr/bin/env bash
# The GPU check (see scripts/gpu-check.py for what it checks).
#
# Here, with no GPU:   scripts/gpu-check.sh --dry-run
#   builds the CUDA binary (../shared/cuda/build-cuda.sh, else
#   .ci/build-cuda.sh) into .gpu/spillway.gz (ignored by git, carried to the
#   device), builds the CPU binary, and runs every check's CPU half with the
#   GPU tier simulated on candle's CPU device.
#
# On the GPU machine (the `device` tool; CUDA 13 runtime, no Rust):
#   run: scripts/gpu-check.sh     with carry [".gpu"], timeout_s 600
#   It unpacks .gpu/spillway.gz and writes $OUT/gpu-check.json and gpu-check.log.
#
# env: SPILLWAY_BIN (the binary to check), OUT (results folder),
#      GPU_CHECK_WORK (scratch folder for the synthetic models, ~13 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
OUT=${OUT:-$PWD/target/gpu-check}
mkdir -p "$OUT"

if [ $dry = 1 ]; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  build=../shared/cuda/build-cuda.sh
  [ -x "$build" ] || build=.ci/build-cuda.sh
  echo "gpu-check: building the CUDA binary with $build"
  # Its own target folder, so the CPU build below does not rebuild it.
  CARGO_TARGET_DIR=$PWD/target/cuda bash "$build"
  rm -rf .gpu && mkdir -p .gpu
  # Stripped it is ~87 MiB (candle's kernels for sm_90a inside); gzip
  # brings it to ~27 MiB, under the 64 MiB the device call carries.
  strip -o .gpu/spillway.unpacked target/cuda/release/spillway
  gzip -6 -c .gpu/spillway.unpacked > .gpu/spillway.gz
  rm .gpu/spillway.unpacked
  size=$(stat -c %s .gpu/spillway.gz)
  echo "gpu-check: .gpu/spillway.gz is $((size >> 20)) MiB (the device takes 64 MiB in all)"
  [ "$size" -lt $((56 << 20)) ] || { echo "gpu-check: the CUDA binary is too large to carry" >&2; exit 1; }
  cargo build --release --locked
  BIN=${SPILLWAY_BIN:-target/release/spillway}
  work=${GPU_CHECK_WORK:-$(mktemp -d)}
  exec python3 scripts/gpu-check.py --dry-run --bin "$BIN" --out "$OUT" --work "$work" --threads 2
fi

BIN=${SPILLWAY_BIN:-/tmp/spillway-cuda}
if [ -z "${SPILLWAY_BIN:-}" ]; then
  [ -f .gpu/spillway.gz ] || { echo "gpu-check: .gpu/spillway.gz is missing: run scripts/gpu-check.sh --dry-run here first and carry .gpu" >&2; exit 2; }
  gzip -dc .gpu/spillway.gz > "$BIN" && chmod +x "$BIN"
fi
# The CUDA 13 runtime libraries the binary links (libcudart, libcublas,
# libcublasLt, libcurand): the toolkit's, else the pip wheels'.
libs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import nvidia, os; [print(os.path.join(p, "cu13", "lib")) for p in nvidia.__path__]' 2>/dev/null) \
         $(python3 -c 'import nvidia, os, glob; [print(d) for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))]' 2>/dev/null); do
  [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd "$BIN" | grep -E "not found" && { echo "gpu-check: libraries missing (above)" >&2; }
work=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
exec python3 scripts/gpu-check.py --bin "$BIN" --out "$OUT" --work "$work"
