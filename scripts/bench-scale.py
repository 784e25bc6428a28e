#!/usr/bin/env python3
"""Cost as the work grows (issue 16), kernel overlayfs, unionfs and fuse-overlayfs in the
same run, as curves: what idle unions cost as their number grows; mount time, a cold stat at
the bottom and memory from 1 to 500 lowers; one directory of very many entries over three
layers with whiteouts; a walk of millions of files and the daemon's memory after it; the
FUSE requests each metadata operation costs; a copy-up of a large file.

Writes DIR/report.md (the tables) and DIR/*.png (the curves, drawn by gnuplot). Run by
scripts/bench-scale.sh, which installs what it needs; see there for the options.
"""

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time

from bench_common import (IMPLS, Mounts, cost, daemon_of, drop_caches, fresh_run,
                          mount, plot, proc_field, sh, table)


# ------------------------------------------------------------------------------------------
# A. What idle unions cost as their number grows.


def section_unions(b, counts, rep, data):
    lower = os.path.join(b, "ulower")
    os.makedirs(lower, exist_ok=True)
    with open(os.path.join(lower, "f"), "w") as f:
        f.write("x")
    variants = ["unionfs -o shared", "unionfs daemons", "fuse-overlayfs"]
    rows = {}
    for n in counts:
        for v in variants:
            run = os.path.join(b, "run", "unions")
            shutil.rmtree(run, ignore_errors=True)
            os.makedirs(run)
            sock = os.path.join(run, "server.sock")
            pids = set()
            with Mounts() as ms:
                for i in range(n):
                    d = os.path.join(run, str(i))
                    impl = "fuse-overlayfs" if v == "fuse-overlayfs" else "unionfs"
                    extra = ["-o", f"shared={sock}"] if v == "unionfs -o shared" else []
                    pidfile = os.path.join(d + ".pid")
                    mount(impl, [lower], d + "/u", d + "/w", d + "/m", pidfile, extra)
                    ms.add(d + "/m")
                    with open(d + "/m/new", "w") as f:
                        f.write(str(i))
                    pids.add(daemon_of(impl, d + "/m", pidfile))
                time.sleep(1)
                procs, threads, rss = cost([p for p in pids if p])
            rows[(v, n)] = (procs, threads, rss)
            print(f"  {n} unions, {v}: {procs} processes, {threads} threads, {rss} KiB", file=sys.stderr)
            if v == "unionfs -o shared":
                wait_gone(pids)
    rep.append("### Idle unions: what N of them cost together\n")
    rep.append("| unions | " + " | ".join(f"{v}: threads / RSS MiB" for v in variants) + " |")
    rep.append("|---|" + "---|" * len(variants))
    for n in counts:
        cells = []
        for v in variants:
            _, t, r = rows[(v, n)]
            cells.append(f"{t} / {r / 1024:.1f}")
        rep.append(f"| {n} | " + " | ".join(cells) + " |")
    rep.append("\nKernel overlayfs has no daemon: 0 / 0.\n")
    data["unions"] = (counts, variants, rows)


