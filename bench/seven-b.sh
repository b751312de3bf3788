#!/usr/bin/env bash
# The 7B case on this machine (docs/BENCHMARKS.md, "At 7B scale"): synthetic
# Mistral-7B-Instruct-v0.3 Q4_K_M and Q8_0 and RoboBrain2.0-7B Q4_K_M, 2 threads.
#
# usage: bench/seven-b.sh LLAMA_DIR [WORK_DIR] [STEPS...]
#   LLAMA_DIR: a llama.cpp build (build/bin/llama-bench, models/ggml-vocab-*.gguf)
#   WORK_DIR:  where the synthetic models go (~13 GB; default /tmp/spillway-7b)
#   STEPS:     any of synth ram disk diskall robobrain robobrain25 robobrain3b
#              (default: all)
# Every result is one JSON line in WORK_DIR/results.jsonl. Run it on a quiet
# machine: nothing else may run meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA=${1:?the llama.cpp folder}
WORK=${2:-/tmp/spillway-7b}
shift $(( $# >= 2 ? 2 : 1 ))
steps=${*:-synth ram disk diskall robobrain robobrain25 robobrain3b}
BIN=target/release/spillway
CFG=tests/fixtures/configs
mkdir -p "$WORK"
out="$WORK/results.jsonl"
# A deterministic W×H test picture (patterned RGB PNG) at OUT.
scene_png() {
  python3 - "$1" "$2" "$3" <<'PY'
import struct, sys, zlib
w, h, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rows = b''.join(b'\x00' + bytes(v for x in range(w) for v in ((x * 7 + y * 3) % 256, (x ^ y) % 256, (y * 5) % 256)) for y in range(h))
def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
open(out, 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
                      + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))
PY
}
log() { echo "{\"step\": \"$1\", \"model\": \"$2\", \"result\": $3}" >> "$out"; echo "$1 $2: $3" | cut -c1-400; }

for step in $steps; do
case $step in
synth)
  for q in q4_k_m q8_0; do
    r=$($BIN synthesize --config $CFG/mistral-7b-instruct-v0.3/config.json --quant $q \
        --tokenizer "$LLAMA/models/ggml-vocab-llama-spm.gguf" -o "$WORK/mistral-7b-$q.gguf" --json)
    log synth mistral-$q "$r"
  done
  r=$($BIN synthesize --config $CFG/robobrain2.0-7b/config.json --quant q4_k_m \
      --tokenizer "$LLAMA/models/ggml-vocab-qwen2.gguf" -o "$WORK/robobrain2.0-7b-q4_k_m.gguf" --json)
  log synth robobrain-q4_k_m "$r"
  ;;
ram)
  # 1. All layers in RAM against llama-bench, alternating rounds.
  for q in q4_k_m q8_0; do
    r=$($BIN bench --model "$WORK/mistral-7b-$q.gguf" --threads 2 --repetitions 3 --ctx 1024 \
        --mode cpu-only --compare-llama "$LLAMA/build/bin/llama-bench" --json)
    log ram mistral-$q "$r"
  done
  ;;
disk)
  # 2. --ram 2GiB: most layers on disk, cold page cache, against the disk bound.
  for q in q4_k_m q8_0; do
    r=$($BIN bench --model "$WORK/mistral-7b-$q.gguf" --threads 2 --repetitions 3 --ctx 1024 \
        --ram 2GiB --cold --disk-bound --prompt-tokens 0 --gen-tokens 4 --json)
    log disk mistral-$q "$r"
  done
  ;;
diskall)
  # 3. Every layer on disk: decode against the bound and the resident peak.
  for q in q4_k_m q8_0; do
    r=$($BIN bench --model "$WORK/mistral-7b-$q.gguf" --threads 2 --repetitions 3 --ctx 1024 \
        --disk-layers all --cold --disk-bound --prompt-tokens 0 --gen-tokens 4 --json)
    log diskall mistral-$q "$r"
    r=$($BIN generate --model "$WORK/mistral-7b-$q.gguf" --raw --prompt "Write a short poem about the sea." \
        --greedy --max-tokens 16 --ignore-eos --ctx 4096 --threads 2 --disk-layers all --json)
    log diskall-rss mistral-$q "$r"
  done
  ;;
robobrain)
  # 5. RoboBrain2.0-7B shape, one 1280-token image, vision tower in RAM.
  scene_png 1120 896 "$WORK/scene-1120x896.png"
  r=$($BIN generate --model "$WORK/robobrain2.0-7b-q4_k_m.gguf" --image "$WORK/scene-1120x896.png" \
      --prompt "What is on the table?" --greedy --max-tokens 16 --ignore-eos --threads 2 --ctx 4096 --json)
  log robobrain rb7-q4_k_m "$r"
  ;;
robobrain25)
  # 6. RoboBrain2.5-8B shape (Qwen3-VL), one 300-token image, with 3 GiB of
  #    RAM (most text layers on disk) and with every text layer on disk.
  [ -f "$WORK/robobrain2.5-8b-q4_k_m.gguf" ] || {
    r=$($BIN synthesize --config $CFG/robobrain2.5-8b/config.json --quant q4_k_m \
        --tokenizer "$LLAMA/models/ggml-vocab-qwen2.gguf" -o "$WORK/robobrain2.5-8b-q4_k_m.gguf" --json)
    log synth robobrain2.5-q4_k_m "$r"
  }
  scene_png 640 480 "$WORK/scene-640x480.png"
  for place in "--ram 3GiB" "--disk-layers all"; do
    r=$($BIN generate --model "$WORK/robobrain2.5-8b-q4_k_m.gguf" --image "$WORK/scene-640x480.png" \
        --task trajectory --prompt "reach for the red cup" --greedy --max-tokens 8 --ignore-eos \
        --threads 2 --ctx 2048 $place --json)
    log robobrain25 "rb25-q4_k_m $place" "$r"
  done
  ;;
robobrain3b)
  # 7. RoboBrain2.0-3B shape (Qwen2.5-VL-3B), one 1280-token image: time to
  #    first token all in RAM and with half the text layers (18 of 36) on
  #    disk, then the vision tower alone, Spillway's kernels against candle.
  [ -f "$WORK/robobrain2.0-3b-q4_k_m.gguf" ] || {
    r=$($BIN synthesize --config $CFG/robobrain2.0-3b/config.json --quant q4_k_m \
        --tokenizer "$LLAMA/models/ggml-vocab-qwen2.gguf" -o "$WORK/robobrain2.0-3b-q4_k_m.gguf" --json)
    log synth robobrain2.0-3b-q4_k_m "$r"
  }
  scene_png 1120 896 "$WORK/scene-1120x896.png"
  for place in "--disk-layers 0" "--disk-layers 18"; do
    r=$($BIN generate --model "$WORK/robobrain2.0-3b-q4_k_m.gguf" --image "$WORK/scene-1120x896.png" \
        --task pointing --prompt "the red cup" --greedy --max-tokens 8 --ignore-eos \
        --threads 2 --ctx 2048 $place --json)
    log robobrain3b "rb3-q4_k_m $place" "$r"
  done
  bench/vision-tower.sh "$WORK/robobrain2.0-3b-q4_k_m.gguf" "$WORK/scene-1120x896.png" 3 1 | tail -1
  ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac
done
