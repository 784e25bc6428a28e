//! `mount -t fuse.unionfs` and an fstab entry reach unionfs-mount through mount(8) and
//! mount.fuse3, the way an admin uses any FUSE filesystem. Runs in a private mount namespace
//! where a temp dir with the `unionfs` name is bind-mounted over /usr/local/bin, so the host is
//! never changed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_unionfs-mount");

fn tools_available() -> bool {
    if !crate::common::can_mount() {
        return false;
    }
    if Path::new("/sbin/mount.fuse3").exists() {
        return true;
    }
    let why = "needs mount.fuse3 from the fuse3 package";
    if std::env::var("UNIONFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("UNIONFS_REQUIRE_FUSE=1 but this test {why}");
    }
    eprintln!("skipping: this test {why}");
    false
}

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("unionfs-mhelper-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        for d in ["bin", "l", "u", "w", "m"] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
        std::os::unix::fs::symlink(BIN, p.join("bin/unionfs")).unwrap();
        fs::write(p.join("l/f"), "lower").unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        // The mounts live in the test's private namespace, which ends with its shell.
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `script` in a private mount namespace with our `unionfs` on PATH for mount.fuse3.
fn in_private_ns(t: &Tmp, script: &str) -> String {
    let full = format!(
        "set -e; trap 'umount -l {m} 2>/dev/null || true' EXIT; \
         mount --bind {bin} /usr/local/bin; {script}",
        m = t.0.join("m").display(),
        bin = t.0.join("bin").display(),
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &full])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "script failed: {}\nstdout: {out}\nstderr: {}",
        script,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn mount_t_fuse_unionfs_mounts_and_umount_ends_it() {
    if !tools_available() {
        return;
    }
    let t = Tmp::new("t");
    let p = |d: &str| t.0.join(d).display().to_string();
    let out = in_private_ns(
        &t,
        &format!(
            "mount -t fuse.unionfs unionfs {m} -o lowerdir={l},upperdir={u},workdir={w},noatime,_netdev; \
             cat {m}/f; echo; grep ' {m} ' /proc/self/mounts | cut -d' ' -f3; \
             echo new > {m}/g; umount {m}; grep -c ' {m} ' /proc/self/mounts || true",
            m = p("m"),
            l = p("l"),
            u = p("u"),
            w = p("w")
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["lower", "fuse.unionfs", "0"], "{out}");
    assert_eq!(fs::read_to_string(t.0.join("u/g")).unwrap(), "new\n");
    assert_eq!(fs::read_dir(t.0.join("l")).unwrap().count(), 1);
}

#[test]
fn fstab_entry_mounts_read_only_with_ro() {
    if !tools_available() {
        return;
    }
    let t = Tmp::new("fstab");
    let p = |d: &str| t.0.join(d).display().to_string();
    let fstab = t.0.join("fstab");
    fs::write(
        &fstab,
        format!(
            "unionfs {m} fuse.unionfs ro,lowerdir={l},upperdir={u},workdir={w} 0 0\n",
            m = p("m"),
            l = p("l"),
            u = p("u"),
            w = p("w")
        ),
    )
    .unwrap();
    let out = in_private_ns(
        &t,
        &format!(
            "mount -T {fstab} {m}; cat {m}/f; echo; \
             if touch {m}/x 2>/dev/null; then echo writable; else echo read-only; fi; umount {m}",
            fstab = fstab.display(),
            m = p("m")
        ),
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["lower", "read-only"],
        "{out}"
    );
    assert_eq!(
        fs::read_dir(t.0.join("u")).unwrap().count(),
        0,
        "ro wrote to the upper"
    );
}

#[test]
fn the_mount_source_is_the_name_in_proc_mounts() {
    if !tools_available() {
        return;
    }
    let t = Tmp::new("source");
    let p = |d: &str| t.0.join(d).display().to_string();
    let out = in_private_ns(
        &t,
        &format!(
            "mount -t fuse.unionfs app-root {m} -o lowerdir={l}; \
             grep ' {m} ' /proc/self/mounts | cut -d' ' -f1,3; umount {m}",
            m = p("m"),
            l = p("l"),
        ),
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["app-root fuse.unionfs"],
        "{out}"
    );
}
