#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for building and testing (run as root): Debian packages, the pinned Rust
# toolchain with rustfmt/clippy, and the musl target for the static container images. Idempotent and quick when
# everything is there.
set -euo pipefail
cd "$(dirname "$0")/../.."

pkgs=(protobuf-compiler containernetworking-plugins iproute2 openssl buildah jq musl-tools make)
# The real multi-node cluster: runc for each node's containerd (containerd 2.x itself is built by build-tools.sh),
# what kubelet and kube-proxy call (iptables, nftables, conntrack), the test images' busybox (busybox-static) and
# skopeo, which copies the OCI archives of images/build.sh into the local registry the nodes pull from. file:
# images/build.sh checks binaries.
pkgs+=(runc iptables nftables conntrack busybox-static skopeo file)
# kube-ovn's daemon (e2e/src/kube_ovn) refuses to start without ipset (and iptables-legacy, which iptables brings).
pkgs+=(ipset)
# install_missing [apt-get options --] PACKAGE...: installs those not installed yet (one apt-get update if any).
install_missing() {
  local opts=() missing=() p
  if [[ $1 == -* ]]; then
    while [[ $1 != -- ]]; do opts+=("$1"); shift; done
    shift
  fi
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "installing Debian packages: ${missing[*]} ${opts[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${opts[@]}" "${missing[@]}" >/dev/null
}
install_missing "${pkgs[@]}"

# The VM pod image (images/build.sh vm) copies Debian's QEMU and its firmware (SeaBIOS comes with it) into a FROM
# scratch image. Without recommends: they would add ~150 packages of GUI, audio and GPU libraries it never loads.
install_missing --no-install-recommends -- qemu-system-x86

# The real kube-ovn control side and per-node daemons (e2e/src/kube_ovn): Open vSwitch and OVN userspace programs
# (ovsdb-server, ovs-vswitchd, ovn-northd, ovn-controller and their *-ctl tools). The cluster starts its own
# instances; a policy-rc.d keeps the packages' scripts from starting the machine-wide services while installing.
if ! dpkg-query -W -f='${Status}' ovn-host 2>/dev/null | grep -q "install ok installed"; then
  own_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  install_missing --no-install-recommends -- openvswitch-switch ovn-central ovn-host
  [[ -z $own_policy ]] || rm -f /usr/sbin/policy-rc.d
fi

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup target list --installed --toolchain "$toolchain" 2>/dev/null | grep -q x86_64-unknown-linux-musl; then
  rustup toolchain install "$toolchain" --profile minimal --component rustfmt,clippy >/dev/null
  rustup target add --toolchain "$toolchain" x86_64-unknown-linux-musl >/dev/null
fi
