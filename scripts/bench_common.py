"""What the bench scripts share: mounting kernel overlayfs, unionfs and fuse-overlayfs the
same way, finding their daemons and what those cost, run directories, markdown tables and
gnuplot curves. Imported by scripts/bench-scale.py."""

import os
import subprocess
import shutil
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIONFS = os.path.join(ROOT, "target", "release", "unionfs-mount")
IMPLS = ["kernel", "unionfs", "fuse-overlayfs"]


def fresh_run(b, section, impl):
    """An empty run directory for one implementation in one section, and its pid file."""
    run = os.path.join(b, "run", section, impl)
    shutil.rmtree(run, ignore_errors=True)
    os.makedirs(run)
    return run, os.path.join(run, "pid")


def table(rep, first, keys, what, cell):
    """A markdown table: a row per key, a column per implementation, cell(impl, key) each."""
    rep.append(f"| {first} | " + " | ".join(f"{i}: {what}" for i in IMPLS) + " |")
    rep.append("|---|" + "---|" * len(IMPLS))
    for k in keys:
        rep.append(f"| {k:,} | " + " | ".join(cell(i, k) for i in IMPLS) + " |")
    rep.append("")


def sh(cmd, check=True, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=check, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def proc_field(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def cost(pids):
    """(processes, threads, RSS KiB) of `pids` and the processes they forked (watchdogs)."""
    allp = set()
    for p in pids:
        allp.add(p)
        allp.update(children(p))
    threads = sum(proc_field(p, "Threads:") for p in allp)
    rss = sum(proc_field(p, "VmRSS:") for p in allp)
    return len(allp), threads, rss


def fuse_daemon_pid(mnt):
    """The pid of the FUSE daemon serving `mnt`: unionfs writes it to a pid file; for
    fuse-overlayfs, the process whose arguments end with this mount point."""
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"fuse-overlayfs") and mnt.encode() in args:
            return int(p)
    return None


class Mounts:
    """Mounts made by one section; all unmounted (innermost first) on exit."""

    def __init__(self):
        self.points = []

    def __enter__(self):
        return self

    def add(self, p):
        self.points.append(p)

    def __exit__(self, *exc):
        for p in reversed(self.points):
            if subprocess.run(["umount", p], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", p], capture_output=True)
        self.points = []


def mount(impl, lowers, upper, work, mnt, pidfile=None, extra=(), cwd=None):
    """Mounts `impl`; returns the seconds it took until the mount was usable."""
    os.makedirs(mnt, exist_ok=True)
    lowerdir = ":".join(lowers)
    if upper:
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
    t0 = time.perf_counter()
    if impl == "kernel":
        opts = f"lowerdir={lowerdir}"
        if upper:
            opts += f",upperdir={upper},workdir={work}"
        sh(["mount", "-t", "overlay", "overlay", "-o", opts, mnt], cwd=cwd)
    elif impl == "fuse-overlayfs":
        opts = f"lowerdir={lowerdir}"
        if upper:
            opts += f",upperdir={upper},workdir={work}"
        sh(["fuse-overlayfs", "-o", opts, mnt], cwd=cwd, stderr=subprocess.DEVNULL)
    else:
        opts = f"lowerdir={lowerdir}"
        if upper:
            opts += f",upperdir={upper},workdir={work}"
        cmd = [UNIONFS, "-o", opts] + list(extra)
        if pidfile:
            cmd += ["--pid-file", pidfile]
        sh(cmd + [mnt], cwd=cwd)
    os.stat(mnt)
    return time.perf_counter() - t0


def daemon_of(impl, mnt, pidfile):
    if impl == "fuse-overlayfs":
        return fuse_daemon_pid(mnt)
    if impl.startswith("unionfs"):
        with open(pidfile) as f:
            return int(f.read())
    return None


# ------------------------------------------------------------------------------------------
# Plots.


def plot(out, name, title, xlabel, ylabel, series, logx=False):
    """series: {label: [(x, y), ...]}; draws OUT/NAME.png with gnuplot."""
    dat = os.path.join(out, name + ".dat")
    with open(dat, "w") as f:
        for i, (label, pts) in enumerate(series.items()):
            f.write(f'"{label}"\n')
            for x, y in pts:
                f.write(f"{x} {y}\n")
            f.write("\n\n")
    plots = ", ".join(
        f"'{dat}' index {i} with linespoints title columnheader(1)" for i in range(len(series))
    )
    script = f"""
set terminal pngcairo size 800,480 font ',10' noenhanced
set output '{os.path.join(out, name + '.png')}'
set title '{title}'
set xlabel '{xlabel}'
set ylabel '{ylabel}'
set key left top
set grid
{'set logscale x' if logx else ''}
plot {plots}
"""
    subprocess.run(["gnuplot"], input=script.encode(), check=True)
    os.unlink(dat)
