#!/usr/bin/env bash
# Builds the real engines the contract, integration and e2e tests run, once per version, into
# ~/.cache/roundhouse/<engine>-<version>/bin (release sites and image registries are unreachable
# here, so each comes from a package registry's sources):
#   llama    llama-server (CPU) from the llama.cpp tree vendored in the llama-cpp-python sdist (PyPI);
#            the sdist's vendored commit must be the pinned one, so the binary is build b$LLAMA_BUILD.
#   ollama   ollama (CPU backend) from the Go module proxy, with the headers Go module zips drop.
#   vllm     vLLM's own `vllm serve` argument parser in a venv (hack/build-vllm-parser.sh).
#   sglang   SGLang's own `sglang serve` argument handling in a venv (hack/build-sglang-parser.sh).
# `hack/build-engines.sh paths` prints each binary's path. A warm cache makes this a no-op.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
LLAMA_BUILD="${LLAMA_BUILD:-11312}"
LLAMA_COMMIT="${LLAMA_COMMIT:-0c1e57098bba43ac29e6e3b677cdceebdd22334f}"
OLLAMA_VERSION="${OLLAMA_VERSION:-v0.17.4}"
MINIAUDIO_VERSION="${MINIAUDIO_VERSION:-1.71}"
CACHE_ROOT="${ROUNDHOUSE_CACHE:-$HOME/.cache/roundhouse}"
HERE="$(cd "$(dirname "$0")" && pwd)"
WANT="${*:-llama ollama vllm sglang}"
JOBS="${JOBS:-$(nproc)}"

log() { printf '[build-engines %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
llama_dir() { echo "$CACHE_ROOT/llama.cpp-b$LLAMA_BUILD"; }
ollama_dir() { echo "$CACHE_ROOT/ollama-$OLLAMA_VERSION"; }

apt_install() { "$HERE/apt-install" "$@"; }

build_llama() {
  local dir; dir="$(llama_dir)"
  [ -x "$dir/bin/llama-server" ] && { log "llama-server b$LLAMA_BUILD: cached in $dir/bin"; return; }
  local t0=$SECONDS
  log "llama-server b$LLAMA_BUILD: cold build from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION's sdist (about 8 minutes on two cores)"
  mkdir -p "$dir/src" "$dir/bin"
  local sdist="$dir/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
  [ -s "$sdist" ] || python3 -m pip download --quiet --no-deps --no-binary :all: -d "$dir/src" \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  rm -rf "$dir/src/tree"; mkdir -p "$dir/src/tree"
  tar -xzf "$sdist" -C "$dir/src/tree" --strip-components=1
  local vendored; vendored="$(cat "$dir/src/tree/.git/modules/vendor/llama.cpp/HEAD" 2>/dev/null || echo unknown)"
  if [ "$vendored" != "$LLAMA_COMMIT" ]; then
    log "the sdist vendors llama.cpp $vendored, not the pinned $LLAMA_COMMIT (build b$LLAMA_BUILD): refusing to build"
    exit 1
  fi
  # Static llama/ggml libraries: one self-contained binary (glibc, libstdc++ and libgomp aside) that
  # the engine image can carry at the upstream path /app/llama-server.
  cmake -S "$dir/src/tree/vendor/llama.cpp" -B "$dir/src/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_NUMBER="$LLAMA_BUILD" -DLLAMA_BUILD_COMMIT="${LLAMA_COMMIT:0:7}" >/dev/null
  cmake --build "$dir/src/build" --target llama-server -j"$JOBS" 2>&1 \
    | grep -E '^\[ *[0-9]+%\]' | awk 'NR % 25 == 0 {print "  " $0; fflush()}' >&2
  cp "$dir/src/build/bin/llama-server" "$dir/bin/llama-server"
  rm -rf "$dir/src/build" "$dir/src/tree"
  log "llama-server b$LLAMA_BUILD: built in $((SECONDS - t0))s: $("$dir/bin/llama-server" --version 2>&1 | head -1)"
}

build_ollama() {
  local dir; dir="$(ollama_dir)"
  [ -x "$dir/bin/ollama" ] && { log "ollama $OLLAMA_VERSION: cached in $dir/bin"; return; }
  local t0=$SECONDS
  log "ollama $OLLAMA_VERSION: cold build from the Go module proxy (about 4 minutes on two cores)"
  apt_install nlohmann-json3-dev libstb-dev
  mkdir -p "$dir/src" "$dir/bin" "$dir/include"
  # Go module zips drop every vendor/ directory; miniaudio.h comes from the sdist of PyPI's miniaudio.
  if [ ! -s "$dir/include/miniaudio/miniaudio.h" ]; then
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$dir/src" "miniaudio==$MINIAUDIO_VERSION"
    tar -tzf "$dir/src/miniaudio-$MINIAUDIO_VERSION.tar.gz" > "$dir/src/miniaudio.list"
    local found; found="$(grep -m1 '/miniaudio\.h$' "$dir/src/miniaudio.list")"
    mkdir -p "$dir/include/miniaudio"
    tar -xzf "$dir/src/miniaudio-$MINIAUDIO_VERSION.tar.gz" -O "$found" > "$dir/include/miniaudio/miniaudio.h"
  fi
  (
    export GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS= GOBIN="$dir/bin"
    export CGO_CPPFLAGS="-I$dir/include -I/usr/include/stb"
    go install -trimpath -ldflags "-s -w -X github.com/ollama/ollama/version.Version=${OLLAMA_VERSION#v}" \
      "github.com/ollama/ollama@$OLLAMA_VERSION"
  )
  log "ollama $OLLAMA_VERSION: built in $((SECONDS - t0))s: $("$dir/bin/ollama" --version 2>&1 | tail -1)"
}

build_vllm() { "$HERE/build-vllm-parser.sh"; }
build_sglang() { "$HERE/build-sglang-parser.sh"; }

paths() {
  echo "llama-server $(llama_dir)/bin/llama-server"
  echo "ollama $(ollama_dir)/bin/ollama"
  [ -x "$HERE/build-vllm-parser.sh" ] && echo "vllm-python $("$HERE/build-vllm-parser.sh" path)"
  [ -x "$HERE/build-sglang-parser.sh" ] && echo "sglang-python $("$HERE/build-sglang-parser.sh" path)"
  return 0
}

if [ "${1:-}" = "paths" ]; then paths; exit 0; fi
for w in $WANT; do "build_$w"; done
