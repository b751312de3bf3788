#!/usr/bin/env bash
# The vision tower alone, Spillway's kernels against candle's CPU matmul
# (SPILLWAY_TOWER_MATMUL=candle), alternating rounds in one run; prints each
# round's JSON and the best and median ratio of seconds per image.
#
#   bench/vision-tower.sh MODEL.gguf IMAGE.png [ROUNDS=3] [REPS=2]
#
# Nothing else may run meanwhile (2 threads here; one background process
# halves the figure).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?a vision-language GGUF}
IMAGE=${2:?an image}
ROUNDS=${3:-3}
REPS=${4:-2}
BIN=target/release/spillway
run() {
  SPILLWAY_TOWER_MATMUL=$1 $BIN bench --model "$MODEL" --image "$IMAGE" --disk-layers all \
    --threads 2 --repetitions "$REPS" --json
}
ours=(); theirs=()
for r in $(seq "$ROUNDS"); do
  c=$(run candle); s=$(run spillway)
  echo "round $r candle:   $c"
  echo "round $r spillway: $s"
  theirs+=("$(echo "$c" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds_median"])')")
  ours+=("$(echo "$s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds_median"])')")
done
python3 - "${theirs[*]}" "${ours[*]}" <<'PY'
import statistics, sys
c = [float(x) for x in sys.argv[1].split()]
s = [float(x) for x in sys.argv[2].split()]
r = [a / b for a, b in zip(c, s)]
print(f"speed-up (candle s / spillway s): best {max(r):.2f}x, median {statistics.median(r):.2f}x; "
      f"spillway median {statistics.median(s):.2f} s, candle median {statistics.median(c):.2f} s")
PY
