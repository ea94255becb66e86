#!/usr/bin/env bash
# A throw-away single-node Ceph cluster for the RBD tests.
#
#   scripts/ceph-test-cluster.sh start DIR   # prints the client environment
#   scripts/ceph-test-cluster.sh stop DIR    # stops the daemons by pid
#
# One monitor and one OSD (objectstore = memstore, so nothing but the
# monitor's store touches the disk), bound to 127.0.0.1 on a free port
# chosen here and written into the monmap with monmaptool. Pool size 1,
# no mgr, cephx with an admin keyring in DIR. `start` waits until an
# `rbd create` + `rbd rm` in the test pool succeed (bounded), then prints
#
#   export CEPH_CONF=DIR/ceph.conf
#   export CEPH_ARGS='--id admin'
#   export CKPT_CEPH_CONF=DIR/ceph.conf
#   export CKPT_CEPH_POOL=ckpt
#
# on stdout (everything else goes to stderr), for `eval "$(... start DIR)"`.
# With CKPT_CEPH_WATCH_PID set, a watcher stops the cluster and removes
# DIR once that process has ended (a test binary's own cluster).
# Needs Debian's ceph-mon, ceph-osd and ceph-common.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}
(($# == 2)) || usage
cmd=$1
dir=$2
pool=${CKPT_CEPH_POOL:-ckpt}

# Stop the daemons whose pid files are in DIR (the OSD first), waiting
# a bounded time for each to exit.
stop() {
    local name pidfile pid i
    for name in osd.0 mon.a; do
        pidfile="$dir/run/$name.pid"
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for ((i = 0; i < 100; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

case $cmd in
stop)
    stop
    exit 0
    ;;
start) ;;
*) usage ;;
esac

for tool in ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd uuidgen; do
    command -v "$tool" >/dev/null || {
        echo "$0: $tool is missing (apt-get install --no-install-recommends ceph-mon ceph-osd ceph-common)" >&2
        exit 1
    }
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [[ -e $dir/ceph.conf ]]; then
    echo "$0: $dir already holds a cluster (stop it and use a fresh folder)" >&2
    exit 1
fi
mkdir -p "$dir/run" "$dir/log" "$dir/mon.a" "$dir/osd.0"

# A free TCP port on 127.0.0.1 (bind to port 0 and read it back).
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fsid=$(uuidgen)
osd_uuid=$(uuidgen)

cat >"$dir/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port]
public addr = 127.0.0.1
public network = 127.0.0.0/8
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
keyring = $dir/client.admin.keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
mon warn on insecure global id reclaim allowed = false
mon health preluminous compat warning = false
paxos propose interval = 0.1
ms bind msgr1 = false

[mon]
mon data = $dir/mon.\$id
mon initial members = a
keyring = $dir/mon.\$id/keyring

[osd]
osd objectstore = memstore
memstore device bytes = 1073741824
osd data = $dir/osd.\$id
keyring = $dir/osd.\$id/keyring
osd max object name len = 256
osd max object namespace len = 64
EOF

conf=(-c "$dir/ceph.conf")

# Keys: the monitor's, the admin's (allowed everything), the OSD's.
ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$dir/client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/client.admin.keyring" >/dev/null

monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null
ceph-mon "${conf[@]}" -i a --mkfs --monmap "$dir/monmap" --keyring "$dir/mon.keyring"
ceph-mon "${conf[@]}" -i a

# Stop what was started if anything below fails.
trap 'stop' ERR

osd_key=$(ceph-authtool --gen-print-key)
ceph-authtool --create-keyring "$dir/osd.0/keyring" --name osd.0 --add-key "$osd_key" >/dev/null
echo "{\"cephx_secret\": \"$osd_key\"}" >"$dir/osd.0/secret.json"
timeout 30 ceph "${conf[@]}" --connect-timeout 20 osd new "$osd_uuid" -i "$dir/osd.0/secret.json" >/dev/null
ceph-osd "${conf[@]}" -i 0 --mkfs --osd-uuid "$osd_uuid" 2>>"$dir/log/osd.0.mkfs.log"
ceph-osd "${conf[@]}" -i 0

timeout 30 ceph "${conf[@]}" osd pool create "$pool" 8 8 >/dev/null 2>&1
timeout 30 ceph "${conf[@]}" osd pool application enable "$pool" rbd >/dev/null 2>&1

# Ready when an image can be created and removed (not HEALTH_OK: without
# a mgr the cluster never reports it).
ready=0
for ((i = 0; i < 60; i++)); do
    if timeout 10 rbd "${conf[@]}" create "$pool/ckpt-probe" --size 1M 2>/dev/null &&
        timeout 10 rbd "${conf[@]}" rm "$pool/ckpt-probe" >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.5
done
if ((!ready)); then
    echo "$0: the cluster in $dir did not accept rbd commands in time; logs in $dir/log" >&2
    stop
    exit 1
fi

if [[ -n ${CKPT_CEPH_WATCH_PID:-} ]]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" stop "$3"; rm -rf "$3"' \
        watcher "$CKPT_CEPH_WATCH_PID" "$0" "$dir" </dev/null >/dev/null 2>&1 &
fi

echo "ceph test cluster up: mon on 127.0.0.1:$port, pool $pool, in $dir" >&2
cat <<EOF
export CEPH_CONF=$dir/ceph.conf
export CEPH_ARGS='--id admin'
export CKPT_CEPH_CONF=$dir/ceph.conf
export CKPT_CEPH_POOL=$pool
EOF
