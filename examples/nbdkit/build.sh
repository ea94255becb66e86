#!/bin/sh
# Build the nbdkit plugin examples/nbdkit/nbdkit-ckpt-plugin.c against
# include/libckpt.h and the static libckpt.a (run `cargo build --release`
# first):
#
#   examples/nbdkit/build.sh
#   nbdkit target/release/nbdkit-ckpt-plugin.so file=DISK.avhdx
#   nbdkit target/release/nbdkit-ckpt-plugin.so vm=VMDIR
#
# Environment (all optional):
#   LIBCKPT_A  the static library (default: target/release/libckpt.a)
#   OUT        the plugin to write (default: next to LIBCKPT_A,
#              nbdkit-ckpt-plugin.so)
#   CC         the C compiler (default: cc)
#   CFLAGS     extra compiler flags (appended)
#
# The plugin is compiled with -std=c11 -Wall -Wextra -Werror -pedantic.
# libckpt.a goes into the plugin whole; -Wl,--exclude-libs,ALL keeps its
# symbols (and Rust's) out of the plugin's dynamic symbol table, so the
# plugin exports only plugin_init. nbdkit_* symbols come from nbdkit itself
# when it loads the plugin. Needs nbdkit-plugin.h (Debian/Ubuntu:
# nbdkit-plugin-dev).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
lib=${LIBCKPT_A:-$root/target/release/libckpt.a}
out=${OUT:-$(dirname "$lib")/nbdkit-ckpt-plugin.so}
cc=${CC:-cc}

if [ ! -f "$lib" ]; then
    echo "build.sh: $lib not found; run 'cargo build --release' first" >&2
    exit 1
fi

# shellcheck disable=SC2086 # CFLAGS is a list of flags
"$cc" -std=c11 -Wall -Wextra -Werror -pedantic -O2 -g -fPIC -shared \
    -I "$root/include" \
    -o "$out" \
    "$here/nbdkit-ckpt-plugin.c" \
    "$lib" \
    -Wl,--exclude-libs,ALL -Wl,--gc-sections -Wl,--as-needed \
    -lpthread -ldl -lm ${CFLAGS:-}

echo "$out"
