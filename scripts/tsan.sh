#!/bin/sh
# Run the concurrency stress test (tests/stress.rs) under ThreadSanitizer.
# Needs the nightly toolchain with rust-src:
#   rustup toolchain install nightly && rustup component add rust-src --toolchain nightly
# The standard library is rebuilt with the sanitizer (-Zbuild-std), in a
# target directory of its own (target/tsan), so the first run takes minutes.
set -eu
cd "$(dirname "$0")/.."
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Zsanitizer=thread -Cdebug-assertions=off"
export RUSTDOCFLAGS="-Zsanitizer=thread"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1}"
exec cargo +nightly test -Zbuild-std --target "$host" --target-dir target/tsan \
    --release --no-default-features --test stress "$@"
