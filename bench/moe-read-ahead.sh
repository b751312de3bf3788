#!/usr/bin/env bash
# Decode with disk-tier experts read ahead and not, rounds alternating
# (docs/BENCHMARKS.md, "Reading experts ahead"). One JSON line per run.
# Usage: bench/moe-read-ahead.sh MODEL.gguf [OUT.jsonl]
set -euo pipefail
M=${1:?usage: $0 MODEL.gguf [OUT.jsonl]}
out=${2:-moe-read-ahead.jsonl}
S=${SPILLWAY:-$(dirname "$0")/../target/release/spillway}
run() { # round label on|off bench-options...
  local round=$1 label=$2 ra=$3
  shift 3
  local flag=()
  [ "$ra" = off ] && flag=(--no-expert-read-ahead)
  r=$("$S" bench --model "$M" --threads 2 --ctx 1024 --cold --json "${flag[@]}" "$@" 2>/dev/null)
  echo "{\"round\":$round,\"ram\":\"$label\",\"read_ahead\":\"$ra\",\"r\":$r}" >> "$out"
}
for round in 1 2; do
  for ra in on off; do run $round 4GiB $ra --ram 4GiB --prompt-tokens 64 --gen-tokens 32 --repetitions 3; done
done
for ra in on off; do run 1 8GiB $ra --ram 8GiB --prompt-tokens 64 --gen-tokens 32 --repetitions 3; done
for ra in on off; do
  run 1 nocache $ra --ram 4GiB --expert-cache 0 --prompt-tokens 16 --gen-tokens 16 --repetitions 2
done
