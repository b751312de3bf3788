#!/usr/bin/env bash
# The prompt GEMM's two weight layouts side by side: interleaved octets (the
# default) against the unpacked panels they replaced
# (SPILLWAY_PROMPT_GEMM=panels), alternating rounds in one run; prints each
# round and the best and median ratio of prompt speeds.
#
#   bench/prompt-layouts.sh MODEL.gguf [ROUNDS=5] [PROMPT_TOKENS=512]
#
# Nothing else may run meanwhile (2 threads here).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?a GGUF}
ROUNDS=${2:-5}
PP=${3:-512}
BIN=target/release/spillway
run() {
  SPILLWAY_PROMPT_GEMM=$1 $BIN bench --model "$MODEL" --threads 2 --repetitions 3 \
    --prompt-tokens "$PP" --gen-tokens 0 --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["pp_tokens_per_sec"])'
}
octets=(); panels=()
for r in $(seq "$ROUNDS"); do
  p=$(run panels); o=$(run octets)
  echo "round $r: panels $p t/s, octets $o t/s"
  panels+=("$p"); octets+=("$o")
done
python3 - "${panels[*]}" "${octets[*]}" <<'PY'
import statistics, sys
p = [float(x) for x in sys.argv[1].split()]
o = [float(x) for x in sys.argv[2].split()]
r = [b / a for a, b in zip(p, o)]
print(f"octets / panels: best {max(r):.2f}x, median {statistics.median(r):.2f}x; "
      f"octets median {statistics.median(o):.1f} t/s, panels median {statistics.median(p):.1f} t/s")
PY
