#!/usr/bin/env bash
# Builds the container images of this project into OCI archives, without a daemon or a registry:
# `buildah build` of images/<name>/Containerfile (FROM scratch) with static binaries in the build context.
#
#   images/build.sh                 # build all four images of the cluster
#   images/build.sh pause busybox   # only these (operator | agent | pause | busybox | vm); pause and busybox need no cargo
#   images/build.sh vm              # the VM pod image (not built by default: `make images` builds it as well)
#   images/build.sh --print-refs    # print "<name> <image ref> <archive path>" for all four and exit (builds nothing);
#                                   # with names (`--print-refs vm`) for those only
#
# The images:
#   operator  ghcr.io/macvtap-operator/macvtap-operator:<chart appVersion>  static musl release build (cargo)
#   agent     ghcr.io/macvtap-operator/macvtap-agent:<chart appVersion>     agent + `macvtap` CNI (cargo)
#   pause     registry.k8s.io/pause:3.10      the CRI sandbox image: images/pause/pause.c, musl-gcc -static -Os;
#                                             each node's containerd must pin it as its sandbox image
#                                             (`pinned_images.sandbox`)
#   busybox   docker.io/library/busybox:latest  Debian busybox-static + /bin/<applet> links: what test pods'
#                                             `image: busybox` resolves to
#   vm        ghcr.io/macvtap-operator/macvtap-vm:<chart appVersion>  a VM pod as KubeVirt runs one: our
#                                             vm-launcher (static musl), Debian's qemu-system-x86_64 with the shared
#                                             libraries ldd names and the firmware a -kernel boot loads, a Debian cloud
#                                             kernel (apt-get download into the cache, dpkg-deb -x, never installed)
#                                             and a busybox initramfs with its virtio-net modules (images/vm/init)
#
# Output: $MACVTAP_IMAGES_DIR (default <repo>/target/images)/<name>.oci.tar, each an OCI image layout archive whose
# index names the image ref: exactly what the chart's default values (or a pod spec) point at. Load into a node's
# containerd with `ctr -n k8s.io images import <archive>`, or copy to a registry with
# `skopeo copy oci-archive:<archive> docker://<registry>/<repository>:<tag>` (e2e/src/registry.rs does that).
# Reproducible: layers and config carry timestamp 0, so the same inputs give the same digests (the VM image aside:
# its initramfs's cpio carries inode numbers).
#
# Needs (installs nothing; fails naming what is missing): buildah; musl-gcc (Debian musl-tools: ring's C code, and
# pause.c); for operator/agent/vm cargo with the x86_64-unknown-linux-musl target; for busybox and vm Debian
# busybox-static; for vm Debian qemu-system-x86 and apt-get/dpkg-deb (the guest kernel is fetched once into
# ${XDG_CACHE_HOME:-~/.cache}/macvtap-operator/vm).
# IMAGE_REGISTRY overrides ghcr.io/macvtap-operator (operator, agent and vm).
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
# Built on request only: the cluster does not need it and it is the largest (QEMU, a kernel).
OPTIONAL=(vm)

ref() {
  case $1 in
    pause) echo "$PAUSE_REF" ;;
    busybox) echo "$BUSYBOX_REF" ;;
    *) echo "$REGISTRY/macvtap-$1:$VERSION" ;;
  esac
}

images=()
print_refs=false
for a in "$@"; do
  case $a in
    --print-refs) print_refs=true ;;
    operator|agent|pause|busybox|vm) images+=("$a") ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "images/build.sh: unknown argument $a (expected ${ALL[*]} ${OPTIONAL[*]}, --print-refs)" >&2; exit 2 ;;
  esac
