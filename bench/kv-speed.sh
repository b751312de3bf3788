#!/bin/bash
# Decode speed with DEPTH tokens already cached, per KV cache type pair,
# Spillway and llama-bench alternating (`spillway bench --compare-llama`:
# llama.cpp runs with the same -ctk/-ctv, -d DEPTH and flash attention on).
# usage: bench/kv-speed.sh SPILLWAY LLAMA_BENCH MODEL DEPTH ROUNDS "k/v ..."
# prints: model depth k v spillway_tg llama_tg ratio (medians) and the runs
set -eu
SW=$1 LB=$2 MODEL=$3 DEPTH=$4 ROUNDS=$5 PAIRS=$6
for pair in $PAIRS; do
  k=${pair%/*} v=${pair#*/}
  "$SW" bench --model "$MODEL" --threads 2 --ctx $((DEPTH + 512)) --depth "$DEPTH" \
      --prompt-tokens 0 --gen-tokens 32 --repetitions "$ROUNDS" --compare-llama "$LB" \
      --cache-type-k "$k" --cache-type-v "$v" --json 2>/dev/null |
    python3 -c '
import json, sys
v = json.load(sys.stdin); l = v["llama_cpp"]
print(sys.argv[1], v["depth"], sys.argv[2], sys.argv[3], "%.2f" % v["tg_tokens_per_sec"],
      "%.2f" % l["tg_tokens_per_sec"], "%.3f" % l["tg_ratio"],
      "spillway", [round(r["tokens_per_sec"], 2) for r in v["tg_runs"]],
      "llama", [round(x, 2) for x in l["tg_runs"]])' "$(basename "$MODEL")" "$k" "$v"
done
