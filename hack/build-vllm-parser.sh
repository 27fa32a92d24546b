#!/usr/bin/env bash
# Build a CPU-only venv in which vLLM's own `vllm serve` argument parser runs,
# for tests/support/vllm_check.py (checks the command lines the operator
# renders).
#
#   hack/build-vllm-parser.sh          build (a no-op when already built)
#   hack/build-vllm-parser.sh path     print the venv's python
#
# Route: the vllm wheel with --no-deps, plus the pure-Python/CPU packages that
# the import chain of `vllm.entrypoints.cli.serve` needs, every one pinned and
# installed with --no-deps (so nothing can pull torch or the CUDA wheels).
# No torch: vllm_check.py stands in a fake `torch` module (the parser and the
# config checks it runs never compute with torch).
#
# Cache: ${ROUNDHOUSE_CACHE:-$HOME/.cache/roundhouse}/vllm-<version>/venv
# VLLM_VERSION overrides the version (the pins below are for 0.33.0).
# PYTHON overrides the interpreter (vLLM 0.33.0 needs >= 3.10; pins: 3.11).
set -euo pipefail

VLLM_VERSION="${VLLM_VERSION:-0.33.0}"
CACHE="${ROUNDHOUSE_CACHE:-$HOME/.cache/roundhouse}"
DIR="$CACHE/vllm-$VLLM_VERSION"
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

# Pinned closure of what `import vllm.entrypoints.cli.serve` imports in
# vLLM 0.33.0 (with vLLM's own specifiers: fastapi<0.137, transformers<5.21,
# llguidance<1.8, xgrammar==0.2.8, apache-tvm-ffi==0.1.11, oss-harmony).
PINS=(
  aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 annotated-doc==0.0.7
  annotated-types==0.8.0 anyio==4.16.0 apache-tvm-ffi==0.1.11 attrs==26.1.0
  cachetools==8.0.2 cbor2==6.3.0 certifi==2026.10.19.post1
  charset-normalizer==3.5.3 click==8.5.1 cloudpickle==3.1.3 fastapi==0.136.3
  filelock==4.3.1 frozenlist==1.8.0 fsspec==2026.9.0 h11==0.16.0
  httpcore==1.0.9 httpcore2==2.16.2 httpx==0.28.1 httpx2==2.16.2
  huggingface_hub==2.4.0 idna==3.20 Jinja2==3.1.6 jiter==0.19.0
  llguidance==1.7.6 MarkupSafe==3.0.4 msgspec==0.23.0 multidict==7.2.1
  numpy==2.4.6 openai==3.57.0 opentelemetry-api==1.45.2 orjson==3.13.0
  oss-harmony==0.0.11 packaging==26.4 partial-json-parser==0.2.1.1.post7
  pillow==13.0.0 prometheus_client==0.26.0 propcache==0.5.4 psutil==7.2.2
  py-cpuinfo==9.0.0 pybase64==1.5.1 pydantic==2.14.4 pydantic_core==2.50.5
  python-multipart==0.0.34 PyYAML==6.0.4 pyzmq==27.3.0 regex==2026.11.19
  requests==2.34.2 safetensors==0.8.0 sniffio==1.3.1 starlette==1.10.0
  tokenizers==0.23.3 tqdm==4.70.1 transformers==5.20.2 truststore==0.10.5
  typing-inspection==0.4.5 typing_extensions==4.16.0 urllib3==2.8.0
  uvicorn==0.54.0 uvloop==0.23.0 watchfiles==1.3.0 xgrammar==0.2.8
  yarl==1.25.1
)

if [[ -f "$STAMP" && -x "$PY" ]]; then
  echo "vllm-parser: cached: $VENV (vllm $VLLM_VERSION)"
  exit 0
fi

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1; then PYTHON="$c"; break; fi
  done
fi
[[ -n "$PYTHON" ]] || { echo "vllm-parser: no python3 found" >&2; exit 1; }

start=$(date +%s)
echo "vllm-parser: building $VENV (vllm $VLLM_VERSION, $("$PYTHON" --version 2>&1))"
rm -rf "$VENV"
mkdir -p "$DIR"
"$PYTHON" -m venv "$VENV"
PIP=("$PY" -m pip --disable-pip-version-check --no-input)

echo "vllm-parser: [1/3] vllm==$VLLM_VERSION (--no-deps)"
"${PIP[@]}" install --no-deps --progress-bar off "vllm==$VLLM_VERSION"

echo "vllm-parser: [2/3] ${#PINS[@]} pinned packages (--no-deps)"
"${PIP[@]}" install --no-deps --progress-bar off "${PINS[@]}"

echo "vllm-parser: [3/3] smoke test: vllm_check.py"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$("$PY" "$HERE/tests/support/vllm_check.py" '["facebook/opt-125m","--port","8000"]' 2>/dev/null)"
echo "$out"
case "$out" in
  *'"ok": true'*) ;;
  *) echo "vllm-parser: smoke test failed" >&2; exit 1 ;;
esac

touch "$STAMP"
echo "vllm-parser: done in $(( $(date +%s) - start ))s: $(du -sh "$VENV" | cut -f1) at $VENV"
