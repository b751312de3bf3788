#!/usr/bin/env bash
# Takes docs/screenshots/overlay.png: the real window over a SCRIPTED
# engine (examples/scripted_window.rs) — a pointing question about
# scene.png, answered with fixed text — to show how an answer's points are
# drawn on the image. No model runs; the caption in the README says so.
#
#   bash docs/screenshots/take-overlay.sh
#
# Needs: apt-get install xvfb xdotool x11-apps imagemagick libgl1-mesa-dri
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in Xvfb xdotool xwd convert; do
    command -v "$tool" >/dev/null || { echo "missing $tool (see the header)" >&2; exit 1; }
done
cargo build --example scripted_window
BIN=$(realpath target/debug/examples/scripted_window)
OUT=docs/screenshots
WORK=/tmp/spillway-overlay
rm -rf "$WORK"
mkdir -p "$WORK/run"
chmod 700 "$WORK/run"
DISPLAY_NUM=:98
Xvfb "$DISPLAY_NUM" -screen 0 1400x900x24 >/dev/null 2>&1 &
XVFB=$!
cleanup() { kill "${APP:-}" "$XVFB" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
export DISPLAY=$DISPLAY_NUM HOME=$WORK XDG_RUNTIME_DIR=$WORK/run
sleep 1
# Points in the model's frame (scene.png 640x480 is seen as 644x476).
"$BIN" "$OUT/scene.png" \
    "Identify several spots within the vacant space between the two mugs" \
    "[(302, 298), (332, 273), (347, 317), (317, 332), (362, 288)]" \
    >"$WORK/log" 2>&1 &
APP=$!
W=$(xdotool search --sync --name '^Spillway' | head -1)
sleep 6
xwd -id "$W" -silent | convert xwd:- "$OUT/overlay.png"
echo "wrote $OUT/overlay.png"
