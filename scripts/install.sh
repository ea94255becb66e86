#!/bin/sh
# Install the C library: libckpt.so (with its soname links), libckpt.a,
# libckpt.h and a pkg-config file libckpt.pc.
#
#   scripts/install.sh [options]
#
# Options (each also as an environment variable: PREFIX, LIBDIR, ...):
#   --prefix DIR      install under DIR (default /usr/local)
#   --libdir DIR      libraries and pkgconfig/ (default PREFIX/lib)
#   --includedir DIR  the header (default PREFIX/include)
#   --destdir DIR     stage into DIR (packaging): files go to DIR/PREFIX/...,
#                     libckpt.pc still says PREFIX
#   --from DIR        install the libraries found in DIR (a cargo profile
#                     directory such as target/debug) and build nothing;
#                     default: run `cargo build --release --lib` and use
#                     target/release
#
# Afterwards a C program builds with
#   cc prog.c $(pkg-config --cflags --libs libckpt)                  # shared
#   cc prog.c $(pkg-config --cflags libckpt) LIBDIR/libckpt.a -lpthread -ldl -lm   # static
# (set PKG_CONFIG_PATH=LIBDIR/pkgconfig when LIBDIR is not searched by
# default, and run `ldconfig` after a system-wide install).
set -eu

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

PREFIX=${PREFIX:-/usr/local}
LIBDIR=${LIBDIR:-}
INCLUDEDIR=${INCLUDEDIR:-}
DESTDIR=${DESTDIR:-}
FROM=${FROM:-}
while [ $# -gt 0 ]; do
    case $1 in
    --prefix) PREFIX=$2; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --libdir) LIBDIR=$2; shift 2 ;;
    --libdir=*) LIBDIR=${1#*=}; shift ;;
    --includedir) INCLUDEDIR=$2; shift 2 ;;
    --includedir=*) INCLUDEDIR=${1#*=}; shift ;;
    --destdir) DESTDIR=$2; shift 2 ;;
    --destdir=*) DESTDIR=${1#*=}; shift ;;
    --from) FROM=$2; shift 2 ;;
    --from=*) FROM=${1#*=}; shift ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown option $1" >&2; usage ;;
    esac
done
LIBDIR=${LIBDIR:-$PREFIX/lib}
INCLUDEDIR=${INCLUDEDIR:-$PREFIX/include}

root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$FROM" ]; then
    (cd "$root" && cargo build --release --lib)
    FROM=$root/target/release
fi

# The version and the ABI version (the soname suffix) from the header, which
# build.rs generates from Cargo.toml: before 1.0 every minor version is a
# new ABI (libckpt.so.0.MINOR), from 1.0 on every major (libckpt.so.MAJOR).
header=$root/include/libckpt.h
major=$(sed -n 's/^#define CKPT_VERSION_MAJOR \([0-9]*\)$/\1/p' "$header")
minor=$(sed -n 's/^#define CKPT_VERSION_MINOR \([0-9]*\)$/\1/p' "$header")
patch=$(sed -n 's/^#define CKPT_VERSION_PATCH \([0-9]*\)$/\1/p' "$header")
if [ -z "$major" ] || [ -z "$minor" ] || [ -z "$patch" ]; then
    echo "install.sh: no CKPT_VERSION_* in $header" >&2
    exit 1
fi
version=$major.$minor.$patch
if [ "$major" = 0 ]; then abi=0.$minor; else abi=$major; fi

for f in libckpt.a libckpt.so; do
    if [ ! -f "$FROM/$f" ]; then
        echo "install.sh: $FROM/$f not found (build with cargo build --lib)" >&2
        exit 1
    fi
done

lib=$DESTDIR$LIBDIR
inc=$DESTDIR$INCLUDEDIR
mkdir -p "$lib/pkgconfig" "$inc"
install -m 0644 "$header" "$inc/libckpt.h"
install -m 0644 "$FROM/libckpt.a" "$lib/libckpt.a"
install -m 0755 "$FROM/libckpt.so" "$lib/libckpt.so.$version"
ln -sf "libckpt.so.$version" "$lib/libckpt.so.$abi"
ln -sf "libckpt.so.$abi" "$lib/libckpt.so"
sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@LIBDIR@|$LIBDIR|g" \
    -e "s|@INCLUDEDIR@|$INCLUDEDIR|g" -e "s|@VERSION@|$version|g" \
    "$root/libckpt.pc.in" >"$lib/pkgconfig/libckpt.pc"
chmod 0644 "$lib/pkgconfig/libckpt.pc"

echo "installed libckpt $version:"
echo "  $inc/libckpt.h"
echo "  $lib/libckpt.a"
echo "  $lib/libckpt.so.$version (+ libckpt.so.$abi, libckpt.so)"
echo "  $lib/pkgconfig/libckpt.pc"
