#!/usr/bin/env bash
# Takes the README's screenshots: the real window under Xvfb with SmolLM2
# loaded, a question typed and answered, then the settings pane.
#
#   bash docs/screenshots/take.sh [path/to/spillway]
#
# Needs: apt-get install xvfb xdotool x11-apps imagemagick libgl1-mesa-dri
# and the test models (tests/fetch-models.sh smollm2). The window starts
# from a fresh home folder, so nothing of yours is shown or changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "${1:-target/debug/spillway}")
MODEL=${SPILLWAY_TEST_MODELS:-$HOME/.cache/spillway/test-models}/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=docs/screenshots
for tool in Xvfb xdotool xwd convert; do
    command -v "$tool" >/dev/null || { echo "missing $tool (see the header)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build first)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "no model at $MODEL (tests/fetch-models.sh smollm2)" >&2; exit 1; }

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
export DISPLAY=$DISPLAY_NUM HOME=$WORK/home XDG_RUNTIME_DIR=$WORK/run
mkdir -p "$HOME/.config/spillway" "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"
# A RAM cap (for the whole process, window included) that leaves some
# layers on disk, so the strip shows two tiers;
# greedy decoding so the picture is the same each time.
cat > "$HOME/.config/spillway/settings.yaml" <<'EOF'
ram_cap_gib: 0.32
context_length: 2048
temperature: 0.0
max_new_tokens: 110
EOF
sleep 1
(cd "$WORK" && exec "$BIN" --model "$MODEL") >"$WORK/log" 2>&1 &
APP=$!

window() { xdotool search --sync --name '^Spillway' | head -1; }
W=$(window)
shot() { xwd -id "$W" -silent | convert xwd:- "$OUT/$1"; echo "wrote $OUT/$1"; }
click() { xdotool mousemove --window "$W" "$1" "$2" click 1; sleep 0.5; }

# Wait for the model: the window title names it once loaded.
for _ in $(seq 120); do
    xdotool search --name '^Spillway' getwindowname 2>/dev/null | grep -q '—' && break
    sleep 0.5
done
sleep 1
# The composer is at the bottom of the central panel.
xdotool windowfocus --sync "$W" || true
click 550 718
xdotool type --delay 15 "Write a Python function that checks whether a number is prime."
xdotool key Return
# Telemetry and the speed plot fill in while the reply streams; the
# reply's speed line appears when it ends.
sleep 40
shot main-window.png
click 88 12
sleep 1
shot settings.png
if ! kill -0 "$APP" 2>/dev/null; then
    echo "the window exited early:" >&2
    cat "$WORK/log" >&2
    exit 1
fi