done
((${#images[@]})) || images=("${ALL[@]}")
if $print_refs; then
  for n in "${images[@]}"; do echo "$n $(ref "$n") $OUT/$n.oci.tar"; done
  exit 0
fi
wants() { [[ " ${images[*]} " == *" $1 "* ]]; }

BUSYBOX=/bin/busybox
missing=()
command -v buildah >/dev/null || missing+=("buildah (Debian: apt-get install buildah)")
command -v musl-gcc >/dev/null || missing+=("musl-gcc (Debian: apt-get install musl-tools)")
if wants operator || wants agent || wants vm; then
  command -v cargo >/dev/null || missing+=("cargo (rustup)")
  if command -v rustup >/dev/null && ! (cd "$ROOT" && rustup target list --installed) | grep -qx "$TARGET"; then
    missing+=("the $TARGET Rust target (rustup target add $TARGET)")
  fi
fi
if (wants busybox || wants vm) && ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed"; then
  missing+=("$BUSYBOX from Debian busybox-static (apt-get install busybox-static)")
fi
QEMU=/usr/bin/qemu-system-x86_64
if wants vm; then
  dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$QEMU from Debian qemu-system-x86 (apt-get install --no-install-recommends qemu-system-x86)")
  for t in apt-get apt-cache dpkg-deb ldd gzip; do command -v $t >/dev/null || missing+=("$t"); done
fi
if ((${#missing[@]})); then
  printf 'images/build.sh: missing: %s\n' "${missing[@]}" >&2
  exit 1
fi

log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Static binaries: the musl target links statically by default; ring's C/asm goes through musl-gcc.
export CC_x86_64_unknown_linux_musl=musl-gcc
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# Run from a test, this script inherits what cargo sets for the crate under test (CARGO_MANIFEST_DIR, ...). ring's
# build script reruns when CARGO_MANIFEST_DIR changes, so every switch between a test's build and `make images` would
# rebuild the release binaries from ring up. The build gets a shell's environment instead.
for v in $(compgen -e); do
  case $v in
    CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_NAME | CARGO_BIN_NAME | CARGO_PRIMARY_PACKAGE | CARGO_TARGET_TMPDIR | \
      CARGO_RUSTC_CURRENT_DIR | OUT_DIR) unset "$v" ;;
  esac
done
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
    vm)
      log "cargo build vm-launcher (release, $TARGET)"
      cargo_build --release -p vm-launcher --bin vm-launcher
      bin_path[vm-launcher]=$TARGET_DIR/$TARGET/release/vm-launcher ;;
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

# guest_kernel DIR: the Debian cloud kernel package linux-image-cloud-amd64 resolves to (the name moves with point
# releases), downloaded once into the cache and unpacked there with dpkg-deb -x (not installed). Prints the
# unpacked root.
guest_kernel() {
  local cache=${XDG_CACHE_HOME:-$HOME/.cache}/macvtap-operator/vm pkg deb
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1)
  [[ -n $pkg ]] || { echo "images/build.sh: apt-cache resolves no linux-image-cloud-amd64 (apt-get update?)" >&2; return 1; }
  mkdir -p "$cache"
  deb=$(ls "$cache/${pkg}"_*.deb 2>/dev/null | head -1 || true)
  if [[ -z $deb ]]; then
    log "apt-get download $pkg -> $cache"
    # apt's _apt sandbox user cannot write a root-owned cache: it warns and downloads as root.
    (cd "$cache" && apt-get download -q "$pkg" 2>&1 | grep -v 'unsandboxed' >&2 || true)
    deb=$(ls "$cache/${pkg}"_*.deb 2>/dev/null | head -1 || true)
    [[ -n $deb ]] || { echo "images/build.sh: apt-get download $pkg failed" >&2; return 1; }
  fi
  if [[ ! -d $cache/$pkg/boot ]]; then
    rm -rf "$cache/$pkg.tmp" && dpkg-deb -x "$deb" "$cache/$pkg.tmp" && mv "$cache/$pkg.tmp" "$cache/$pkg"
  fi
  echo "$cache/$pkg"
}

# copy_with_libs ROOTFS FILE...: FILE at its own path under ROOTFS, and every shared library ldd names for it at the
# path ldd names (symlinks resolved: the image holds plain files), each with its own mode (the dynamic loader must
# stay executable).
copy_with_libs() {
  local r=$1 f lib real
  shift
  for f in "$@"; do
    install -D -m 0755 "$f" "$r$f"
    for lib in $(ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      real=$(readlink -f "$lib")
      [[ -e $r$lib ]] || install -D -m "$(stat -c %a "$real")" "$real" "$r$lib"
    done
  done
}

# vm_rootfs CTX: the VM pod image's root under CTX/rootfs (see the Containerfile for what runs there).
vm_rootfs() {
  local r=$1/rootfs kernel modules m version init_dir
  rm -rf "$r" && mkdir -p "$r/usr/bin" "$r/vm" "$r/tmp"
  install -m 0755 "$1/vm-launcher" "$r/usr/bin/vm-launcher" && rm "$1/vm-launcher"
  # QEMU, the TCG accelerator (Debian builds it as a loadable module) and the firmware a -nodefaults -kernel boot
  # opens (strace): SeaBIOS, the linuxboot option ROM, and kvmvapic.bin. The NIC's iPXE ROM is not needed: the
  # launcher passes romfile= (empty).
  copy_with_libs "$r" "$QEMU" /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so
  chmod 0644 "$r/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so"
  for f in /usr/share/seabios/bios-256k.bin /usr/share/qemu/linuxboot_dma.bin /usr/share/qemu/kvmvapic.bin; do
    install -D -m 0644 "$(readlink -f "$f")" "$r$f"
  done
  # The guest: the cloud kernel, and an initramfs of busybox, the virtio-net modules and our /init.
  kernel=$(guest_kernel)
  version=$(ls "$kernel/lib/modules")
  install -m 0644 "$kernel/boot/vmlinuz-$version" "$r/vm/vmlinuz"
  init_dir=$1/initramfs
  rm -rf "$init_dir" && mkdir -p "$init_dir/bin" "$init_dir/lib/modules" "$init_dir/proc" "$init_dir/sys" "$init_dir/dev"
  install -m 0755 "$BUSYBOX" "$init_dir/bin/busybox"
  install -m 0755 "$ROOT/images/vm/init" "$init_dir/init"
  modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net)
  for m in "${modules[@]}"; do
    local ko
    ko=$(find "$kernel/lib/modules/$version" -name "$m.ko*" | head -1)
    [[ -n $ko ]] || { echo "images/build.sh: the guest kernel has no $m module" >&2; return 1; }
    # Debian 12 ships them uncompressed; a later kernel's .ko.xz is unpacked here (busybox insmod reads plain .ko).
    case $ko in
      *.ko) install -m 0644 "$ko" "$init_dir/lib/modules/$m.ko" ;;
      *.ko.xz) xz -dc "$ko" >"$init_dir/lib/modules/$m.ko" ;;
      *.ko.zst) zstd -dc "$ko" >"$init_dir/lib/modules/$m.ko" ;;
      *) echo "images/build.sh: $ko: unknown module compression" >&2; return 1 ;;
    esac
  done
  # Reproducible: sorted names, owner root, mtime 0, gzip without a name or time.
  find "$init_dir" -exec touch -h -d @0 {} +
  (cd "$init_dir" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null | gzip -9n) \
    >"$r/vm/initramfs.cpio.gz"
  chmod 0644 "$r/vm/initramfs.cpio.gz"
  echo "$version" >"$r/vm/kernel-version"
  chmod 1777 "$r/tmp"
  chown -R 0:0 "$r"
  # The collected QEMU must start on its own in that root (a missing library would only show in the pod).
  chroot "$r" /usr/bin/qemu-system-x86_64 --version >/dev/null ||
    { echo "images/build.sh: qemu-system-x86_64 does not start in the VM image's root" >&2; return 1; }
}

