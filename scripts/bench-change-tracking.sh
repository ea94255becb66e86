#!/usr/bin/env bash
# What change tracking since a reference point costs the write path:
# the 4 KiB random-write benchmark (`ckpt bench -w`, 50k allocating writes,
# stride 20 KiB, as `qemu-img bench -w`) on a VM disk
#   - untracked: the VM's base disk written directly (no checkpoint, no
#     reference point: nothing knows what changed);
#   - tracked:   the current state of a VM with a reference point (its
#     writes land in the differencing layer above the reference point's
#     anchor, whose BAT and sector bitmaps are the change record);
# then the same with overwrites of already-written blocks (a second pass).
# Alternated, RUNS pairs each, medians printed. Usage:
#   scripts/bench-change-tracking.sh [RUNS]   (default 5; needs a release build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ckpt=${CKPT:-$root/target/release/ckpt}
runs=${1:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
count=50000
args=(-w -c "$count" -S 20K -s 4K)

# seconds of one `ckpt bench` on FILE (wall time of the whole process)
timed() {
    local s e
    s=$(date +%s.%N)
    "$ckpt" bench "${args[@]}" "$1" >/dev/null
    e=$(date +%s.%N)
    echo "$e - $s" | bc
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

setup() { # DIR MODE: a VM in DIR; prints the file its current state writes
    local d=$1
    mkdir -p "$d"
    "$ckpt" create "$d/base.vhdx" --size 2G >/dev/null
    "$ckpt" vm create "$d/vm" --name b --disk "$d/base.vhdx" >/dev/null
    if [[ $2 == tracked ]]; then
        "$ckpt" checkpoint create "$d/vm" r >/dev/null
        "$ckpt" checkpoint reference "$d/vm" r >/dev/null
    fi
    "$ckpt" vm show "$d/vm" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["disks"][0]["path"])'
}

declare -A first second
for i in $(seq "$runs"); do
    for mode in untracked tracked; do
        rm -rf "$work/$mode"
        f=$(setup "$work/$mode" "$mode")
        first[$mode]+="$(timed "$f") "
        second[$mode]+="$(timed "$f") "
    done
done
echo "machine: $(nproc) cores, $(uname -r), $($ckpt --version 2>/dev/null || echo ckpt)"
echo "workload: ckpt bench ${args[*]} ($runs alternated runs, medians, whole-process wall time)"
for pass in first second; do
    declare -n p=$pass
    u=$(tr ' ' '\n' <<<"${p[untracked]}" | grep . | median)
    t=$(tr ' ' '\n' <<<"${p[tracked]}" | grep . | median)
    label=$([[ $pass == first ]] && echo "allocating writes" || echo "overwrites")
    printf '%-18s untracked %6.3f s  tracked %6.3f s  cost %+.1f%%\n' "$label" "$u" "$t" \
        "$(echo "($t - $u) * 100 / $u" | bc -l)"
done
