#!/usr/bin/env bash
# Side-by-side speed of Spillway and llama.cpp on the same model, threads and
# machine, alternating the two so that machine noise hits both alike.
# Prints each run and the median ratio Spillway / llama.cpp.
#
# Usage: tests/bench/compare-llama.sh LLAMA_BENCH MODEL.gguf [ROUNDS] [extra spillway bench args...]
#   LLAMA_BENCH   path to llama.cpp's llama-bench (a CPU build; see docs/BENCHMARKS.md)
#   SPILLWAY      the spillway binary (default: target/native/release/spillway)
#   THREADS       threads for both (default 2); PP, TG: test sizes (512, 128)
set -euo pipefail
llama_bench=$1; model=$2; rounds=${3:-3}; shift $(( $# < 3 ? $# : 3 ))
spillway=${SPILLWAY:-target/native/release/spillway}
threads=${THREADS:-2}; pp=${PP:-512}; tg=${TG:-128}

declare -a s_pp s_tg l_pp l_tg
for r in $(seq "$rounds"); do
  s=$("$spillway" bench --model "$model" --threads "$threads" --prompt-tokens "$pp" \
        --gen-tokens "$tg" --repetitions 1 --json "$@")
  s_pp+=("$(echo "$s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pp_tokens_per_sec"])')")
  s_tg+=("$(echo "$s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tg_tokens_per_sec"])')")
  l=$("$llama_bench" -m "$model" -t "$threads" -p "$pp" -n "$tg" -r 1 -o json 2>/dev/null)
  l_pp+=("$(echo "$l" | python3 -c 'import json,sys; print([x["avg_ts"] for x in json.load(sys.stdin) if x["n_prompt"]>0][0])')")
  l_tg+=("$(echo "$l" | python3 -c 'import json,sys; print([x["avg_ts"] for x in json.load(sys.stdin) if x["n_gen"]>0][0])')")
  echo "round $r: spillway pp ${s_pp[-1]} tg ${s_tg[-1]} | llama.cpp pp ${l_pp[-1]} tg ${l_tg[-1]}"
done
python3 - "${s_pp[*]}" "${s_tg[*]}" "${l_pp[*]}" "${l_tg[*]}" <<'PY'
import statistics as st, sys
s_pp, s_tg, l_pp, l_tg = ([float(x) for x in a.split()] for a in sys.argv[1:5])
med = st.median
print(f"median  spillway pp {med(s_pp):.1f} t/s  tg {med(s_tg):.1f} t/s")
print(f"median  llama.cpp pp {med(l_pp):.1f} t/s  tg {med(l_tg):.1f} t/s")
print(f"ratio (spillway / llama.cpp, median of per-round ratios): "
      f"pp {med([a/b for a, b in zip(s_pp, l_pp)]):.3f}x  tg {med([a/b for a, b in zip(s_tg, l_tg)]):.3f}x")
PY
