#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for building and testing (run as root): Debian packages, the pinned Rust
# toolchain with rustfmt/clippy, and the musl target for the static container images. Idempotent and quick when
# everything is there.
set -euo pipefail
cd "$(dirname "$0")/../.."

pkgs=(protobuf-compiler containernetworking-plugins iproute2 openssl buildah jq musl-tools make)
# The real multi-node cluster: each node's container runtime (containerd 1.6 + runc), what kubelet and kube-proxy
# call (iptables, nftables, conntrack), the test images' busybox (busybox-static) and skopeo, which copies the OCI
# archives of images/build.sh into the local registry the nodes pull from. file: images/build.sh checks binaries.
pkgs+=(containerd runc iptables nftables conntrack busybox-static skopeo file)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The VM pod image (images/build.sh vm) copies Debian's QEMU and its firmware (SeaBIOS comes with it) into a FROM
# scratch image. Without recommends: they would add ~150 packages of GUI, audio and GPU libraries it never loads.
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed"; then
  echo "installing Debian packages: qemu-system-x86 (no recommends)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup target list --installed --toolchain "$toolchain" 2>/dev/null | grep -q x86_64-unknown-linux-musl; then
  rustup toolchain install "$toolchain" --profile minimal --component rustfmt,clippy >/dev/null
  rustup target add --toolchain "$toolchain" x86_64-unknown-linux-musl >/dev/null
fi
