#!/usr/bin/env bash
# Builds llama.cpp's llama-server (an independent OpenAI-compatible server)
# from the llama-cpp-python source distribution on PyPI, once: the tests
# check Spillway's client against it. The binary is cached outside git;
# a second run builds nothing. A portable build (no -march=native), so a
# cache that moves to another CPU still runs, at -O1 (6 min here instead
# of 9 at -O3; SmolLM2 still answers in well under a second).
#
# Usage: tests/fetch-llama-server.sh      (prints the binary's path)
# Cache: $SPILLWAY_LLAMA_SERVER_DIR (default ~/.cache/spillway/llama-server-0.3.36)
set -euo pipefail

version=0.3.36
sum=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$version.tar.gz"
dir="${SPILLWAY_LLAMA_SERVER_DIR:-$HOME/.cache/spillway/llama-server-$version}"
bin="$dir/llama-server"

if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
command -v cmake >/dev/null || { echo "cmake is missing (.ci/setup installs it)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -sSfL -o "$tmp/src.tar.gz" "$url"
echo "$sum  $tmp/src.tar.gz" | sha256sum --check --status \
  || { echo "sha256 mismatch for llama_cpp_python-$version.tar.gz" >&2; exit 1; }
tar -xzf "$tmp/src.tar.gz" -C "$tmp"
src="$tmp/llama_cpp_python-$version/vendor/llama.cpp"
echo "building llama-server $version (a few minutes, once)" >&2
cmake -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_C_FLAGS_RELEASE="${LLAMA_OPT:--O1} -DNDEBUG" \
  -DCMAKE_CXX_FLAGS_RELEASE="${LLAMA_OPT:--O1} -DNDEBUG" >/dev/null
cmake --build "$tmp/build" -j"$(nproc)" --target llama-server >/dev/null
mkdir -p "$dir"
cp "$tmp/build/bin/llama-server" "$bin.part"
mv "$bin.part" "$bin"
echo "$bin"
