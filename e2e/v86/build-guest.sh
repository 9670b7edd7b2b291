#!/usr/bin/env bash
# Builds the v86 test guest from Debian packages, reproducibly, into e2e/v86/cache/:
#   bios.bin, vgabios.bin   SeaBIOS (package seabios)
#   bzImage                 Debian's i386 686 kernel (linux-image-*-686)
#   initrd.gz               busybox-static:i386 + kernel modules for ne2k and virtio-net + /init
# Rebuilt only when the package versions, /init, udhcpc.script or this script change
# (cache/STAMP). Needs root for apt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="$here/cache"
mkdir -p "$cache"
export DEBIAN_FRONTEND=noninteractive

if ! dpkg --print-foreign-architectures | grep -qx i386; then
  dpkg --add-architecture i386
  apt-get update -qq || echo "warning: apt-get update reported errors (a mirror mid-sync?); using the package lists it did fetch" >&2
fi
for pkg in seabios cpio; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || { apt-get update -qq || true; apt-get install -y -qq --no-install-recommends "$pkg"; }
done
kernel_pkg=$(apt-cache depends linux-image-686 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kernel_pkg" ]; then
  apt-get update -qq || echo "warning: apt-get update reported errors (a mirror mid-sync?); using the package lists it did fetch" >&2
  kernel_pkg=$(apt-cache depends linux-image-686 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$kernel_pkg" ] || { echo "cannot find Debian's i386 686 kernel package (linux-image-686)" >&2; exit 1; }
kernel_ver=$(apt-cache policy "$kernel_pkg" | awk '/Candidate:/ {print $2}')
busybox_ver=$(apt-cache policy busybox-static:i386 | awk '/Candidate:/ {print $2}')
stamp="$kernel_pkg=$kernel_ver busybox-static:i386=$busybox_ver init=$(sha256sum "$here/init" "$here/udhcpc.script" "$here/build-guest.sh" | sha256sum | cut -c1-16)"
if [ -f "$cache/STAMP" ] && [ "$(cat "$cache/STAMP")" = "$stamp" ] && [ -f "$cache/initrd.gz" ]; then
  echo "v86 guest up to date ($stamp)"
  exit 0
fi

work=$(mktemp -d)
chmod 755 "$work" # apt-get download runs as _apt
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq "$kernel_pkg" "busybox-static:i386")
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
dpkg-deb -x "$work"/busybox-static_*.deb "$work/busybox"
kver=$(ls "$work/kernel/lib/modules")
cp "$work/kernel/boot/vmlinuz-$kver" "$cache/bzImage"
cp /usr/share/seabios/bios.bin "$cache/bios.bin"
cp /usr/share/seabios/vgabios-stdvga.bin "$cache/vgabios.bin"

root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,root,lib/modules}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in sh mount ip udhcpc ping wget sha256sum insmod cat echo sleep read poweroff ifconfig route halt mkdir ls dmesg sysctl timeout; do
  ln -sf busybox "$root/bin/$applet"
done
# Each NIC's driver with the modules it depends on (read from each module's own `depends=`, as
# the package has no modules.dep), copied uncompressed, and its load order (dependencies first)
# in lib/modules/NIC.order for /init. Stable kernel updates do change these dependencies.
mods="$work/kernel/lib/modules/$kver/kernel"
declare -A modfile
while IFS= read -r f; do
  name=$(basename "$f"); name=${name%.xz}; name=${name%.ko}
  modfile[${name//-/_}]=$f
done < <(find "$mods" -name '*.ko' -o -name '*.ko.xz')
module_bytes() { case "$1" in *.xz) xz -dc "$1" ;; *) cat "$1" ;; esac; }
order=()
visit() {
  local m=${1//-/_} d seen
  for seen in "${order[@]}"; do [ "$seen" = "$m" ] && return 0; done
  [ -n "${modfile[$m]:-}" ] || { echo "module $m not in $kernel_pkg (built in?)" >&2; return 0; }
  for d in $(module_bytes "${modfile[$m]}" | tr '\0' '\n' | grep -a '^depends=' | cut -d= -f2 | tr ',' ' '); do
    visit "$d"
  done
  order+=("$m")
}
for nic in ne2k:ne2k_pci virtio:virtio_net:virtio_pci; do
  order=()
  IFS=: read -r -a wanted <<<"$nic"
  for m in "${wanted[@]:1}"; do visit "$m"; done
  for m in "${order[@]}"; do
    module_bytes "${modfile[$m]}" > "$root/lib/modules/$m.ko"
  done
  printf '%s\n' "${order[@]}" > "$root/lib/modules/${wanted[0]}.order"
done
cp "$here/init" "$root/init"
cp "$here/udhcpc.script" "$root/etc/udhcpc.script"
chmod 755 "$root/init" "$root/etc/udhcpc.script"
# Reproducible archive: fixed times, sorted names, no gzip timestamp.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --reproducible --quiet) | gzip -9n > "$cache/initrd.gz"
echo "$stamp" > "$cache/STAMP"
echo "built v86 guest: $stamp"
