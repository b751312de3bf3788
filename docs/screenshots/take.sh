#!/usr/bin/env bash
# Takes the README's screenshots of the real window under Xvfb:
#   welcome.png      the first screen with no model: recommended models with
#                    the planner's verdicts (a 6 GiB simulated GPU and a
#                    4 GiB RAM cap, so every kind of verdict shows)
#   main-window.png  Qwen2.5-Coder-0.5B on the simulated GPU, in RAM and on disk, a
#                    question typed and answered
#   settings.png     the settings pane
#   library.png      the Models tab: the models on disk with their last use
#
#   bash docs/screenshots/take.sh [path/to/spillway]
#
# Needs: apt-get install xvfb xdotool x11-apps imagemagick libgl1-mesa-dri
# and the test models (tests/fetch-models.sh qwen05). The window starts
# from a fresh home folder, so nothing of yours is shown or changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "${1:-target/debug/spillway}")
MODELS=${SPILLWAY_TEST_MODELS:-$HOME/.cache/spillway/test-models}
MODEL=$MODELS/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
OUT=docs/screenshots
for tool in Xvfb xdotool xwd convert; do
    command -v "$tool" >/dev/null || { echo "missing $tool (see the header)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build first)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "no model at $MODEL (tests/fetch-models.sh qwen05)" >&2; exit 1; }

# A fixed folder, so the paths in the pictures are the same each time.
WORK=/tmp/spillway-screenshots
rm -rf "$WORK"
mkdir -p "$WORK/home/Models"
cp "$MODEL" "$WORK/home/Models/"
MODEL=$WORK/home/Models/$(basename "$MODEL")
DISPLAY_NUM=:97
Xvfb "$DISPLAY_NUM" -screen 0 1400x900x24 >/dev/null 2>&1 &
XVFB=$!
cleanup() { kill "${APP:-}" "$XVFB" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
export DISPLAY=$DISPLAY_NUM HOME=$WORK/home XDG_RUNTIME_DIR=$WORK/run HF_HUB_OFFLINE=1
mkdir -p "$HOME/.config/spillway" "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"
sleep 1

window() { xdotool search --sync --name '^Spillway' | head -1; }
shot() { xwd -id "$W" -silent | convert xwd:- "$OUT/$1"; echo "wrote $OUT/$1"; }
click() { xdotool mousemove --window "$W" "$1" "$2" click 1; sleep 0.5; }
start() {
    (cd "$WORK" && exec "$BIN" "$@") >"$WORK/log" 2>&1 &
    APP=$!
    W=$(window)
    xdotool windowfocus --sync "$W" || true
}
stop() {
    if ! kill -0 "$APP" 2>/dev/null; then
        echo "the window exited early:" >&2
        cat "$WORK/log" >&2
        exit 1
    fi
    kill "$APP"; wait "$APP" 2>/dev/null || true
}

# 1. The welcome screen: no model yet (the starter is not fetched).
cat > "$HOME/.config/spillway/settings.yaml" <<'YAML'
starter_fetched: true
vram_cap_gib: 6.0
ram_cap_gib: 4.0
YAML
start
# The machine reading (a one-second calibration) fills the verdicts in.
sleep 6
shot welcome.png
stop

# 2. The chat: a simulated GPU tier and a RAM cap (for the whole process,
# window included) that leave layers in all three tiers; greedy decoding so
# the picture is the same each time.
cat > "$HOME/.config/spillway/settings.yaml" <<'YAML'
starter_fetched: true
gpu_layers: 6
vram_cap_gib: 0.75
ram_cap_gib: 0.6
context_length: 2048
temperature: 0.0
max_new_tokens: 110
YAML
start --model "$MODEL"
# Wait for the model: the window title names it once loaded.
for _ in $(seq 120); do
    xdotool getwindowname "$W" 2>/dev/null | grep -q '—.*qwen' && break
    sleep 0.5
done
sleep 1
# The composer is at the bottom of the central panel.
click 550 688
xdotool type --delay 15 "Write a Python function that checks whether a number is prime."
xdotool key Return
# Telemetry and the speed plot fill in while the reply streams; the
# reply's speed line appears when it ends.
sleep 60
shot main-window.png
click 156 12
sleep 1
shot settings.png
click 88 12
sleep 1
shot library.png
stop