for img in "${images[@]}"; do
  ctx=$OUT/context/$img
  rm -rf "$ctx" && mkdir -p "$ctx"
  case $img in
    operator) bins=(macvtap-operator) ;;
    agent) bins=(macvtap-agent macvtap) ;;
    pause) bins=(pause) ;;
    busybox) bins=(busybox) ;;
    vm) bins=(vm-launcher) ;;
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
    vm) vm_rootfs "$ctx" ;;
  esac
  archive=$OUT/$img.oci.tar
  # The same inputs make an equivalent archive: skip buildah when the inputs (ref, label, Containerfile, the whole
  # context with modes and owners) are those of the archive already there. `make sandbox` after `make test` builds
  # nothing again. The VM's initramfs archive is left out of the sum: busybox cpio writes inode numbers, so it differs
  # on every build; the tree it is made of (context/initramfs) is summed.
  inputs=$({ echo "$(ref "$img") $label_version"; cat "$ROOT/images/$img/Containerfile"
    tar --sort=name --mtime=@0 --numeric-owner --exclude=./rootfs/vm/initramfs.cpio.gz -cf - -C "$ctx" .; } |
    sha256sum | cut -d' ' -f1)
  if [[ -f $archive && $(cat "$archive.inputs" 2>/dev/null) == "$inputs" ]]; then
    log "$archive: up to date (same inputs)"
    continue
  fi
  log "buildah build $(ref "$img") -> $archive"
  rm -f "$archive.tmp" "$archive.inputs"
  # --timestamp 0: reproducible layers and config (same binaries -> same digest); gzip layers (default is none).
  buildah_ build --isolation chroot --timestamp 0 --disable-compression=false --build-arg "VERSION=$label_version" \
    -f "$ROOT/images/$img/Containerfile" -t "oci-archive:$archive.tmp:$(ref "$img")" "$ctx" >&2
  mv "$archive.tmp" "$archive"
  echo "$inputs" >"$archive.inputs"
  log "$archive: $(du -h "$archive" | cut -f1)"
done
