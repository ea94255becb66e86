#!/bin/sh
# Build a tiny Linux guest for the QEMU end-to-end tests:
#
#   examples/qemu/build-guest.sh OUTDIR   # -> OUTDIR/vmlinuz, OUTDIR/initrd.img
#
# Needs (Debian/Ubuntu host): apt-get (with package lists), dpkg-deb,
# gzip, ldd; xz or zstd for a kernel with compressed modules. cpio and
# depmod are the downloaded busybox's. Nothing is installed on the host:
# Debian's kernel (linux-image-<abi>-amd64, from linux-image-amd64's
# Depends), busybox-static and qemu-guest-agent are fetched with
# `apt-get download` into OUTDIR/debs and unpacked with `dpkg-deb -x`.
# qemu-ga's shared libraries come from the host (what ldd finds); libraries
# the host lacks come from the debs of qemu-guest-agent's dependencies.
#
# The initramfs (cpio newc, gzip) holds busybox and its applet links,
# virtio_pci, virtio_blk, virtio_console, ext4 (with their modules.dep
# dependencies), qemu-ga with its libraries, and /init, which mounts
# proc/sys/devtmpfs, loads the modules, mounts /dev/vda (ext4) on /mnt when
# present, starts qemu-ga on the virtio-serial port org.qemu.guest_agent.0
# unless the kernel command line has ckpt.agent=0, prints CKPT-GUEST-READY
# and runs /bin/sh on ttyS0 forever. `poweroff -f` stops the VM.
#
# Idempotent: does nothing when both outputs exist and are newer than this
# script.
set -eu

out=${1:?usage: build-guest.sh OUTDIR}
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
if [ "$out/vmlinuz" -nt "$self" ] && [ "$out/initrd.img" -nt "$self" ]; then
    exit 0
fi
mkdir -p "$out/debs"
out=$(cd "$out" && pwd)
debs=$out/debs
work=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# download PACKAGE...: fetch the debs into $debs (once) and unpack them into
# $work/x (the unpacked tree of everything downloaded).
download() {
    for pkg in "$@"; do
        if ! ls "$debs/${pkg}_"*.deb >/dev/null 2>&1; then
            # Stale package lists name versions the mirror no longer has.
            (cd "$debs" && { apt-get download "$pkg" ||
                { apt-get update -qq && apt-get download "$pkg"; }; })
        fi
        for deb in "$debs/${pkg}_"*.deb; do
            dpkg-deb -x "$deb" "$work/x"
        done
    done
}

# The kernel package the metapackage points at (linux-image-6.1.0-NN-amd64).
kpkg=$(apt-cache depends linux-image-amd64 |
    sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)
[ -n "$kpkg" ] || { echo "build-guest.sh: no kernel in linux-image-amd64's Depends" >&2; exit 1; }
download "$kpkg" busybox-static qemu-guest-agent
kver=$(ls "$work/x/lib/modules")
root=$work/root
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" \
    "$root/proc" "$root/sys" "$root/dev" "$root/mnt" "$root/run" "$root/tmp" "$root/etc"

# busybox and its applet links.
cp "$work/x/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done

# The modules and their dependencies, in load order (dependencies first).
# The package has no modules.dep (depmod runs at install): busybox's depmod
# makes it, after compressed modules (.ko.xz, .ko.zst; newer kernels) are
# decompressed, since busybox's depmod and insmod read plain .ko files.
moddir=$work/x/lib/modules/$kver
find "$moddir" -name '*.ko.xz' -exec xz -d {} +
find "$moddir" -name '*.ko.zst' -exec zstd -q -d --rm {} +
"$root/bin/busybox" depmod -b "$work/x" "$kver"
: >"$work/modules"
for name in virtio_pci virtio_blk virtio_console crc32c_generic ext4; do
    line=$(grep -E "/${name}\.ko:" "$moddir/modules.dep" || true)
    if [ -z "$line" ]; then
        grep -qE "/${name}\.ko" "$moddir/modules.builtin" ||
            { echo "build-guest.sh: module $name not found in $kpkg" >&2; exit 1; }
        continue
    fi
    # modules.dep: "mod: dep1 dep2 ..."; the last dependency loads first.
    for m in $(echo "$line" | tr -d ':' | awk '{for (i = NF; i > 1; i--) print $i; print $1}'); do
        grep -qxF "$m" "$work/modules" || echo "$m" >>"$work/modules"
    done
done
mkdir -p "$root/lib/modules"
while read -r m; do
    cp "$moddir/$m" "$root/lib/modules/"
    basename "$m" >>"$root/lib/modules/order"
done <"$work/modules"

# qemu-ga and its libraries: from the host, else from the debs of the
# agent's dependencies the host lacks.
cp "$work/x/usr/sbin/qemu-ga" "$root/usr/sbin/qemu-ga"
if ldd "$root/usr/sbin/qemu-ga" | grep -q 'not found'; then
    for pkg in $(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances qemu-guest-agent | grep -v '^ \|<' | sort -u); do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q 'ok installed' || download "$pkg"
    done
fi
libpath=$work/x/lib/x86_64-linux-gnu:$work/x/usr/lib/x86_64-linux-gnu
libs=$(LD_LIBRARY_PATH=$libpath ldd "$root/usr/sbin/qemu-ga" |
    awk '/not found/ {print "MISSING:" $1; next} /=>/ {print $3; next} /^\t\// {print $1}')
for lib in $libs; do
    case $lib in MISSING:*) echo "build-guest.sh: qemu-ga needs ${lib#MISSING:}, not found" >&2; exit 1 ;; esac
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    # A library from the debs is installed under its path without $work/x.
    case $lib in "$work/x"/*)
        mkdir -p "$root$(dirname "${lib#"$work/x"}")"
        mv "$root$lib" "$root${lib#"$work/x"}"
        ;;
    esac
done
rm -rf "${root:?}$work"

cat >"$root/init" <<'INIT'
#!/bin/sh
# The guest's PID 1: see examples/qemu/build-guest.sh.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "/lib/modules/$m"; done </lib/modules/order
# Devices appear asynchronously once their drivers load.
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -e /dev/vda ] && break; sleep 0.1; done
[ -b /dev/vda ] && mount -t ext4 /dev/vda /mnt
if ! grep -qw ckpt.agent=0 /proc/cmdline; then
    for p in /sys/class/virtio-ports/*; do
        if [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
            qemu-ga -m virtio-serial -p "/dev/${p##*/}" -t /run -f /run/qemu-ga.pid &
        fi
    done
fi
echo CKPT-GUEST-READY
while true; do setsid -c /bin/sh </dev/ttyS0 >/dev/ttyS0 2>&1; done
INIT
chmod 755 "$root/init"

cp "$work/x/boot/vmlinuz-$kver" "$work/vmlinuz"
(cd "$root" && find . | "$root/bin/busybox" cpio -o -H newc | gzip -9) >"$work/initrd.img"
mv "$work/vmlinuz" "$out/vmlinuz"
mv "$work/initrd.img" "$out/initrd.img"
