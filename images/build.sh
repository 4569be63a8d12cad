#!/usr/bin/env bash
# Builds the container images of this project into OCI archives, without a daemon or a registry:
# static musl binaries from cargo, then `buildah build` of images/<name>/Containerfile (FROM scratch).
#
#   images/build.sh                 # build both images
#   images/build.sh operator        # only one (operator | agent)
#   images/build.sh --print-refs    # print "<name> <image ref> <archive path>" and exit (builds nothing)
#
# Output: $MACVTAP_IMAGES_DIR (default <repo>/target/images)/<name>.oci.tar, each an OCI image layout archive whose
# index names the image ref, e.g. ghcr.io/macvtap-operator/macvtap-operator:<chart appVersion>: exactly what the
# chart's default values point at. Load into a node's containerd with `ctr -n k8s.io images import <archive>`, or
# copy to a registry with `skopeo copy oci-archive:<archive> docker://<registry>/<name>:<tag>`.
#
# Needs (installs nothing; fails naming what is missing): cargo with the x86_64-unknown-linux-musl target, musl-gcc
# (Debian musl-tools, for ring's C code), buildah. IMAGE_REGISTRY overrides ghcr.io/macvtap-operator.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${MACVTAP_IMAGES_DIR:-$ROOT/target/images}
REGISTRY=${IMAGE_REGISTRY:-ghcr.io/macvtap-operator}
TARGET=x86_64-unknown-linux-musl
VERSION=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' \
  "$ROOT/charts/macvtap-operator/Chart.yaml")
[[ -n $VERSION ]] || { echo "images/build.sh: no appVersion in charts/macvtap-operator/Chart.yaml" >&2; exit 1; }

ref() { echo "$REGISTRY/macvtap-$1:$VERSION"; }

images=()
for a in "$@"; do
  case $a in
    --print-refs)
      for n in operator agent; do echo "$n $(ref "$n") $OUT/$n.oci.tar"; done
      exit 0 ;;
    operator|agent) images+=("$a") ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "images/build.sh: unknown argument $a (expected operator, agent, --print-refs)" >&2; exit 2 ;;
  esac
done
((${#images[@]})) || images=(operator agent)

missing=()
command -v cargo >/dev/null || missing+=("cargo (rustup)")
command -v buildah >/dev/null || missing+=("buildah (Debian: apt-get install buildah)")
command -v musl-gcc >/dev/null || missing+=("musl-gcc (Debian: apt-get install musl-tools)")
if command -v rustup >/dev/null && ! (cd "$ROOT" && rustup target list --installed) | grep -qx "$TARGET"; then
  missing+=("the $TARGET Rust target (rustup target add $TARGET)")
fi
if ((${#missing[@]})); then
  printf 'images/build.sh: missing: %s\n' "${missing[@]}" >&2
  exit 1
fi

log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Static binaries: the musl target links statically by default; ring's C/asm goes through musl-gcc.
export CC_x86_64_unknown_linux_musl=musl-gcc
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo_build() { (cd "$ROOT" && cargo build --target "$TARGET" "$@"); }
declare -A bin_path
for img in "${images[@]}"; do
  case $img in
    operator)
      log "cargo build macvtap-operator (release, $TARGET)"
      cargo_build --release -p macvtap-operator --bin macvtap-operator
      bin_path[macvtap-operator]=$TARGET_DIR/$TARGET/release/macvtap-operator ;;
    agent)
      log "cargo build macvtap-agent (release) and macvtap (release-cni, $TARGET)"
      cargo_build --release -p macvtap-agent --bin macvtap-agent
      # The CNI binary has its own size-optimised profile (see the workspace Cargo.toml).
      cargo_build --profile release-cni -p macvtap-cni --bin macvtap
      bin_path[macvtap-agent]=$TARGET_DIR/$TARGET/release/macvtap-agent
      bin_path[macvtap]=$TARGET_DIR/$TARGET/release-cni/macvtap ;;
  esac
done

# buildah's own storage stays under the output dir: nothing in /var/lib/containers, nothing left behind globally.
# vfs works without overlay support; chroot isolation works without a user namespace setup or a runtime daemon.
STORE=$OUT/.buildah
mkdir -p "$OUT" "$STORE"
buildah_() { buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver vfs "$@"; }

for img in "${images[@]}"; do
  ctx=$OUT/context/$img
  rm -rf "$ctx" && mkdir -p "$ctx"
  case $img in
    operator) bins=(macvtap-operator) ;;
    agent) bins=(macvtap-agent macvtap) ;;
  esac
  for b in "${bins[@]}"; do
    p=${bin_path[$b]}
    # A dynamically linked binary would not start on an empty base image.
    if command -v file >/dev/null && file -L "$p" | grep -q 'dynamically linked'; then
      echo "images/build.sh: $p is dynamically linked; expected a static musl binary" >&2
      exit 1
    fi
    cp "$p" "$ctx/$b"
  done
  archive=$OUT/$img.oci.tar
  log "buildah build $(ref "$img") -> $archive"
  rm -f "$archive.tmp"
  # --timestamp 0: reproducible layers and config (same binaries -> same digest); gzip layers (default is none).
  buildah_ build --isolation chroot --timestamp 0 --disable-compression=false --build-arg "VERSION=$VERSION" \
    -f "$ROOT/images/$img/Containerfile" -t "oci-archive:$archive.tmp:$(ref "$img")" "$ctx" >&2
  mv "$archive.tmp" "$archive"
  log "$archive: $(du -h "$archive" | cut -f1)"
done
