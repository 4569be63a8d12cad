#!/usr/bin/env bash
# Builds the container images of this project into OCI archives, without a daemon or a registry:
# `buildah build` of images/<name>/Containerfile (FROM scratch) with static binaries in the build context.
#
#   images/build.sh                 # build all four images
#   images/build.sh pause busybox   # only these (operator | agent | pause | busybox); pause and busybox need no cargo
#   images/build.sh --print-refs    # print "<name> <image ref> <archive path>" for all four and exit (builds nothing)
#
# The images:
#   operator  ghcr.io/macvtap-operator/macvtap-operator:<chart appVersion>  static musl release build (cargo)
#   agent     ghcr.io/macvtap-operator/macvtap-agent:<chart appVersion>     agent + `macvtap` CNI (cargo)
#   pause     registry.k8s.io/pause:3.10      the CRI sandbox image: images/pause/pause.c, musl-gcc -static -Os;
#                                             each node's containerd must name it as sandbox_image (its 1.6
#                                             default is pause:3.6)
#   busybox   docker.io/library/busybox:latest  Debian busybox-static + /bin/<applet> links: what test pods'
#                                             `image: busybox` resolves to
#
# Output: $MACVTAP_IMAGES_DIR (default <repo>/target/images)/<name>.oci.tar, each an OCI image layout archive whose
# index names the image ref: exactly what the chart's default values (or a pod spec) point at. Load into a node's
# containerd with `ctr -n k8s.io images import <archive>`, or copy to a registry with
# `skopeo copy oci-archive:<archive> docker://<registry>/<repository>:<tag>` (e2e/src/registry.rs does that).
# Reproducible: layers and config carry timestamp 0, so the same inputs give the same digests.
#
# Needs (installs nothing; fails naming what is missing): buildah; musl-gcc (Debian musl-tools: ring's C code, and
# pause.c); for operator/agent cargo with the x86_64-unknown-linux-musl target; for busybox Debian busybox-static.
# IMAGE_REGISTRY overrides ghcr.io/macvtap-operator (operator and agent only).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${MACVTAP_IMAGES_DIR:-$ROOT/target/images}
REGISTRY=${IMAGE_REGISTRY:-ghcr.io/macvtap-operator}
TARGET=x86_64-unknown-linux-musl
VERSION=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' \
  "$ROOT/charts/macvtap-operator/Chart.yaml")
[[ -n $VERSION ]] || { echo "images/build.sh: no appVersion in charts/macvtap-operator/Chart.yaml" >&2; exit 1; }

# The pause tag is the one Kubernetes v1.35 (our kubelet) pairs with; it only has to match the containerd config.
PAUSE_REF=registry.k8s.io/pause:3.10
BUSYBOX_REF=docker.io/library/busybox:latest
ALL=(operator agent pause busybox)

ref() {
  case $1 in
    pause) echo "$PAUSE_REF" ;;
    busybox) echo "$BUSYBOX_REF" ;;
    *) echo "$REGISTRY/macvtap-$1:$VERSION" ;;
  esac
}

images=()
for a in "$@"; do
  case $a in
    --print-refs)
      for n in "${ALL[@]}"; do echo "$n $(ref "$n") $OUT/$n.oci.tar"; done
      exit 0 ;;
    operator|agent|pause|busybox) images+=("$a") ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "images/build.sh: unknown argument $a (expected ${ALL[*]}, --print-refs)" >&2; exit 2 ;;
  esac
done
((${#images[@]})) || images=("${ALL[@]}")
wants() { [[ " ${images[*]} " == *" $1 "* ]]; }

BUSYBOX=/bin/busybox
missing=()
command -v buildah >/dev/null || missing+=("buildah (Debian: apt-get install buildah)")
command -v musl-gcc >/dev/null || missing+=("musl-gcc (Debian: apt-get install musl-tools)")
if wants operator || wants agent; then
  command -v cargo >/dev/null || missing+=("cargo (rustup)")
  if command -v rustup >/dev/null && ! (cd "$ROOT" && rustup target list --installed) | grep -qx "$TARGET"; then
    missing+=("the $TARGET Rust target (rustup target add $TARGET)")
  fi
fi
if wants busybox && ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed"; then
  missing+=("$BUSYBOX from Debian busybox-static (apt-get install busybox-static)")
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
    pause)
      log "musl-gcc -static -Os images/pause/pause.c"
      mkdir -p "$OUT/bin"
      musl-gcc -static -Os -s -Wall -Wextra -Werror -o "$OUT/bin/pause" "$ROOT/images/pause/pause.c"
      bin_path[pause]=$OUT/bin/pause ;;
    busybox) bin_path[busybox]=$BUSYBOX ;;
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

# busybox_rootfs CTX: the busybox image's root under CTX/rootfs: /bin/busybox, a relative /bin/<applet> symlink per
# applet it lists, the passwd/group entries `id`, `ps` and `ls -l` look up, and /tmp. Modes and owners are set
# here: COPY keeps them (and --timestamp 0 the times).
busybox_rootfs() {
  local r=$1/rootfs a
  rm -rf "$r" && mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root"
  install -m 0755 "$1/busybox" "$r/bin/busybox" && rm "$1/busybox"
  for a in $("$r/bin/busybox" --list); do
    [[ $a == busybox ]] || ln -s busybox "$r/bin/$a"
  done
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/home:/bin/false' >"$r/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$r/etc/group"
  chmod 0644 "$r/etc/passwd" "$r/etc/group" && chmod 1777 "$r/tmp" && chmod 0700 "$r/root"
  chown -R 0:0 "$r"
}

for img in "${images[@]}"; do
  ctx=$OUT/context/$img
  rm -rf "$ctx" && mkdir -p "$ctx"
  case $img in
    operator) bins=(macvtap-operator) ;;
    agent) bins=(macvtap-agent macvtap) ;;
    pause) bins=(pause) ;;
    busybox) bins=(busybox) ;;
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
  label_version=$VERSION
  case $img in
    pause) label_version=${PAUSE_REF##*:} ;;
    busybox)
      label_version=$(dpkg-query -W -f='${Version}' busybox-static)
      busybox_rootfs "$ctx" ;;
  esac
  archive=$OUT/$img.oci.tar
  log "buildah build $(ref "$img") -> $archive"
  rm -f "$archive.tmp"
  # --timestamp 0: reproducible layers and config (same binaries -> same digest); gzip layers (default is none).
  buildah_ build --isolation chroot --timestamp 0 --disable-compression=false --build-arg "VERSION=$label_version" \
    -f "$ROOT/images/$img/Containerfile" -t "oci-archive:$archive.tmp:$(ref "$img")" "$ctx" >&2
  mv "$archive.tmp" "$archive"
  log "$archive: $(du -h "$archive" | cut -f1)"
done