def wait_gone(pids, limit=60):
    end = time.time() + limit
    for p in pids:
        while p and time.time() < end and os.path.exists(f"/proc/{p}"):
            try:
                with open(f"/proc/{p}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.2)


# ------------------------------------------------------------------------------------------
# B. Layers: mount time, a cold stat at the bottom, memory.


def build_layers(b, nmax):
    base = os.path.join(b, "layers")
    stamp = os.path.join(base, f".built-{nmax}")
    if os.path.exists(stamp):
        return base
    os.makedirs(base, exist_ok=True)
    for i in range(nmax):
        d = os.path.join(base, str(i), "d")
        os.makedirs(d, exist_ok=True)
        for j in range(20):
            open(os.path.join(d, f"l{i}_{j}"), "w").close()
    open(stamp, "w").close()
    return base


def section_layers(b, layer_counts, rep, data):
    base = build_layers(b, max(layer_counts))
    rows = {}
    for n in layer_counts:
        # Relative lower paths keep the kernel's option string under its page-size limit.
        lowers = [str(i) for i in range(n)]
        bottom = f"d/l{n - 1}_0"
        for impl in IMPLS:
            run, pidfile = fresh_run(b, "layers", impl)
            with Mounts() as ms:
                drop_caches()
                t_mount = mount(impl, lowers, run + "/u", run + "/w", run + "/m", pidfile, cwd=base)
                ms.add(run + "/m")
                drop_caches()
                t0 = time.perf_counter()
                os.stat(os.path.join(run, "m", bottom))
                t_stat = time.perf_counter() - t0
                pid = daemon_of(impl, run + "/m", pidfile)
                rss = proc_field(pid, "VmRSS:") if pid else 0
            rows[(impl, n)] = (t_mount, t_stat, rss)
            print(f"  {n} layers, {impl}: mount {t_mount:.3f}s, cold stat {t_stat*1000:.2f} ms, {rss} KiB", file=sys.stderr)
    rep.append("### Layers: mount time, a cold stat of a file in the bottom layer, daemon memory\n")

    def cell(i, n):
        m, s, r = rows[(i, n)]
        return f"{m:.3f} / {s*1000:.2f} / {r/1024:.1f}"

    table(rep, "lowers", layer_counts, "mount s / stat ms / RSS MiB", cell)
    data["layers"] = (layer_counts, rows)


# ------------------------------------------------------------------------------------------
# C. One directory of very many entries over three layers, with whiteouts.


def build_bigdir(b, n):
    base = os.path.join(b, f"bigdir-{n}")
    stamp = os.path.join(base, ".built")
    if os.path.exists(stamp):
        return base
    for l in ("l1", "l2", "l3"):
        os.makedirs(os.path.join(base, l, "big"), exist_ok=True)
    # Names spread round-robin over the three layers; the top layer whites out 1% of the
    # bottom layer's names.
    for i in range(n):
        layer = ("l1", "l2", "l3")[i % 3]
        open(os.path.join(base, layer, "big", f"e{i:07d}"), "w").close()
    for i in range(2, n, 300):
        open(os.path.join(base, "l1", "big", f".wh.e{i:07d}"), "w").close()
    open(stamp, "w").close()
    return base


def listdir_count(path):
    return sum(1 for _ in os.scandir(path))


def section_bigdir(b, sizes, rep, data):
    rows = {}
    for n in sizes:
        base = build_bigdir(b, n)
        lowers = [os.path.join(base, l) for l in ("l1", "l2", "l3")]
        visible = n - len(range(2, n, 300))
        rnd = random.Random(1)
        names = [f"e{rnd.randrange(n):07d}" for _ in range(min(n, 10000))]
        for impl in IMPLS:
            run, pidfile = fresh_run(b, "bigdir", impl)
            with Mounts() as ms:
                # Kernel overlayfs reads the OCI whiteouts only with its own format: give it
                # the same layers with 0/0 char devices (built once).
                lw = lowers if impl != "kernel" else kernel_format(base, lowers)
                mount(impl, lw, run + "/u", run + "/w", run + "/m", pidfile)
                ms.add(run + "/m")
                drop_caches()
                t0 = time.perf_counter()
                got = listdir_count(run + "/m/big")
                t_list = time.perf_counter() - t0
                assert got == visible, f"{impl}: {got} entries listed, {visible} visible"
                drop_caches()
                t0 = time.perf_counter()
                for nm in names:
                    try:
                        os.stat(os.path.join(run, "m", "big", nm))
                    except FileNotFoundError:
                        pass
                t_lookup = (time.perf_counter() - t0) / len(names)
                pid = daemon_of(impl, run + "/m", pidfile)
                rss = proc_field(pid, "VmRSS:") if pid else 0
            rows[(impl, n)] = (got / t_list, t_lookup, rss)
            print(f"  {n} entries, {impl}: {got/t_list:.0f} entries/s, lookup {t_lookup*1e6:.1f} us, {rss} KiB", file=sys.stderr)
    rep.append("### One directory of N entries over three layers, 1% of them whited out\n")
    rep.append("Listing: entries per second of a cold `scandir`; lookup: a cold `stat` of random names; RSS after both.\n")

    def cell(impl, n):
        k = rows[("kernel", n)]
        lps, lk, r = rows[(impl, n)]
        return f"{lps:,.0f} ({lps / k[0]:.2f}x) / {lk*1e6:.1f} ({k[1] / lk:.2f}x) / {r/1024:.1f}"

    table(rep, "entries", sizes, "listing / lookup us / RSS MiB", cell)
    rep.append("(x: speed relative to kernel overlayfs, higher is better.)\n")
    data["bigdir"] = (sizes, rows)


def kernel_format(base, lowers):
    """The layers with `.wh.NAME` files turned into 0/0 char devices (kernel overlayfs's
    whiteouts), built once beside them."""
    out = []
    for l in lowers:
        k = l + ".kernel"
        stamp = k + ".built"
        if not os.path.exists(stamp):
            shutil.rmtree(k, ignore_errors=True)
            sh(["cp", "-a", l, k])
            for dirpath, _, files in os.walk(k):
                for f in files:
                    if f.startswith(".wh.") and not f.startswith(".wh..wh."):
                        os.unlink(os.path.join(dirpath, f))
                        os.mknod(os.path.join(dirpath, f[4:]), 0o600 | 0o020000, os.makedev(0, 0))
            open(stamp, "w").close()
        out.append(k)
    return out


# ------------------------------------------------------------------------------------------
# D. A walk of millions of files: the daemon's memory during and after.


def build_tree(b, n):
    base = os.path.join(b, f"tree-{n}")
    stamp = os.path.join(base, ".built")
    if os.path.exists(stamp):
        return base
    per = 1000
    for d in range(n // per):
        p = os.path.join(base, f"d{d // 1000}", f"d{d % 1000}")
        os.makedirs(p, exist_ok=True)
        for i in range(per):
            os.mknod(os.path.join(p, f"f{i}"))
    open(stamp, "w").close()
    return base


def section_tree(b, n, rep, data):
    base = build_tree(b, n)
    rows = {}
    samples = {}
    for impl in IMPLS:
        run, pidfile = fresh_run(b, "tree", impl)
        with Mounts() as ms:
            mount(impl, [base], run + "/u", run + "/w", run + "/m", pidfile)
            ms.add(run + "/m")
            drop_caches()
            pid = daemon_of(impl, run + "/m", pidfile)
            series = []
            t0 = time.perf_counter()

            def sample():
                if pid:
                    series.append((time.perf_counter() - t0, proc_field(pid, "VmRSS:")))

            walker = subprocess.Popen(["find", run + "/m", "-printf", "%s\n"], stdout=subprocess.DEVNULL)
            while walker.poll() is None:
                sample()
                time.sleep(0.5)
            t_walk = time.perf_counter() - t0
            sample()
            after = series[-1][1] if series else 0
            # The kernel forgets the inodes (the daemon's FORGETs follow) once asked to.
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("2")
            for _ in range(6):
                time.sleep(0.5)
                sample()
            dropped = series[-1][1] if series else 0
        peak = max((r for _, r in series), default=0)
        rows[impl] = (t_walk, peak, after, dropped)
        samples[impl] = (t_walk, series)
        print(f"  walk of {n} files, {impl}: {t_walk:.1f}s, RSS peak {peak} KiB, after {after}, after drop {dropped}", file=sys.stderr)
    rep.append(f"### A walk (`find -printf %s`) of {n:,} files\n")
    rep.append("| | walk s | daemon RSS MiB: peak / after / after drop_caches |")
    rep.append("|---|---|---|")
    for impl in IMPLS:
        t, p, a, d = rows[impl]
        rep.append(f"| {impl} | {t:.1f} | {p/1024:.1f} / {a/1024:.1f} / {d/1024:.1f} |")
    rep.append("")
    data["tree"] = (n, samples)


# ------------------------------------------------------------------------------------------
# E. FUSE requests per metadata operation.


def stats_of(pidfile, statsfile):
    with open(pidfile) as f:
        pid = int(f.read())
    if os.path.exists(statsfile):
        os.unlink(statsfile)
    os.kill(pid, signal.SIGUSR1)
    for _ in range(100):
        if os.path.exists(statsfile) and os.path.getsize(statsfile) > 0:
            break
        time.sleep(0.05)
    out = {}
    with open(statsfile) as f:
        for line in f:
            k, _, v = line.strip().partition(" ")
            if k.startswith("requests."):
                out[k[9:]] = int(v)
    return out


# What the kernel sends at the least for each operation above, with default_permissions (which
# every union needs: the kernel checks modes against the merged attributes). Found by reading
# fs/fuse/dir.c and by tracing the daemon with RUST_LOG=debug.
FEWEST = {
    "create": "4: lookup, create, release, getattr",
    "unlink": "3: unlink, getattr, forget",
    "tar extract": "9: lookup, create, release, getattr, 3 setattr, 2 getxattr",
    "ls -lR (cold)": "1: getxattr (plus a readdirplus per directory)",
    "find (cold)": "0 (a readdirplus per directory)",
    "rm -rf (lower files)": "4: lookup, unlink, getattr, forget (the names are not cached after a cold find)",
}
FEWEST_WHY = """Why these are the floor:
- **getattr after create, unlink, rm**: every change to a directory makes the kernel drop the
  directory's cached attributes (`fuse_dir_changed`), and with `default_permissions` the next path
  walk through it must fetch mode, uid and gid again before it may look inside. fuse-overlayfs
  mounts with `default_permissions` too; a union without it would have to check permissions itself
  on every request.
- **lookup before create**: a name the kernel has never seen is looked up before `atomic_open`
  sends CREATE; negative entries are cached afterwards, so a repeated miss costs nothing.
- **lookup before unlink**: `rm` removes names it read from a listing; the kernel needs each
  name's inode before it may unlink it, and a bare listing cached none.
- **forget**: the kernel tells the daemon when it drops an inode; batched when several are queued.
- **tar's 3 setattr** are its own `fchown`, `fchmod` and `utimensat`; the **2 getxattr** are
  `security.capability`, which the kernel reads before a write and a chown to learn whether file
  capabilities must be removed.
- **ls -l** asks for each file's ACL (`getxattr system.posix_acl_access`) to print `+`; readdirplus
  already carried every attribute, so there is no lookup or getattr per file.
"""


def section_requests(b, rep, data):
    n = 2000
    lower = os.path.join(b, "reqlower")
    stamp = os.path.join(lower, ".built")
    if not os.path.exists(stamp):
        for d in range(20):
            p = os.path.join(lower, "tree", f"d{d}")
            os.makedirs(p, exist_ok=True)
            for i in range(n // 20):
                with open(os.path.join(p, f"f{i}"), "w") as f:
                    f.write("x")
        open(stamp, "w").close()
    tarball = os.path.join(b, "req.tar")
    if not os.path.exists(tarball):
        sh(["tar", "-cf", tarball, "-C", lower, "tree"])
    work = [
        ("create", f"python3 -c \"import os\nfor i in range({n}): os.close(os.open('M/c/f%d'%i, os.O_CREAT|os.O_WRONLY, 0o644))\"", "mkdir -p M/c"),
        ("unlink", f"python3 -c \"import os\nfor i in range({n}): os.unlink('M/c/f%d'%i)\"", None),
        ("tar extract", f"tar -xf {tarball} -C M/t", "mkdir -p M/t"),
        ("ls -lR (cold)", "ls -lR M/tree >/dev/null", "DROP"),
        ("find (cold)", "find M/tree >/dev/null", "DROP"),
        ("rm -rf (lower files)", "rm -rf M/tree", None),
    ]
    rows = {}
    for transport in ("io_uring", "/dev/fuse"):
        run = os.path.join(b, "run", "req")
        shutil.rmtree(run, ignore_errors=True)
        os.makedirs(run)
        pidfile, statsfile = run + "/pid", run + "/stats"
        extra = ["--stats-file", statsfile] + (["-o", "uring=off"] if transport == "/dev/fuse" else [])
        with Mounts() as ms:
            mount("unionfs", [lower], run + "/u", run + "/w", run + "/m", pidfile, extra)
            ms.add(run + "/m")
            for name, cmd, setup in work:
                if setup == "DROP":
                    drop_caches()
                elif setup:
                    sh(setup.replace("M", run + "/m"))
                before = stats_of(pidfile, statsfile)
                sh(cmd.replace("M/", run + "/m/"))
                time.sleep(0.3)  # RELEASE and FORGET arrive after the calls return
                after = stats_of(pidfile, statsfile)
                delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                delta = {k: v for k, v in delta.items() if v > 0}
                rows[(transport, name)] = delta
    rep.append(f"### FUSE requests per file ({n:,} files in 20 directories), unionfs\n")
    rep.append("| operation | transport | requests per file, by type | fewest the kernel allows |")
    rep.append("|---|---|---|---|")
    for (transport, name), delta in rows.items():
        per = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1]))
        total = sum(delta.values()) / n
        rep.append(f"| {name} | {transport} | {total:.2f}: {per} | {FEWEST[name]} |")
    rep.append("")
    rep.append(FEWEST_WHY)
    data["requests"] = rows


