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

K8S_VERSION=v1.35.3          # same minor as kube-ovn v1.16.2 so the Go build cache is shared
# Every Kubernetes program the real cluster runs, built in one wrapper module at one version.
K8S_CMDS="kube-apiserver kubectl kubelet kube-scheduler kube-controller-manager kube-proxy"
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.21.4
MULTUS_VERSION=v4.3.0
KUBEOVN_VERSION=v1.16.2
REGISTRY_VERSION=v3.1.2      # CNCF distribution: the OCI registry the real cluster's containerd mirrors pull from
CONTAINERD_VERSION=v2.4.2    # every node's container runtime: the newest 2.x the module proxy serves (runc is Debian's)

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${MACVTAP_TOOLS_CACHE:-$HOME/.cache/macvtap-operator/tools}
BIN=$CACHE/bin
if [[ ${1:-} == --print ]]; then echo "$BIN"; exit 0; fi

# GOTOOLCHAIN=local: fail loudly rather than fetch a toolchain; kube-ovn v1.16.2 needs Go >= 1.26.4.
need_go() {
  [[ -z ${GO_OK:-} ]] || return 0
  command -v go >/dev/null || { echo "Go >= 1.26.4 is needed (not Debian's golang-go, too old)" >&2; exit 1; }
  local v
  v=$(go env GOVERSION)
  printf '%s\n%s\n' go1.26.4 "$v" | sort -V -C || { echo "Go >= 1.26.4 is needed, found $v" >&2; exit 1; }
  GO_OK=1
}

export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}
# The Go caches of these builds (about 8 GB: Kubernetes alone is 5 GB of build cache) live under $CACHE/go and go away
# once every tool is built: only the binaries are kept, and a fresh CI machine's disk is small. An interrupted build
# keeps them, so the next run resumes. MACVTAP_TOOLS_KEEP_GO=1 keeps them always.
export GOCACHE=$CACHE/go/build GOMODCACHE=$CACHE/go/mod
LDFLAGS_BASE="-s -w"
mkdir -p "$BIN" "$CACHE/src"

log() { printf '[tools %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# have NAME VERSION: true when $BIN/NAME was built at VERSION
have() { [[ -x $BIN/$1 && -f $BIN/.$1.version && $(cat "$BIN/.$1.version") == "$2" ]]; }
stamp() { echo "$2" >"$BIN/.$1.version"; }

# heartbeat LABEL CMD...: runs CMD and logs a line every 30 s, so a cold build (minutes of silence) shows it lives.
heartbeat() {
  local label=$1 t0=$SECONDS rc=0 hb
  shift
  (while sleep 30; do log "$label: still building ($((SECONDS - t0))s)"; done) &
  hb=$!
  "$@" || rc=$?
  kill "$hb" 2>/dev/null || true
  wait "$hb" 2>/dev/null || true
  return "$rc"
}

build_k8s() {
  local c missing=0
  for c in $K8S_CMDS; do have "$c" "$K8S_VERSION" || missing=1; done
  ((missing)) || return 0
  need_go
  local t0=$SECONDS stg="v0.${K8S_VERSION#v1.}" dir="$CACHE/src/k8s-$K8S_VERSION"
  log "$K8S_CMDS $K8S_VERSION (cold: 8-12 min on 2 cores)"
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
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for c in $K8S_CMDS; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
    printf ')\n'
  } >tools.go
  go mod tidy >/dev/null
  local vp=k8s.io/component-base/version cp=k8s.io/client-go/pkg/version minor
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  local ld="$LDFLAGS_BASE"
  for p in $vp $cp; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  local pkgs=()
  for c in $K8S_CMDS; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  heartbeat kubernetes go build -trimpath -buildvcs=false -ldflags "$ld" -o "$BIN/" "${pkgs[@]}"
  for c in $K8S_CMDS; do stamp "$c" "$K8S_VERSION"; done
  log "$K8S_CMDS done in $((SECONDS - t0))s"
}

build_etcd() {
  have etcd "$ETCD_VERSION" && return 0
  need_go
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
  heartbeat etcd go build -trimpath -buildvcs=false -ldflags "$LDFLAGS_BASE" -o "$BIN/etcd" .
  stamp etcd "$ETCD_VERSION"
  log "etcd done in $((SECONDS - t0))s"
}

