#!/usr/bin/env bash
# Bump one engine pin, then rebuild that engine, regenerate what derives from the pin and rerun the
# contract tier against the new build:
#   hack/bump-engine.sh llamacpp <llama-cpp-python version> <llama.cpp build number>
#   hack/bump-engine.sh ollama <version, e.g. v0.17.4>
#   hack/bump-engine.sh vllm <version, e.g. 0.33.0>
# llama.cpp: the commit comes from the sdist; the build number (the image tag's b<N>) is not in the
# sdist and must be looked up for that commit (docs/engines.md says how). Review the diff after.
set -euo pipefail
cd "$(dirname "$0")/.."
family="${1:?family: llamacpp, ollama or vllm}"; version="${2:?version}"
fam=crds/roundhouse_api/families
case "$family" in
  llamacpp)
    build="${3:?llama.cpp build number for that commit}"
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$version"
    commit="$(tar -xzOf "$tmp/llama_cpp_python-$version.tar.gz" "llama_cpp_python-$version/.git/modules/vendor/llama.cpp/HEAD")"
    echo "llama-cpp-python $version vendors llama.cpp $commit; pinning it as build b$build"
    sed -i -E "s/^BUILD = [0-9]+/BUILD = $build/; s/^COMMIT = \"[0-9a-f]+\"/COMMIT = \"$commit\"/" "$fam/llamacpp.py"
    sed -i -E "s/(LLAMA_CPP_PYTHON_VERSION:-)[0-9.]+/\1$version/; s/(LLAMA_BUILD:-)[0-9]+/\1$build/; s/(LLAMA_COMMIT:-)[0-9a-f]+/\1$commit/" hack/build-engines.sh
    hack/build-engines.sh llama ;;
  ollama)
    sed -i -E "s/^VERSION = \"[0-9.]+\"/VERSION = \"${version#v}\"/" "$fam/ollama.py"
    sed -i -E "s/(OLLAMA_VERSION:-)v[0-9.]+/\1v${version#v}/" hack/build-engines.sh
    hack/build-engines.sh ollama ;;
  vllm)
    sed -i -E "s/^VERSION = \"[0-9.]+\"/VERSION = \"$version\"/" "$fam/vllm.py"
    sed -i -E "s/(VLLM_VERSION:-)[0-9.]+/\1$version/" hack/build-vllm-parser.sh
    hack/build-engines.sh vllm ;;
  *) echo "unknown family $family" >&2; exit 2 ;;
esac
make crds golden manifests
make test-contract
git --no-pager diff --stat
