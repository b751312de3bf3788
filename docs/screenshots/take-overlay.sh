#!/usr/bin/env bash
# Takes docs/screenshots/overlay.png, overlay-3d.png and progress.png: the
# real window over a SCRIPTED engine (examples/scripted_window.rs) — a
# pointing question about scene.png (RoboBrain 2.0), a 3-D trace with depths
# (RoboBrain 2.5) and a progress estimate over six frames (RoboBrain 2.5),
# answered with fixed text — to show how answers are drawn. No model runs;
# the captions in the README say so.
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
shot() {  # OUT.png ARGS...: one window, its picture, closed again
    local out=$1; shift
    "$BIN" "$@" >"$WORK/log" 2>&1 &
    APP=$!
    local w
    w=$(xdotool search --sync --name '^Spillway' | head -1)
    sleep 7
    xwd -id "$w" -silent | convert xwd:- "$OUT/$out"
    kill "$APP" 2>/dev/null || true
    wait "$APP" 2>/dev/null || true
    rm -rf /tmp/spillway-scripted
    echo "wrote $OUT/$out"
}
# Points in the model's frame (scene.png 640x480 is seen as 644x476).
shot overlay.png "$OUT/scene.png" \
    "Identify several spots within the vacant space between the two mugs" \
    "[(302, 298), (332, 273), (347, 317), (317, 332), (362, 288)]"
# RoboBrain 2.5: waypoints in thousandths of the image with depths in metres.
shot overlay-3d.png --family 2.5 --task trajectory "$OUT/scene.png" \
    "reach for the mug on the left" \
    "[(520, 880, 0.42), (470, 760, 0.51), (420, 650, 0.60), (380, 560, 0.66), (350, 500, 0.70)]"
# RoboBrain 2.5's progress over six frames of a cube carried into a box.
python3 - "$WORK/frames" <<'PY'
import math, struct, sys, zlib, os
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
W, H = 320, 240
def png(path, px):
    raw = b''.join(b'\x00' + bytes(v for x in range(W) for v in px(x, y)) for y in range(H))
    def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    open(path, 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', W, H, 8, 2, 0, 0, 0))
                           + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
for k in range(6):
    cx = 40 + k * 208 / 5
    cy = 150 - 50 * math.sin(math.pi * k / 5) - (12 if k == 5 else 0)
    def px(x, y):
        if abs(x - cx) <= 12 and abs(y - cy) <= 12: return (205, 40, 40)
        if 230 <= x <= 290 and 140 <= y <= 175 and not (236 <= x <= 284 and y < 170): return (40, 70, 190)
        return (200, 200, 205) if y < 120 else (150, 105, 70)
    png(f"{out}/frame_{k * 10:03d}.png", px)
PY
shot progress.png --family 2.5 --task progress "$WORK"/frames/frame_*.png \
    "put the red cube in the blue box" \
    "<score>+12%|<score>+35%|<score>+58%|<score>+71%|<score>+100%"
