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
mods="$work/kernel/lib/modules/$kver/kernel"
for m in drivers/net/ethernet/8390/8390.ko drivers/net/ethernet/8390/ne2k-pci.ko \
         drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio_pci_modern_dev.ko \
         drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci.ko net/core/failover.ko \
         drivers/net/net_failover.ko drivers/net/virtio_net.ko; do
  if [ -f "$mods/$m" ]; then
    cp "$mods/$m" "$root/lib/modules/"
  elif [ -f "$mods/$m.xz" ]; then
    xz -dc "$mods/$m.xz" > "$root/lib/modules/$(basename "$m")"
  else
    echo "module $m not in $kernel_pkg (built in?)" >&2
  fi
done
cp "$here/init" "$root/init"
cp "$here/udhcpc.script" "$root/etc/udhcpc.script"
chmod 755 "$root/init" "$root/etc/udhcpc.script"
# Reproducible archive: fixed times, sorted names, no gzip timestamp.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --reproducible --quiet) | gzip -9n > "$cache/initrd.gz"
echo "$stamp" > "$cache/STAMP"
echo "built v86 guest: $stamp"