build_helm() {
  # The key names the recipe too: builds without the version stamps below are rebuilt.
  local key="$HELM_VERSION stamped"
  have helm "$key" && return 0
  need_go
  local t0=$SECONDS gomod kminor h=helm.sh/helm/v3
  log "helm $HELM_VERSION"
  # Without these stamps `helm version` says v3.21 and `helm template`/`lint` assume Kubernetes v1.20, which
  # fails charts with a kubeVersion constraint. Helm's Makefile takes the minor from its client-go.
  gomod=$(go mod download -json "$h@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  kminor=$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod")
  heartbeat helm env GOBIN="$BIN" go install -trimpath -ldflags "$LDFLAGS_BASE -X $h/internal/version.version=$HELM_VERSION \
    -X $h/internal/version.gitTreeState=clean \
    -X $h/pkg/chartutil.k8sVersionMajor=1 -X $h/pkg/chartutil.k8sVersionMinor=$kminor \
    -X $h/pkg/lint/rules.k8sVersionMajor=1 -X $h/pkg/lint/rules.k8sVersionMinor=$kminor" \
    "$h/cmd/helm@$HELM_VERSION"
  stamp helm "$key"
  log "helm done in $((SECONDS - t0))s"
}

build_multus() {
  have multus "$MULTUS_VERSION" && return 0
  need_go
  local t0=$SECONDS
  log "multus (thin plugin) $MULTUS_VERSION"
  # Not `go install pkg@version`: that also fetches the module's version list (for deprecation notices), which
  # the proxy refuses for this gopkg.in path (403); a copy of the module builds from its own go.sum.
  cd "$(module_copy gopkg.in/k8snetworkplumbingwg/multus-cni.v4 "$MULTUS_VERSION" multus)"
  heartbeat multus go build -trimpath -buildvcs=false \
    -ldflags "$LDFLAGS_BASE -X gopkg.in/k8snetworkplumbingwg/multus-cni.v4/pkg/multus.version=$MULTUS_VERSION" \
    -o "$BIN/multus" ./cmd/multus
  stamp multus "$MULTUS_VERSION"
  log "multus done in $((SECONDS - t0))s"
}