# ------------------------------------------------------------------------------------------
# F. Copy-up of a large file.


def section_copyup(b, sizes, runs, rep, data):
    rows, durable = {}, {}
    for mib in sizes:
        for impl, (t, d) in copyup_one(b, mib, runs).items():
            rows[(impl, mib)] = t
            durable[(impl, mib)] = d
    names = [v for v, _, _ in COPYUP_VARIANTS]
    for title, table in [
        ("appending one byte to a lower file (open, write, close)", rows),
        ("the same append, then an fsync of the file: the copy is on disk in the upper", durable),
    ]:
        rep.append(f"### Copy-up: {title} (median of {runs}), seconds\n")
        rep.append("| MiB | " + " | ".join(names) + " |")
        rep.append("|---|" + "---|" * len(names))
        for mib in sizes:
            k = table[("kernel", mib)]
            rep.append(f"| {mib} | " + " | ".join(f"{table[(i, mib)]:.3f} ({k / table[(i, mib)]:.2f}x)" for i in names) + " |")
        rep.append("")
    rep.append("(x: speed relative to kernel overlayfs. Kernel overlayfs flushes the copy before it")
    rep.append("appears in the upper, and so does unionfs with `flush_behind=off`. unionfs by default")
    rep.append("renames a copy of 1 MiB or more in at once and flushes it in the background, with a record")
    rep.append("in the work dir that makes the next mount copy it again after a crash. fuse-overlayfs and")
    rep.append("`unionfs -o volatile` rename the copy in unflushed with nothing to repair it.)\n")
    data["copyup"] = (sizes, rows)


