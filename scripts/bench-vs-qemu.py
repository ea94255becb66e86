#!/usr/bin/env python3
"""Side-by-side performance harness of libckpt against QEMU (issue 13).

Builds every workload in a scratch directory, runs libckpt's side and the
other side alternately (A B, B A, A B, ...; the order flips every round)
--runs times, times each whole process with time.perf_counter around
subprocess.run, and prints a Markdown table of the medians with the ratio
libckpt / other (lower is better) next to the goal of issue 13.

    cargo build --release            # optional: the script builds what it needs
    scripts/bench-vs-qemu.py                 # every workload, 5 runs each
    scripts/bench-vs-qemu.py --quick --runs 1    # smoke test (well under 60 s)
    scripts/bench-vs-qemu.py --only read,merge --json timings.json

Every input a write run changes is re-created (or copied fresh) before each
run, untimed, so that both sides start from the same state. Nothing the user
would wait for is left out of a timed run: a side that syncs at exit is
timed with its sync. The page cache is not dropped (the inputs are warm for
both sides). Standard library only.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40

# A stride that is a prime number of 4 KiB pages: with qemu-img bench's
# wrap-around (offset modulo the disk size) it visits 4 KiB-aligned offsets
# in a scattered order ("random-ish" reads).
RANDOMISH_STEP = 1013 * 4 * KIB

WORKLOADS = [
    "read", "alloc-write", "import", "export", "merge", "chain16",
    "nbd-read", "nbd-write", "nbd-convert", "threads", "rss-64t", "create",
]


class Fail(Exception):
    pass


def die(msg):
    print(f"bench-vs-qemu: error: {msg}", file=sys.stderr)
    sys.exit(1)


def show(cmd):
    return " ".join(str(c) for c in cmd)


def run(cmd, input=None, cwd=None, capture=True):
    """Run cmd (untimed preparation); abort naming it when it fails."""
    try:
        p = subprocess.run([str(c) for c in cmd], input=input, cwd=cwd,
                           stdout=subprocess.PIPE if capture else None,
                           stderr=subprocess.PIPE, stdin=None if input is not None else subprocess.DEVNULL)
    except OSError as e:
        raise Fail(f"cannot run `{show(cmd)}`: {e}")
    if p.returncode != 0:
        err = (p.stderr or b"").decode(errors="replace").strip()
        raise Fail(f"`{show(cmd)}` exited with status {p.returncode}: {err}")
    return (p.stdout or b"").decode(errors="replace")


GNU_TIME = "/usr/bin/time"


def timed(cmd, cwd=None, exact_rss=False):
    """Run cmd, return (wall seconds, peak RSS KiB of that child).

    A child's ru_maxrss includes the memory of the process it was forked
    from until its exec (this harness: ~30 MiB of Python), so with
    `exact_rss` the command runs under GNU time (a small C process that
    forks it) and its own peak is read from time's report."""
    args = [str(c) for c in cmd]
    rss_file = None
    if exact_rss and os.access(GNU_TIME, os.X_OK):
        rss_file = tempfile.NamedTemporaryFile(delete=False)
        rss_file.close()
        args = [GNU_TIME, "-f", "%M", "-o", rss_file.name] + args
    with tempfile.TemporaryFile() as errf:
        t0 = time.perf_counter()
        try:
            p = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=errf)
        except OSError as e:
            raise Fail(f"cannot run `{show(cmd)}`: {e}")
        # wait4 gives this child's own rusage (peak RSS), not the sum of all
        # children (the stderr file, not a pipe, can never fill up and stall it).
        _, status, ru = os.wait4(p.pid, 0)
        t1 = time.perf_counter()
        p.returncode = os.waitstatus_to_exitcode(status)
        errf.seek(0)
        err = errf.read().decode(errors="replace").strip()
    if p.returncode != 0:
        raise Fail(f"`{show(cmd)}` exited with status {p.returncode}: {err}")
    rss = ru.ru_maxrss
    if rss_file is not None:
        with open(rss_file.name) as f:
            rss = int(f.read().split()[-1])
        os.unlink(rss_file.name)
    return t1 - t0, rss


# ------------------------------------------------------------------ files

