#!/usr/bin/env bash
# Builds the real Kubernetes-side components the tests run against, from the Go module proxy, by module path
# and pinned version. Idempotent: every binary lands in a versioned cache dir outside the repo and is skipped
# when already there. Nothing built here is ever committed.
#
#   e2e/tools/build-tools.sh            # build everything missing, print the bin dir on the last line
#   e2e/tools/build-tools.sh --print    # only print the bin dir
#
# Override the cache with MACVTAP_TOOLS_CACHE (default ~/.cache/macvtap-operator/tools).
set -euo pipefail

K8S_VERSION=v1.35.3          # kube-apiserver, kubectl; same minor as kube-ovn v1.16.2 so the Go build cache is shared
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.21.4
MULTUS_VERSION=v4.3.0
KUBEOVN_VERSION=v1.16.2

CACHE=${MACVTAP_TOOLS_CACHE:-$HOME/.cache/macvtap-operator/tools}
BIN=$CACHE/bin
if [[ ${1:-} == --print ]]; then echo "$BIN"; exit 0; fi

export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}
LDFLAGS_BASE="-s -w"
mkdir -p "$BIN" "$CACHE/src"

log() { printf '[tools %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# have NAME VERSION: true when $BIN/NAME was built at VERSION
have() { [[ -x $BIN/$1 && -f $BIN/.$1.version && $(cat "$BIN/.$1.version") == "$2" ]]; }
stamp() { echo "$2" >"$BIN/.$1.version"; }

build_k8s() {
  have kube-apiserver "$K8S_VERSION" && have kubectl "$K8S_VERSION" && return 0
  local t0=$SECONDS stg="v0.${K8S_VERSION#v1.}" dir="$CACHE/src/k8s-$K8S_VERSION"
  log "kube-apiserver + kubectl $K8S_VERSION (cold: tens of minutes on 2 cores)"
  mkdir -p "$dir" && cd "$dir"
  # A wrapper module: k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local
  # paths, so it cannot be built with `go install`; we replace each one with its published v0.X.Y instead.
  [[ -f go.mod ]] || go mod init macvtap.invalid/k8stools >/dev/null 2>&1
  go mod edit -go=1.25.0 -require="k8s.io/kubernetes@$K8S_VERSION"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$gomod"); do
    go mod edit -replace="$m=$m@$stg"
  done
  cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod tidy >/dev/null
  local vp=k8s.io/component-base/version cp=k8s.io/client-go/pkg/version minor
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  local ld="$LDFLAGS_BASE"
  for p in $vp $cp; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  go build -trimpath -buildvcs=false -ldflags "$ld" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
  stamp kube-apiserver "$K8S_VERSION"; stamp kubectl "$K8S_VERSION"
  log "kube-apiserver + kubectl done in $((SECONDS - t0))s"
}

build_etcd() {
  have etcd "$ETCD_VERSION" && return 0
  local t0=$SECONDS dir="$CACHE/src/etcd-$ETCD_VERSION"
  log "etcd $ETCD_VERSION"
  mkdir -p "$dir" && cd "$dir"
  [[ -f go.mod ]] || go mod init macvtap.invalid/etcd >/dev/null 2>&1
  # etcd's own modules use local replaces; as a dependency its server module resolves without them.
  cat >main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
  go mod tidy >/dev/null
  go build -trimpath -buildvcs=false -ldflags "$LDFLAGS_BASE" -o "$BIN/etcd" .
  stamp etcd "$ETCD_VERSION"
  log "etcd done in $((SECONDS - t0))s"
}

build_helm() {
  have helm "$HELM_VERSION" && return 0
  local t0=$SECONDS
  log "helm $HELM_VERSION"
  GOBIN="$BIN" go install -trimpath -ldflags "$LDFLAGS_BASE" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  stamp helm "$HELM_VERSION"
  log "helm done in $((SECONDS - t0))s"
}

build_multus() {
  have multus "$MULTUS_VERSION" && return 0
  local t0=$SECONDS
  log "multus (thin plugin) $MULTUS_VERSION"
  GOBIN="$BIN" go install -trimpath \
    -ldflags "$LDFLAGS_BASE -X gopkg.in/k8snetworkplumbingwg/multus-cni.v4/pkg/multus.version=$MULTUS_VERSION" \
    "gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus@$MULTUS_VERSION"
  stamp multus "$MULTUS_VERSION"
  log "multus done in $((SECONDS - t0))s"
}

build_kube_ovn() {
  have kube-ovn "$KUBEOVN_VERSION" && return 0
  local t0=$SECONDS dir="$CACHE/src/kube-ovn-$KUBEOVN_VERSION"
  log "kube-ovn CNI $KUBEOVN_VERSION"
  # Its go.mod has replace directives (all to module versions), so build inside a copy of the module.
  if [[ ! -f $dir/go.mod ]]; then
    local src
    src=$(go mod download -json "github.com/kubeovn/kube-ovn@$KUBEOVN_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    rm -rf "$dir" && cp -r "$src" "$dir" && chmod -R u+w "$dir"
  fi
  cd "$dir"
  go build -trimpath -buildvcs=false -ldflags "$LDFLAGS_BASE" -o "$BIN/kube-ovn" ./cmd/cni
  stamp kube-ovn "$KUBEOVN_VERSION"
  log "kube-ovn done in $((SECONDS - t0))s"
}

want=${TOOLS:-"k8s etcd helm multus kube-ovn"}
total0=$SECONDS
for t in $want; do
  case $t in
    k8s) build_k8s ;; etcd) build_etcd ;; helm) build_helm ;; multus) build_multus ;; kube-ovn) build_kube_ovn ;;
    *) echo "unknown tool $t" >&2; exit 2 ;;
  esac
done
log "tools ready in $((SECONDS - total0))s: $BIN"
echo "$BIN"
