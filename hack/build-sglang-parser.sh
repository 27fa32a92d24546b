#!/usr/bin/env bash
# Build a CPU-only venv in which SGLang's own `sglang serve` argument handling
# runs, for tests/support/sglang_check.py (checks the command lines the operator
# renders).
#
#   hack/build-sglang-parser.sh          build (a no-op when already built)
#   hack/build-sglang-parser.sh path     print the venv's python
#
# Route: the sglang wheel with --no-deps, plus the small pure-Python/CPU
# packages that the import chain of `sglang.srt.server_args` and
# `sglang.cli.serve` needs, every one pinned and installed with --no-deps (so
# nothing can pull torch, triton or the CUDA wheels). torch, triton and IPython
# are stood in by sglang_check.py (the parser never computes with them).
#
# Cache: ${ROUNDHOUSE_CACHE:-$HOME/.cache/roundhouse}/sglang-<version>/venv
# SGLANG_VERSION overrides the version (the pins below are for 0.5.23).
set -euo pipefail

SGLANG_VERSION="${SGLANG_VERSION:-0.5.23}"
CACHE="${ROUNDHOUSE_CACHE:-$HOME/.cache/roundhouse}"
DIR="$CACHE/sglang-$SGLANG_VERSION"
VENV="$DIR/venv"
PY="$VENV/bin/python"
STAMP="$VENV/.roundhouse-complete"

if [[ "${1:-}" == "path" ]]; then
  echo "$PY"
  exit 0
fi
if [[ $# -gt 0 ]]; then
  echo "usage: $0 [path]" >&2
  exit 2
fi

# What `import sglang.srt.server_args, sglang.cli.serve` imports in 0.5.23,
# found by importing it with each missing module added in turn.
PINS=(
  aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 anyio==4.16.0
  attrs==26.1.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3
  filelock==4.3.2 frozenlist==1.8.0 fsspec==2026.9.0 httpx2==2.16.2
  huggingface_hub==2.4.0 idna==3.20 Jinja2==3.1.6
  MarkupSafe==3.0.4 msgspec==0.23.0 multidict==7.2.1 numpy==2.4.6
  orjson==3.13.0 packaging==26.4 pillow==13.0.0 propcache==0.5.4
  psutil==7.2.2 pybase64==1.5.1 pydantic==2.14.4 pydantic_core==2.50.5
  pyzmq==27.3.0 requests==2.34.2 starlette==1.10.0 tqdm==4.70.1
  typing_extensions==4.16.0 typing-inspection==0.4.5 urllib3==2.8.0
  yarl==1.25.1
)

if [[ -f "$STAMP" && -x "$PY" ]]; then
  echo "sglang-parser: cached: $VENV (sglang $SGLANG_VERSION)"
  exit 0
fi

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1; then PYTHON="$c"; break; fi
  done
fi
[[ -n "$PYTHON" ]] || { echo "sglang-parser: no python3 found" >&2; exit 1; }

start=$(date +%s)
echo "sglang-parser: building $VENV (sglang $SGLANG_VERSION, $("$PYTHON" --version 2>&1))"
rm -rf "$VENV"
mkdir -p "$DIR"
"$PYTHON" -m venv "$VENV"
PIP=("$PY" -m pip --disable-pip-version-check --no-input)

echo "sglang-parser: [1/3] sglang==$SGLANG_VERSION (--no-deps)"
"${PIP[@]}" install --no-deps --progress-bar off "sglang==$SGLANG_VERSION"

echo "sglang-parser: [2/3] ${#PINS[@]} pinned packages (--no-deps)"
"${PIP[@]}" install --no-deps --progress-bar off "${PINS[@]}"

echo "sglang-parser: [3/3] smoke test: sglang_check.py"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(echo '["--model-type","llm","--model-path","org/m","--port","30000"]' | "$PY" "$HERE/tests/support/sglang_check.py" 2>/dev/null)"
echo "$out"
case "$out" in
  *'"ok": true'*) ;;
  *) echo "sglang-parser: smoke test failed" >&2; exit 1 ;;
esac

touch "$STAMP"
echo "sglang-parser: done in $(( $(date +%s) - start ))s: $(du -sh "$VENV" | cut -f1) at $VENV"