def write_random_raw(path, size, zero_every=0, zero_len=0, seed=0):
    """A raw file of `size` bytes of random data; with zero_every, a hole of
    zero_len bytes at the start of every zero_every bytes (sparse)."""
    chunk = MIB
    with open(path, "wb") as f:
        f.truncate(size)
        off = 0
        while off < size:
            n = min(chunk, size - off)
            if zero_every and (off % zero_every) < zero_len:
                off += n
                continue
            f.seek(off)
            f.write(os.urandom(n))
            off += n


def fresh_copy(src, dst):
    """A fresh copy of src at dst (sparse), replacing dst."""
    rm(dst)
    run(["cp", "--sparse=always", src, dst])


def rm(*paths):
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.remove(p)


# ------------------------------------------------------------------ servers

class Server:
    """An NBD server on a unix socket, started untimed, stopped after."""

    def __init__(self, cmd, sock):
        self.cmd = [str(c) for c in cmd]
        self.sock = sock
        self.proc = None

    def start(self):
        rm(self.sock)
        self.errf = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.errf)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                self.errf.seek(0)
                raise Fail(f"`{show(self.cmd)}` exited with status {self.proc.returncode} "
                           f"before serving: {self.errf.read().decode(errors='replace').strip()}")
            if os.path.exists(self.sock):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(self.sock)
                    # Read the server's greeting so the server sees a
                    # well-behaved (if short) client.
                    s.settimeout(5)
                    s.recv(18)
                    s.close()
                    return
                except OSError:
                    s.close()
            if time.monotonic() > deadline:
                self.stop()
                raise Fail(f"`{show(self.cmd)}` did not serve on {self.sock} within 20 s")
            time.sleep(0.01)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ------------------------------------------------------------------ harness

class Side:
    """One side of a comparison: `prep` (untimed) before each run, `cmd` the
    timed process, `post` (untimed) after each run."""

    def __init__(self, name, cmd, prep=None, post=None, sync="", exact_rss=False):
        self.name, self.cmd, self.prep, self.post, self.sync = name, cmd, prep, post, sync
        self.exact_rss = exact_rss
        self.times, self.rss = [], []

    def once(self, cwd):
        if self.prep:
            self.prep()
        # Write back what the preparation (and the runs before) left dirty,
        # untimed: else that write-back lands in this run's syncs (ext4
        # commits other files' data with ours) and times whichever side
        # happens to run next.
        os.sync()
        try:
            t, rss = timed(self.cmd, cwd=cwd, exact_rss=self.exact_rss)
        finally:
            if self.post:
                self.post()
        self.times.append(t)
        self.rss.append(rss)

    def median(self):
        return statistics.median(self.times)


def alternate(sides, runs, cwd):
    """Run the sides in turn `runs` times, the order flipped every round."""
    for r in range(runs):
        order = sides if r % 2 == 0 else list(reversed(sides))
        for s in order:
            s.once(cwd)


def fmt_time(t):
    if t is None:
        return "—"
    if t < 1:
        return f"{t * 1000:.1f} ms"
    return f"{t:.2f} s"


class Row:
    def __init__(self, workload, a, b, goal, note, kind="ratio"):
        # kind: "ratio" (a/b ≤ goal), "speedup" (b/a ≥ goal),
        # "rss" (a's peak RSS ≤ goal MiB), "abs" (a's time ≤ goal s)
        self.workload, self.a, self.b, self.goal, self.note, self.kind = workload, a, b, goal, note, kind

    def cells(self):
        a = self.a.median()
        b = self.b.median() if self.b else None
        if self.kind == "ratio":
            v = a / b
            return [fmt_time(a), fmt_time(b), f"{v:.3f}", f"≤{self.goal} {'✓' if v <= self.goal else '✗'}"]
        if self.kind == "speedup":
            v = b / a
            return [fmt_time(a), fmt_time(b), f"{v:.2f}× (t1/t2)",
                    f"≥{self.goal}× {'✓' if v >= self.goal else '✗'}"]
        if self.kind == "rss":
            m = statistics.median(self.a.rss) / 1024
            return [f"{m:.1f} MiB peak RSS ({fmt_time(a)})", "—", "—",
                    f"≤{self.goal} MiB {'✓' if m <= self.goal else '✗'}"]
        if self.kind == "limit":
            v = a / b
            return [fmt_time(a), fmt_time(b), f"{v:.3f}", "— (the disk's limit)"]
        if self.kind == "abs":
            return [fmt_time(a), "—", "—", f"≤{fmt_time(self.goal)} {'✓' if a <= self.goal else '✗'}"]
        raise AssertionError(self.kind)


