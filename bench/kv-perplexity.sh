#!/bin/bash
# Perplexity of tests/fixtures/ppl.txt for KV cache type pairs, Spillway and
# llama.cpp (llama-perplexity, flash attention on: llama.cpp needs it for a
# quantized V cache) on the same file, context and threads.
# usage: bench/kv-perplexity.sh SPILLWAY LLAMA_PERPLEXITY MODEL CTX "k/v k/v ..."
# prints: model ctx k v spillway_ppl llama_ppl (a side given as `-` is skipped)
set -u
SW=$1 LP=$2 MODEL=$3 CTX=$4 PAIRS=$5
TEXT=$(dirname "$0")/../tests/fixtures/ppl.txt
for pair in $PAIRS; do
  k=${pair%/*} v=${pair#*/}
  s=-; l=-
  [ "$SW" != - ] && s=$("$SW" perplexity --model "$MODEL" --file "$TEXT" --ctx "$CTX" --threads 2 \
      --cache-type-k "$k" --cache-type-v "$v" --json 2>/dev/null |
      python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])')
  [ "$LP" != - ] && l=$("$LP" -m "$MODEL" -f "$TEXT" -c "$CTX" -b "$CTX" -t 2 -fa on -ctk "$k" -ctv "$v" 2>&1 |
      sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
  echo "$(basename "$MODEL") $CTX $k $v ${s:-error} ${l:-error}"
done