# unionfs (default): renamed in at once, flushed behind with a record; flush_behind=off: flushed before
# the open returns, as kernel overlayfs; -o volatile: no flush before the copy appears, as
# fuse-overlayfs always does.
COPYUP_VARIANTS = [
    ("kernel", "kernel", []),
    ("unionfs", "unionfs", []),
    ("unionfs flush_behind=off", "unionfs", ["-o", "flush_behind=off"]),
    ("unionfs -o volatile", "unionfs", ["-o", "volatile"]),
    ("fuse-overlayfs", "fuse-overlayfs", []),
]


def copyup_one(b, mib, runs):
    lower = os.path.join(b, f"cu-{mib}")
    big = os.path.join(lower, "big")
    if not os.path.exists(big):
        os.makedirs(lower, exist_ok=True)
        with open(big, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(mib):
                f.write(chunk)
    # Runs interleaved, so a slow moment of the disk does not fall on one implementation.
    times = {v: ([], []) for v, _, _ in COPYUP_VARIANTS}
    for _ in range(runs):
        for v, impl, extra in COPYUP_VARIANTS:
            run, pidfile = fresh_run(b, "cu", v.replace(" ", "_").replace("=", "_"))
            with Mounts() as ms:
                mount(impl, [lower], run + "/u", run + "/w", run + "/m", pidfile, extra)
                ms.add(run + "/m")
                os.sync()
                t0 = time.perf_counter()
                with open(run + "/m/big", "ab") as f:
                    f.write(b"x")
                t1 = time.perf_counter()
                fd = os.open(run + "/m/big", os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
                t2 = time.perf_counter()
                times[v][0].append(t1 - t0)
                times[v][1].append(t2 - t0)
    rows = {}
    for v, _, _ in COPYUP_VARIANTS:
        rows[v] = (statistics.median(times[v][0]), statistics.median(times[v][1]))
        print(f"  copy-up {mib} MiB, {v}: {rows[v][0]:.3f}s, with fsync {rows[v][1]:.3f}s", file=sys.stderr)
    return rows


def draw(out, data):
    if "unions" in data:
        counts, variants, rows = data["unions"]
        plot(out, "unions-threads", "Threads of N idle unions", "unions", "threads",
             {v: [(n, rows[(v, n)][1]) for n in counts] for v in variants})
        plot(out, "unions-rss", "Memory of N idle unions", "unions", "RSS, MiB",
             {v: [(n, rows[(v, n)][2] / 1024) for n in counts] for v in variants})
    if "layers" in data:
        counts, rows = data["layers"]
        plot(out, "layers-mount", "Mount time by number of lowers", "lowers", "seconds",
             {i: [(n, rows[(i, n)][0]) for n in counts] for i in IMPLS}, logx=True)
        plot(out, "layers-stat", "Cold stat of a file in the bottom layer", "lowers", "ms",
             {i: [(n, rows[(i, n)][1] * 1000) for n in counts] for i in IMPLS}, logx=True)
        plot(out, "layers-rss", "Daemon memory by number of lowers", "lowers", "RSS, MiB",
             {i: [(n, rows[(i, n)][2] / 1024) for n in counts] for i in IMPLS if i != "kernel"}, logx=True)


def draw_more(out, data):
    if "bigdir" in data:
        sizes, rows = data["bigdir"]
        plot(out, "bigdir-list", "Cold listing of one directory over 3 layers", "entries",
             "entries per second", {i: [(n, rows[(i, n)][0]) for n in sizes] for i in IMPLS}, logx=True)
        plot(out, "bigdir-lookup", "Cold lookup in one directory over 3 layers", "entries",
             "microseconds", {i: [(n, rows[(i, n)][1] * 1e6) for n in sizes] for i in IMPLS}, logx=True)
        plot(out, "bigdir-rss", "Daemon memory after listing one directory", "entries", "RSS, MiB",
             {i: [(n, rows[(i, n)][2] / 1024) for n in sizes] for i in IMPLS if i != "kernel"}, logx=True)
    if "tree" in data:
        n, samples = data["tree"]
        plot(out, "tree-rss", f"Daemon memory during a walk of {n:,} files, then drop_caches",
             "seconds", "RSS, MiB",
             {i: [(t, r / 1024) for t, r in samples[i][1]] for i in IMPLS if i != "kernel"})
    if "copyup" in data:
        sizes, rows = data["copyup"]
        plot(out, "copyup", "Copy-up: append one byte to a lower file", "MiB", "seconds",
             {v: [(m, rows[(v, m)]) for m in sizes] for v, _, _ in COPYUP_VARIANTS})


def fuse_overlayfs_version():
    """The "version X" of `fuse-overlayfs --version` (its first lines are libfuse's)."""
    out = subprocess.run(["fuse-overlayfs", "--version"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("fuse-overlayfs:"):
            return line.split(":", 1)[1].strip()
    return "(version unknown)"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", required=True, help="fixtures and runs (reused across runs)")
    ap.add_argument("--out", required=True, help="where report.md and the PNGs go")
    ap.add_argument("--full", action="store_true", help="issue 16's sizes: 100 unions, 500 layers, 1,000,000 entries, 10,000,000 files")
    ap.add_argument("--only", default="unions,layers,bigdir,tree,requests,copyup")
    a = ap.parse_args()
    b = a.dir
    os.makedirs(b, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    only = set(a.only.split(","))
    if a.full:
        unions, layers = [1, 10, 25, 50, 100], [1, 10, 50, 100, 250, 500]
        bigdir, tree, cu = [10_000, 100_000, 1_000_000], 10_000_000, [16, 64, 256, 1024]
    else:
        unions, layers = [1, 10, 50], [1, 10, 100]
        bigdir, tree, cu = [10_000, 100_000], 1_000_000, [16, 64, 256]
    rep = [
        f"Machine: {os.cpu_count()} CPUs, {os.uname().release}; fixtures on "
        f"{subprocess.run(['df', '--output=fstype', b], capture_output=True, text=True).stdout.split()[-1]}; "
        f"unionfs {'(release build)'}, fuse-overlayfs "
        f"{fuse_overlayfs_version()}.\n"
    ]
    data = {}
    steps = [
        ("unions", lambda: section_unions(b, unions, rep, data)),
        ("layers", lambda: section_layers(b, layers, rep, data)),
        ("bigdir", lambda: section_bigdir(b, bigdir, rep, data)),
        ("tree", lambda: section_tree(b, tree, rep, data)),
        ("requests", lambda: section_requests(b, rep, data)),
        ("copyup", lambda: section_copyup(b, cu, 3, rep, data)),
    ]
    for name, f in steps:
        if name in only:
            print(f"== {name}", file=sys.stderr)
            f()
    draw(a.out, data)
    draw_more(a.out, data)
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write("\n".join(rep) + "\n")
    print("\n".join(rep))


if __name__ == "__main__":
    main()