class Bench:
    def __init__(self, args):
        self.args = args
        self.q = args.quick
        self.dir = args.dir
        self.ckpt = os.path.join(args.bin_dir, "ckpt")
        self.plugin = os.path.join(args.bin_dir, "nbdkit-ckpt-plugin.so")
        self.rows = []
        self.groups = {}
        self.cache = {}

    def p(self, *names):
        return os.path.join(self.dir, *names)

    def ck(self, *a):
        return [self.ckpt, *a]

    def sz(self, full, quick):
        return quick if self.q else full

    def group(self, name, sides):
        alternate(sides, self.args.runs, self.dir)
        self.groups[name] = {s.name: {"seconds": s.times, "peak_rss_kib": s.rss, "sync": s.sync}
                             for s in sides}

    # ---- shared inputs (built once, read-only for the benchmarks)

    def src_raw(self):
        """Random data, partly zero (a 4 MiB hole in every 16 MiB)."""
        if "src" not in self.cache:
            path = self.p("src.raw")
            write_random_raw(path, self.sz(512 * MIB, 32 * MIB), zero_every=16 * MIB, zero_len=4 * MIB)
            self.cache["src"] = path
        return self.cache["src"]

    def pop_vhdx(self):
        """A populated dynamic VHDX, written by qemu-img convert (32 MiB blocks)."""
        if "pop" not in self.cache:
            path = self.p("pop.vhdx")
            run(["qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=32M,subformat=dynamic",
                 self.src_raw(), path])
            self.cache["pop"] = path
        return self.cache["pop"]

    def dd_side(self, src, out, what):
        """The disk's limit for writing what `src` holds: `dd` of it to a
        fresh sparse file, synced (the same bytes land, nothing else)."""
        return Side(f"dd ({what})", ["dd", f"if={src}", f"of={out}", "bs=1M", "conv=sparse,fdatasync",
                                     "status=none"], prep=lambda: rm(out), sync="conv=fdatasync")

    # ---- workloads

    def w_read(self):
        f = self.pop_vhdx()
        c = str(self.sz(100000, 10000))
        a = Side("ckpt bench", self.ck("bench", "-c", c, "-s", "4K", "-S", "8K", f), sync="read only")
        b = Side("qemu-img bench vhdx", ["qemu-img", "bench", "-f", "vhdx", "-t", "writeback", "-c", c,
                                         "-s", "4K", "-S", "8K", f], sync="read only")
        self.group("read", [a, b])
        self.rows.append(Row("read", a, b, 0.1,
                             f"{c}×4K, stride 8K, {self.size_of(self.src_raw())} VHDX made by qemu-img convert "
                             "(32M blocks); qemu-img bench queue depth 64 (its default), ckpt 1 thread"))

    def size_of(self, path):
        n = os.path.getsize(path)
        return f"{n // MIB} MiB" if n < GIB else f"{n / GIB:g} GiB"

    def w_alloc_write(self):
        size = self.sz(1 * GIB, 64 * MIB)
        c = str(self.sz(50000, 2000))
        tpl = self.p("fresh-tpl.vhdx")
        rm(tpl)
        run(self.ck("create", "--size", str(size), tpl))   # 32 MiB blocks
        va, vb, rw = self.p("aw-ckpt.vhdx"), self.p("aw-qemu.vhdx"), self.p("aw-qemu.raw")

        def fresh_raw():
            rm(rw)
            with open(rw, "wb") as f:
                f.truncate(size)
        args = ["-c", c, "-s", "4K", "-S", "20K"]
        a = Side("ckpt bench -w", self.ck("bench", "-w", *args, va), prep=lambda: fresh_copy(tpl, va),
                 sync="flush + fdatasync at close")
        b = Side("qemu-img bench -w vhdx", ["qemu-img", "bench", "-w", "-f", "vhdx", "-t", "writeback", *args, vb],
                 prep=lambda: fresh_copy(tpl, vb), sync="-t writeback: flush (fdatasync) at close")
        r = Side("qemu-img bench -w raw", ["qemu-img", "bench", "-w", "-f", "raw", "-t", "writeback", *args, rw],
                 prep=fresh_raw, sync="-t writeback: flush (fdatasync) at close")
        self.group("alloc-write", [a, b, r])
        self.rows.append(Row("alloc-write (vs qemu vhdx)", a, b, 0.2,
                             f"{c}×4K stride 20K into a fresh {size // MIB} MiB dynamic VHDX; both sides get a copy of "
                             "one `ckpt create` file (32M blocks; qemu-img create would pick 8M/16M here)"))
        self.rows.append(Row("alloc-write (vs qemu raw)", a, r, 1.1,
                             "same ckpt runs vs qemu-img bench -f raw on a fresh sparse raw file of the same size"))

    def w_import(self):
        src = self.src_raw()
        oa, ob, oc = self.p("imp-ckpt.vhdx"), self.p("imp-qemu-wb.vhdx"), self.p("imp-qemu.vhdx")
        a = Side("ckpt convert", self.ck("convert", src, oa), prep=lambda: rm(oa), sync="fdatasync before exit")
        b = Side("qemu-img convert -t writeback", ["qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-t", "writeback",
                                                   "-o", "block_size=32M", src, ob],
                 prep=lambda: rm(ob), sync="-t writeback: flush at close (durable)")
        c = Side("qemu-img convert (default cache)", ["qemu-img", "convert", "-f", "raw", "-O", "vhdx",
                                                      "-o", "block_size=32M", src, oc],
                 prep=lambda: rm(oc), sync="default cache=unsafe: no sync at exit")
        od = self.p("imp-ckpt-nosync.vhdx")
        d = Side("ckpt convert --no-sync", self.ck("convert", "--no-sync", src, od), prep=lambda: rm(od),
                 sync="--no-sync: no sync at exit")
        lim = self.dd_side(src, self.p("imp-dd.raw"), "the same data")
        self.group("import", [a, b, c, d, lim])
        rm(oa, ob, oc, od, self.p("imp-dd.raw"))
        n = self.size_of(src)
        self.rows.append(Row("import (vs qemu -t writeback)", a, b, 0.5,
                             f"{n} raw (random, 4 MiB zero in every 16 MiB) → VHDX, 32M blocks both; ckpt syncs, "
                             "qemu -t writeback syncs"))
        self.rows.append(Row("import (vs qemu default cache)", a, c, 1.0,
                             "ckpt syncs at exit, qemu-img convert's default (cache=unsafe) does not"))
        self.rows.append(Row("import --no-sync (vs qemu default cache)", d, c, 1.0,
                             "the same policy on both sides: no sync at exit"))
        self.rows.append(Row("import (vs dd: the disk's limit)", a, lim, None,
                             "`dd conv=sparse,fdatasync` of the raw source: the same data written and synced, "
                             "nothing else", kind="limit"))

    def w_export(self):
        src = self.pop_vhdx()
        oa, ob = self.p("exp-ckpt.raw"), self.p("exp-qemu.raw")
        a = Side("ckpt convert", self.ck("convert", "-O", "raw", src, oa), prep=lambda: rm(oa),
                 sync="fsync before exit")
        b = Side("qemu-img convert -t writeback", ["qemu-img", "convert", "-f", "vhdx", "-O", "raw", "-t", "writeback",
                                                   src, ob], prep=lambda: rm(ob), sync="-t writeback: flush at close")
        lim = self.dd_side(self.src_raw(), self.p("exp-dd.raw"), "the same data")
        self.group("export", [a, b, lim])
        rm(oa, ob, self.p("exp-dd.raw"))
        self.rows.append(Row("export", a, b, 0.5, f"{self.size_of(self.src_raw())} VHDX (qemu-made) → sparse raw; "
                             "both durable at exit"))
        self.rows.append(Row("export (vs dd: the disk's limit)", a, lim, None,
                             "`dd conv=sparse,fdatasync` of the raw the VHDX was made from", kind="limit"))

    def w_merge(self):
        size = self.sz(1 * GIB, 64 * MIB)
        region = self.sz(4 * MIB, 1 * MIB)
        nreg = self.sz(64, 16)          # 64 × 4 MiB = 256 MiB of changes
        stride = size // nreg
        tpl = self.p("merge-tpl")
        rm(tpl)
        os.makedirs(tpl)
        # The base: random data in the second quarter of every stride.
        base_raw = os.path.join(tpl, "base.raw")
        with open(base_raw, "wb") as f:
            f.truncate(size)
            for i in range(nreg):
                f.seek(i * stride + stride // 4)
                f.write(os.urandom(region))
        run(self.ck("convert", base_raw, os.path.join(tpl, "base.vhdx")))
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", base_raw, os.path.join(tpl, "base.qcow2")])
        os.remove(base_raw)
        # The changes: `region` bytes of pattern 1+i%250 at the start of every stride.
        run(self.ck("create", "--parent", "base.vhdx", "diff.avhdx"), cwd=tpl)
        for i in range(nreg):
            run(self.ck("write", "diff.avhdx", str(i * stride)), input=bytes([1 + i % 250]) * region, cwd=tpl)
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ov.qcow2"], cwd=tpl)
        run(["qemu-io", "-f", "qcow2", *sum((["-c", f"write -q -P {1 + i % 250} {i * stride} {region}"]
                                            for i in range(nreg)), []), "ov.qcow2"], cwd=tpl)
        work = self.p("merge")

        def prep_ckpt():
            os.makedirs(work, exist_ok=True)
            for n in ("base.vhdx", "diff.avhdx"):
                fresh_copy(os.path.join(tpl, n), os.path.join(work, n))

        def prep_qemu():
            os.makedirs(work, exist_ok=True)
            for n in ("base.qcow2", "ov.qcow2"):
                fresh_copy(os.path.join(tpl, n), os.path.join(work, n))
        a = Side("ckpt merge", self.ck("merge", os.path.join(work, "diff.avhdx")), prep=prep_ckpt,
                 sync="fdatasync (log + data) before exit")
        b = Side("qemu-img commit", ["qemu-img", "commit", "-q", "-f", "qcow2", "-t", "writeback",
                                     os.path.join(work, "ov.qcow2")], prep=prep_qemu,
                 sync="-t writeback (commit's default): flush at close")
        changes = os.path.join(tpl, "changes.raw")
        with open(changes, "wb") as f:
            for i in range(nreg):
                f.write(bytes([1 + i % 250]) * region)
        lim = self.dd_side(changes, self.p("merge-dd.raw"), "the changes")
        self.group("merge", [a, b, lim])
        rm(work, tpl, self.p("merge-dd.raw"))
        self.rows.append(Row("merge", a, b, 0.5,
                             f"{nreg * region // MIB} MiB of changes ({nreg}×{region // MIB} MiB) in a {size // MIB} MiB "
                             "disk: AVHDX (2M blocks) into VHDX (32M) vs qcow2 overlay into qcow2 base (64K clusters); "
                             "qemu-img commit also empties the overlay, ckpt merge removes the child"))
        self.rows.append(Row("merge (vs dd: the disk's limit)", a, lim, None,
                             f"`dd conv=fdatasync` of the {nreg * region // MIB} MiB of changes to a fresh file",
                             kind="limit"))

    def w_chain16(self):
        size = self.sz(512 * MIB, 64 * MIB)
        region = self.sz(8 * MIB, 2 * MIB)
        depth = 16
        nreg = size // region
        d = self.p("chain16")
        rm(d)
        os.makedirs(d)
        names = ["l00.vhdx"] + [f"l{k:02}.avhdx" for k in range(1, depth)]
        qnames = [f"q{k:02}.qcow2" for k in range(depth)]
        run(self.ck("create", "--size", str(size), names[0]), cwd=d)
        run(["qemu-img", "create", "-q", "-f", "qcow2", qnames[0], str(size)], cwd=d)
        for k in range(depth):
            if k:
                run(self.ck("create", "--parent", names[k - 1], names[k]), cwd=d)
                run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", qnames[k - 1], "-F", "qcow2", qnames[k]], cwd=d)
            # Layer k owns the regions i with i % depth == k.
            mine = [i for i in range(nreg) if i % depth == k]
            for i in mine:
                run(self.ck("write", names[k], str(i * region)), input=bytes([1 + i % 250]) * region, cwd=d)
            run(["qemu-io", "-f", "qcow2", *sum((["-c", f"write -q -P {1 + i % 250} {i * region} {region}"]
                                                for i in mine), []), qnames[k]], cwd=d)
        single = os.path.join(d, "single.vhdx")
        run(self.ck("convert", os.path.join(d, names[-1]), single))
        c = str(self.sz(100000, 10000))
        args = ["-c", c, "-s", "4K", "-S", "8K"]
        a = Side("ckpt bench 16-deep", self.ck("bench", *args, os.path.join(d, names[-1])), sync="read only")
        b = Side("ckpt bench 1 layer", self.ck("bench", *args, single), sync="read only")
        q = Side("qemu-img bench qcow2 16-deep", ["qemu-img", "bench", "-f", "qcow2", "-t", "writeback", *args,
                                                 os.path.join(d, qnames[-1])], sync="read only")
        self.group("chain16", [a, b, q])
        self.rows.append(Row("chain16 (vs 1 layer)", a, b, 1.1,
                             f"{c}×4K stride 8K; {size // MIB} MiB, {nreg} regions of {region // MIB} MiB dealt "
                             "round-robin to 16 layers; 1 layer = `ckpt convert` of the top"))
        self.rows.append(Row("chain16 (vs qemu qcow2)", a, q, 0.05,
                             "same layout in a 16-deep qcow2 chain (64K clusters)"))

    def nbd_sides(self, name, client, file_for_ckpt, file_for_qemu, readonly, prep_a=None, prep_b=None):
        sock = self.p("nbd.sock")
        ka = ["nbdkit", "-f", "--exit-with-parent", "-U", sock]
        if readonly:
            ka.append("-r")
        ka += [self.plugin, f"file={file_for_ckpt}"] + (["readonly=true"] if readonly else [])
        kb = ["qemu-nbd", "-f", "vhdx", "-t", "-k", sock] + (["-r"] if readonly else []) + [file_for_qemu]
        sa, sb = Server(ka, sock), Server(kb, sock)

        def pa():
            if prep_a:
                prep_a()
            sa.start()

        def pb():
            if prep_b:
                prep_b()
            sb.start()
        uri = f"nbd+unix:///?socket={sock}"
        a = Side(f"{name} nbdkit+ckpt", [x if x != "URI" else uri for x in client], prep=pa, post=sa.stop,
                 sync="server flushes (fdatasync) on the client's NBD flush")
        b = Side(f"{name} qemu-nbd", [x if x != "URI" else uri for x in client], prep=pb, post=sb.stop,
                 sync="qemu-nbd cache=writeback: fdatasync on the client's NBD flush")
        return a, b

    def w_nbd_read(self):
        f = self.pop_vhdx()
        c = str(self.sz(50000, 5000))
        client = ["qemu-img", "bench", "-f", "raw", "-c", c, "-s", "4K", "-S", str(RANDOMISH_STEP), "URI"]
        a, b = self.nbd_sides("nbd-read", client, f, f, True)
        self.group("nbd-read", [a, b])
        self.rows.append(Row("nbd-read", a, b, 0.3,
                             f"{c}×4K, stride {RANDOMISH_STEP // KIB}K (prime × 4K, wraps: scattered), read-only "
                             "export of the populated VHDX; client qemu-img bench (depth 64); only the client timed"))

    def w_nbd_write(self):
        size = self.sz(1 * GIB, 64 * MIB)
        c = str(self.sz(50000, 2000))
        tpl = self.p("nbd-fresh-tpl.vhdx")
        rm(tpl)
        run(self.ck("create", "--size", str(size), tpl))
        fa, fb = self.p("nbdw-ckpt.vhdx"), self.p("nbdw-qemu.vhdx")
        client = ["qemu-img", "bench", "-w", "-f", "raw", "-t", "writeback", "-c", c, "-s", "4K", "-S", "20K", "URI"]
        a, b = self.nbd_sides("nbd-write", client, fa, fb, False,
                              prep_a=lambda: fresh_copy(tpl, fa), prep_b=lambda: fresh_copy(tpl, fb))
        self.group("nbd-write", [a, b])
        rm(fa, fb)
        self.rows.append(Row("nbd-write", a, b, 0.5,
                             f"{c} allocating 4K writes stride 20K into a fresh {size // MIB} MiB VHDX (`ckpt create`, "
                             "32M blocks) over NBD; the client flushes at close"))

    def w_nbd_convert(self):
        f = self.pop_vhdx()
        out = self.p("nbdc-out.raw")
        client = ["qemu-img", "convert", "-f", "raw", "-O", "raw", "URI", out]
        a, b = self.nbd_sides("nbd-convert", client, f, f, True, prep_a=lambda: rm(out), prep_b=lambda: rm(out))
        self.group("nbd-convert", [a, b])
        rm(out)
        self.rows.append(Row("nbd-convert", a, b, 0.5,
                             f"qemu-img convert (cache=unsafe: no sync) of the {self.size_of(self.src_raw())} "
                             "populated VHDX over NBD to a raw file; uses block status, so holes are skipped"))

    def w_threads(self):
        f = self.pop_vhdx()
        c = str(self.sz(500000, 20000))
        args = ["-c", c, "-s", "4K", "-S", str(RANDOMISH_STEP), f]
        a = Side("ckpt bench -t 2", self.ck("bench", "-t", "2", *args), sync="read only")
        b = Side("ckpt bench -t 1", self.ck("bench", "-t", "1", *args), sync="read only")
        self.group("threads", [a, b])
        self.rows.append(Row("threads", a, b, 1.8,
                             f"{c}×4K scattered reads (stride {RANDOMISH_STEP // KIB}K) of the populated VHDX; "
                             "ratio = t1 time / t2 time (throughput gain)", kind="speedup"))

    def w_rss(self):
        f = self.p("big64t.vhdx")
        rm(f)
        run(self.ck("create", "--size", "64T", f))
        c = str(self.sz(10000, 10000))
        a = Side("ckpt bench 64T", self.ck("bench", "-c", c, f), sync="read only", exact_rss=True)
        self.group("rss-64t", [a])
        rm(f)
        self.rows.append(Row("rss-64t", a, None, 32,
                             f"`ckpt bench -c {c}` (4K reads) of a sparse 64 TiB dynamic VHDX (`ckpt create`, 32M "
                             "blocks); peak RSS of that process (GNU time's %M when /usr/bin/time exists, else wait4 ru_maxrss, "
                             "which also counts the harness forked before the exec)", kind="rss"))

    def w_create(self):
        vm = self.p("vm")
        disk_size = str(100 * GIB)
        tpl = self.p("vm-tpl")
        rm(tpl)
        os.makedirs(tpl)
        for i in range(4):
            run(self.ck("create", "--size", disk_size, os.path.join(tpl, f"disk{i}.vhdx")))

        def prep():
            rm(vm)
            os.makedirs(vm)
            disks = []
            for i in range(4):
                d = os.path.join(vm, f"disk{i}.vhdx")
                fresh_copy(os.path.join(tpl, f"disk{i}.vhdx"), d)
                disks.append(d)
            # DIR first: a DIR after the --disk values is taken for one more disk.
            run(self.ck("vm", "create", vm, "--name", "bench", "--checkpoint-type", "standard",
                        "--disk", *disks))
        a = Side("ckpt checkpoint create", self.ck("checkpoint", "create", vm, "cp1"), prep=prep,
                 sync="durable at exit (vm.json + new AVHDXs)")
        self.group("create", [a])
        rm(vm, tpl)
        self.rows.append(Row("create", a, None, 0.020,
                             "`ckpt checkpoint create` of a fresh VM (4 × 100 GiB dynamic disks, standard "
                             "checkpoint type, no memory state); VM re-created before each run", kind="abs"))


# ------------------------------------------------------------------ setup

def first_line(cmd):
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).stdout.decode(errors="replace").splitlines()[0].strip()
    except (OSError, IndexError):
        return "?"


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                    break
    except OSError:
        pass
    return cpu, ram