# module_copy MODULE VERSION NAME: a writable copy of a downloaded module under $CACHE/src; prints its path.
module_copy() {
  local dir="$CACHE/src/$3-$2" src
  if [[ ! -f $dir/go.mod ]]; then
    src=$(go mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [[ -n $src ]] || { echo "go mod download $1@$2 failed" >&2; exit 1; }
    rm -rf "$dir" && cp -r "$src" "$dir" && chmod -R u+w "$dir"
  fi
  echo "$dir"
}

build_kube_ovn() {
  # The CNI binary our CNI delegates IPAM to, and the controller and daemon that answer it, from one module version;
  # plus what the cluster needs of the module besides programs: its CRDs and the OVSDB schemas its models expect.
  local key="$KUBEOVN_VERSION controller+daemon" share="$CACHE/share/kube-ovn"
  have kube-ovn "$key" && have kube-ovn-controller "$key" && have kube-ovn-daemon "$key" &&
    [[ -f $share/.version && $(cat "$share/.version") == "$key" ]] && return 0
  need_go
  local t0=$SECONDS d s
  log "kube-ovn CNI, controller and daemon $KUBEOVN_VERSION (cold: ~5 min on 2 cores)"
  # Its go.mod has replace directives (all to module versions), so build inside a copy of the module.
  d=$(module_copy github.com/kubeovn/kube-ovn "$KUBEOVN_VERSION" kube-ovn)
  cd "$d"
  heartbeat kube-ovn go build -trimpath -buildvcs=false -ldflags "$LDFLAGS_BASE" -o "$BIN/kube-ovn" ./cmd/cni
  heartbeat kube-ovn-controller go build -trimpath -buildvcs=false -ldflags "$LDFLAGS_BASE" \
    -o "$BIN/kube-ovn-controller" ./cmd/controller
  heartbeat kube-ovn-daemon go build -trimpath -buildvcs=false -ldflags "$LDFLAGS_BASE" \
    -o "$BIN/kube-ovn-daemon" ./cmd/daemon
  # Debian's OVS/OVN schemas are older than the columns kube-ovn's models map (libovsdb refuses such a database):
  # the databases are created from the schemas the models embed, as raw JSON literals in each model.go.
  rm -rf "$share" && mkdir -p "$share"
  for s in ovnnb ovnsb vswitch; do
    sed -n '/^var schema = `{$/,/^}`$/p' "pkg/ovsdb/$s/model.go" | sed -e '1s/^var schema = `//' -e '$s/`$//' \
      >"$share/$s.ovsschema"
    jq -e .name "$share/$s.ovsschema" >/dev/null || { echo "no schema in pkg/ovsdb/$s/model.go" >&2; exit 1; }
  done
  cp charts/kube-ovn/templates/kube-ovn-crd.yaml "$share/crd.yaml"
  for c in kube-ovn kube-ovn-controller kube-ovn-daemon; do stamp "$c" "$key"; done
  echo "$key" >"$share/.version"
  log "kube-ovn done in $((SECONDS - t0))s"
}

build_registry() {
  have registry "$REGISTRY_VERSION" && return 0
  need_go
  local t0=$SECONDS m=github.com/distribution/distribution/v3
  log "registry (distribution) $REGISTRY_VERSION"
  # Its go.mod has no replace directives, so `go install pkg@version` builds it from its own go.sum. The stamps are
  # the ones its Makefile sets (`registry --version` prints them).
  heartbeat registry env GOBIN="$BIN" go install -trimpath -buildvcs=false \
    -ldflags "$LDFLAGS_BASE -X $m/version.version=$REGISTRY_VERSION -X $m/version.mainpkg=$m" \
    "$m/cmd/registry@$REGISTRY_VERSION"
  stamp registry "$REGISTRY_VERSION"
  log "registry done in $((SECONDS - t0))s"
}

build_containerd() {
  have containerd "$CONTAINERD_VERSION" && have containerd-shim-runc-v2 "$CONTAINERD_VERSION" &&
    have ctr "$CONTAINERD_VERSION" && return 0
  need_go
  local t0=$SECONDS m=github.com/containerd/containerd/v2
  log "containerd, its runc shim and ctr $CONTAINERD_VERSION"
  # No replace directives in its go.mod: `go install pkg@version` builds from its own go.sum. The stamps and tags are
  # its Makefile's; CGO off leaves out only the btrfs snapshotter (cgo-only), which the nodes do not use. The shim
  # gets the Makefile's `no_grpc` (it speaks ttrpc only) and is static like the release's.
  local ld="$LDFLAGS_BASE -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Package=$m"
  heartbeat containerd env GOBIN="$BIN" go install -trimpath -buildvcs=false -tags urfave_cli_no_docs \
    -ldflags "$ld" "$m/cmd/containerd@$CONTAINERD_VERSION" "$m/cmd/ctr@$CONTAINERD_VERSION"
  heartbeat containerd-shim env GOBIN="$BIN" go install -trimpath -buildvcs=false -tags "urfave_cli_no_docs no_grpc" \
    -ldflags "$ld" "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  for c in containerd containerd-shim-runc-v2 ctr; do stamp "$c" "$CONTAINERD_VERSION"; done
  log "containerd done in $((SECONDS - t0))s"
}

# Debian's reference plugins (host-local, static, ...) in /usr/lib/cni, the IPAM plugins the CNI tests delegate to.
install_cni_plugins() {
  [[ -x /usr/lib/cni/host-local && -x /usr/lib/cni/static ]] && return 0
  log "containernetworking-plugins (apt)"
  [[ $(id -u) == 0 ]] || { echo "run as root to apt-get install containernetworking-plugins" >&2; exit 1; }
  apt-get install -y -q containernetworking-plugins >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q containernetworking-plugins >/dev/null; }
}

want=${TOOLS:-"containerd k8s etcd helm multus kube-ovn registry cni-plugins"}
total0=$SECONDS
for t in $want; do
  case $t in
    k8s) build_k8s ;; etcd) build_etcd ;; helm) build_helm ;; multus) build_multus ;; kube-ovn) build_kube_ovn ;;
    cni-plugins) install_cni_plugins ;;
    registry) build_registry ;; containerd) build_containerd ;;
    *) echo "unknown tool $t" >&2; exit 2 ;;
  esac
done
if [[ -z ${MACVTAP_TOOLS_KEEP_GO:-} && -d $CACHE/go ]]; then
  chmod -R u+w "$CACHE/go" && rm -rf "$CACHE/go" "$CACHE/src"
  log "removed the Go build and module caches of these builds"
fi
log "tools ready in $((SECONDS - total0))s: $BIN"
echo "$BIN"
