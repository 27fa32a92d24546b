#!/usr/bin/env bash
# Builds the real Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl), etcd and kwok from the Go module proxy, once per version,
# into ~/.cache/roundhouse/<versions>/bin. Release download sites are unreachable here,
# so every binary comes from source; a warm cache makes this a no-op.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
CACHE_ROOT="${ROUNDHOUSE_CACHE:-$HOME/.cache/roundhouse}"
WANT="${*:-k8s etcd kwok}"

log() { printf '[build-control-plane %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod GONOSUMDB= GOPRIVATE=
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
staging_version="v0.${K8S_VERSION#v1.}"

k8s_gomod() {
  go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'
}

build_k8s() {
  local dir="$CACHE_ROOT/k8s-$K8S_VERSION" bin="$CACHE_ROOT/k8s-$K8S_VERSION/bin"
  local targets=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
  local missing=0
  for t in "${targets[@]}"; do [ -x "$bin/$t" ] || missing=1; done
  [ "$missing" = 0 ] && { log "kubernetes $K8S_VERSION: cached in $bin"; return; }
  log "kubernetes $K8S_VERSION: cold build (several minutes on two cores)"
  mkdir -p "$dir/src" "$bin"
  local upstream; upstream="$(k8s_gomod)"
  # The release's own go.mod decides the Go language level and the staging list;
  # generate both from it rather than hard-coding either.
  {
    echo "module roundhouse.local/k8s-build"
    grep -E '^(go|godebug) ' "$upstream" | sort -u
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$upstream" | awk '{print $1}' | sort -u \
      | while read -r m; do echo "replace $m => $m ${staging_version}"; done
  } > "$dir/src/go.mod"
  log "generated go.mod with $(grep -c '^replace' "$dir/src/go.mod") staging replacements"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  local pkgs=()
  for t in "${targets[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$t"); done
  (cd "$dir/src" && go build -trimpath -tags=selinux,notest -ldflags "$ld" -o "$bin/" "${pkgs[@]}")
  log "kubernetes $K8S_VERSION: built $(ls "$bin" | tr '\n' ' ')"
}

etcd_version() {
  local upstream; upstream="$(k8s_gomod)"
  grep -E '^\s*go\.etcd\.io/etcd/server/v3 ' "$upstream" | awk '{print $2}'
}

build_etcd() {
  local v; v="$(etcd_version)"
  local dir="$CACHE_ROOT/etcd-$v"
  [ -x "$dir/bin/etcd" ] && { log "etcd $v: cached"; return; }
  log "etcd $v (pinned by kubernetes $K8S_VERSION): building"
  mkdir -p "$dir/src" "$dir/bin"
  printf 'module roundhouse.local/etcd-build\ngo 1.24\nrequire go.etcd.io/etcd/server/v3 %s\n' "$v" > "$dir/src/go.mod"
  (cd "$dir/src" && go build -trimpath -ldflags "-s -w" -o "$dir/bin/etcd" go.etcd.io/etcd/server/v3)
  log "etcd $v: built"
}

build_kwok() {
  local dir="$CACHE_ROOT/kwok-$KWOK_VERSION"
  [ -x "$dir/bin/kwok" ] && { log "kwok $KWOK_VERSION: cached"; return; }
  log "kwok $KWOK_VERSION: building"
  mkdir -p "$dir/bin"
  GOFLAGS= GOBIN="$dir/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
  log "kwok $KWOK_VERSION: built"
}

build_helm() {
  local dir="$CACHE_ROOT/helm-$HELM_VERSION"
  [ -x "$dir/bin/helm" ] && { log "helm $HELM_VERSION: cached"; return; }
  log "helm $HELM_VERSION: building"
  mkdir -p "$dir/src" "$dir/bin"
  printf 'module roundhouse.local/helm-build\ngo 1.24\nrequire helm.sh/helm/v3 %s\n' "$HELM_VERSION" > "$dir/src/go.mod"
  (cd "$dir/src" && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$dir/bin/helm" helm.sh/helm/v3/cmd/helm)
  log "helm $HELM_VERSION: built"
}

# Print the directory holding each component's binaries (one per line), for callers.
paths() {
  echo "$CACHE_ROOT/k8s-$K8S_VERSION/bin"
  echo "$CACHE_ROOT/etcd-$(etcd_version)/bin"
  echo "$CACHE_ROOT/kwok-$KWOK_VERSION/bin"
  echo "$CACHE_ROOT/helm-$HELM_VERSION/bin"
}

if [ "${1:-}" = "paths" ]; then paths; exit 0; fi
for w in $WANT; do "build_$w"; done