def ensure_built(args, need_plugin):
    ckpt = os.path.join(args.bin_dir, "ckpt")
    default = os.path.join(ROOT, "target", "release")
    if not os.access(ckpt, os.X_OK):
        if os.path.abspath(args.bin_dir) != os.path.abspath(default):
            die(f"{ckpt} not found (--bin-dir {args.bin_dir})")
        print("bench-vs-qemu: building ckpt (cargo build --release --bins)", file=sys.stderr)
        run(["cargo", "build", "--release", "--bins"], cwd=ROOT, capture=False)
    plugin = os.path.join(args.bin_dir, "nbdkit-ckpt-plugin.so")
    if need_plugin and not os.path.isfile(plugin):
        lib = os.path.join(args.bin_dir, "libckpt.a")
        if not os.path.isfile(lib):
            if os.path.abspath(args.bin_dir) != os.path.abspath(default):
                die(f"{plugin} and {lib} not found (--bin-dir {args.bin_dir})")
            print("bench-vs-qemu: building libckpt.a (cargo build --release --lib)", file=sys.stderr)
            run(["cargo", "build", "--release", "--lib"], cwd=ROOT, capture=False)
        print("bench-vs-qemu: building the nbdkit plugin (examples/nbdkit/build.sh)", file=sys.stderr)
        tmp = plugin + f".{os.getpid()}.tmp"
        env = dict(os.environ, LIBCKPT_A=lib, OUT=tmp)
        p = subprocess.run(["sh", os.path.join(ROOT, "examples", "nbdkit", "build.sh")], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if p.returncode != 0:
            die(f"examples/nbdkit/build.sh failed (status {p.returncode}; needs cc and nbdkit-plugin.h): "
                f"{p.stderr.decode(errors='replace').strip()}")
        os.rename(tmp, plugin)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="scratch directory (default: a temporary one under /tmp, removed at the end)")
    ap.add_argument("--runs", type=int, default=5, help="runs of each side (default 5)")
    ap.add_argument("--quick", action="store_true", help="shrink every size (smoke test)")
    ap.add_argument("--only", help="comma-separated subset of: " + ",".join(WORKLOADS))
    ap.add_argument("--json", help="also write the raw timings to this file")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"),
                    help="where ckpt and nbdkit-ckpt-plugin.so are (default: target/release, built if missing)")
    args = ap.parse_args()
    if args.runs < 1:
        die("--runs must be at least 1")
    only = WORKLOADS
    if args.only:
        only = [w.strip() for w in args.only.split(",") if w.strip()]
        bad = [w for w in only if w not in WORKLOADS]
        if bad:
            die(f"unknown workload(s) {', '.join(bad)}; known: {', '.join(WORKLOADS)}")
    need = {"qemu-img"}
    if any(w in only for w in ("merge", "chain16")):
        need.add("qemu-io")
    nbd = any(w.startswith("nbd-") for w in only)
    if nbd:
        need |= {"nbdkit", "qemu-nbd", "cc"}
    missing = sorted(t for t in need if shutil.which(t) is None)
    if missing:
        die(f"missing tool(s): {', '.join(missing)}")
    ensure_built(args, nbd)

    tmp = None
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-vs-qemu-", dir="/tmp")
        args.dir = tmp
    args.dir = os.path.abspath(args.dir)
    b = Bench(args)
    started = time.monotonic()
    try:
        for w in WORKLOADS:
            if w in only:
                t0 = time.monotonic()
                print(f"bench-vs-qemu: {w} ...", end="", file=sys.stderr, flush=True)
                getattr(b, "w_" + w.replace("-", "_").replace("rss_64t", "rss"))()
                print(f" {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    except Fail as e:
        print(file=sys.stderr)
        die(str(e))
    finally:
        fstype = first_line(["stat", "-f", "-c", "%T", args.dir])
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    cpu, ram = machine()
    print(f"# libckpt vs QEMU ({'quick, ' if args.quick else ''}{args.runs} run(s) per side, median)\n")
    print(f"- machine: {os.cpu_count()} CPUs ({cpu}), {ram} RAM")
    print(f"- kernel: {platform.release()}")
    print(f"- qemu-img: {first_line(['qemu-img', '--version'])}")
    print(f"- nbdkit: {first_line(['nbdkit', '--version']) if shutil.which('nbdkit') else 'not installed'}")
    print(f"- ckpt: {first_line([b.ckpt, '--version'])} ({b.ckpt})")
    print(f"- scratch dir: {args.dir} (file system {fstype}); page cache warm, not dropped")
    print("- whole-process wall time; sides run alternately, order flipped every round")
    print("- sync policy: ckpt convert/merge/write/bench -w/checkpoint create: data and metadata fdatasync'd before "
          "exit; qemu-img -t writeback: flush (fdatasync) at close; qemu-img convert default (cache=unsafe): no sync; "
          "qemu-img commit default is writeback; NBD servers sync on the client's flush (qemu-img bench -w and -t "
          "writeback flush at close)")
    print(f"- elapsed: {time.monotonic() - started:.1f} s\n")
    print("| workload | libckpt median | other median | ratio (libckpt/other, lower is better) | goal | note |")
    print("|---|---|---|---|---|---|")
    for r in b.rows:
        print("| " + " | ".join([r.workload, *r.cells(), r.note]) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "runs": args.runs, "machine": {"cpus": os.cpu_count(), "cpu": cpu,
                                                                         "ram": ram, "kernel": platform.release()},
                       "groups": b.groups}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
