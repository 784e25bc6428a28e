//! `mount -t fuse.unionfs-mount` and an fstab entry reach unionfs-mount through mount(8) and
//! mount.fuse3, the way an admin uses any FUSE filesystem, after `scripts/install.sh` put it in
//! a directory mount.fuse3 searches. Each test runs in a private mount namespace with a temp
//! dir bind-mounted over /usr/local, so the install and the mounts never touch the host.
//! The install script's refusal to write over another package's file is tested with a
//! `dpkg-query` stand-in that claims one of the destinations.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_unionfs-mount");
const INSTALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh");

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

/// The directory of the binaries under test (`target/debug`), what `install.sh --bin-dir`
/// installs from.
fn bin_dir() -> PathBuf {
    Path::new(BIN).parent().unwrap().to_path_buf()
}

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("unionfs-mhelper-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        for d in ["local", "l", "u", "w", "m"] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
        fs::write(p.join("l/f"), "lower").unwrap();
        Tmp(p)
    }

    fn p(&self, d: &str) -> String {
        self.0.join(d).display().to_string()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        // The mounts live in the test's private namespace, which ends with its shell.
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `script` in a private mount namespace after `install.sh --prefix /usr/local` installed
/// the binaries under test into the temp dir mounted over /usr/local.
fn in_private_ns(t: &Tmp, script: &str) -> String {
    let full = format!(
        "set -e; trap 'umount -l {m} 2>/dev/null || true' EXIT; \
         mount --bind {local} /usr/local; \
         {install} --prefix /usr/local --bin-dir {bins} >/dev/null; {script}",
        m = t.p("m"),
        local = t.p("local"),
        install = INSTALL,
        bins = bin_dir().display(),
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
fn mount_t_fuse_unionfs_mount_runs_the_installed_binary_and_umount_ends_it() {
    if !tools_available() {
        return;
    }
    let t = Tmp::new("t");
    let out = in_private_ns(
        &t,
        &format!(
            "ls /usr/local/bin; echo --; \
             mount -t fuse.unionfs-mount unionfs {m} -o lowerdir={l},upperdir={u},workdir={w},noatime,_netdev; \
             cat {m}/f; echo; grep ' {m} ' /proc/self/mounts | cut -d' ' -f3; \
             echo new > {m}/g; umount {m}; grep -c ' {m} ' /proc/self/mounts || true",
            m = t.p("m"),
            l = t.p("l"),
            u = t.p("u"),
            w = t.p("w")
        ),
    );
    let (installed, rest) = out.split_once("--\n").unwrap();
    let installed: Vec<&str> = installed.lines().collect();
    assert!(installed.contains(&"unionfs-mount"), "{out}");
    // `unionfs` is the Debian unionfs-fuse package's binary: never ours to install.
    assert!(!installed.contains(&"unionfs"), "{out}");
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(lines, ["lower", "fuse.unionfs-mount", "0"], "{out}");
    assert_eq!(fs::read_to_string(t.0.join("u/g")).unwrap(), "new\n");
    assert_eq!(fs::read_dir(t.0.join("l")).unwrap().count(), 1);
}

#[test]
fn fstab_entry_mounts_read_only_with_ro() {
    if !tools_available() {
        return;
    }
    let t = Tmp::new("fstab");
    let fstab = t.0.join("fstab");
    fs::write(
        &fstab,
        format!(
            "unionfs {m} fuse.unionfs-mount ro,lowerdir={l},upperdir={u},workdir={w} 0 0\n",
            m = t.p("m"),
            l = t.p("l"),
            u = t.p("u"),
            w = t.p("w")
        ),
    )
    .unwrap();
    let out = in_private_ns(
        &t,
        &format!(
            "mount -T {fstab} {m}; cat {m}/f; echo; \
             if touch {m}/x 2>/dev/null; then echo writable; else echo read-only; fi; umount {m}",
            fstab = fstab.display(),
            m = t.p("m")
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
fn the_mount_source_is_the_name_in_proc_mounts_and_mount_fuse3_adds_dev_suid() {
    if !tools_available() {
        return;
    }
    let t = Tmp::new("source");
    let show = |m: &str| {
        format!(
            "grep ' {m} ' /proc/self/mounts | cut -d' ' -f1,3; \
             grep ' {m} ' /proc/self/mounts | cut -d' ' -f4 | tr , '\\n' | grep -x -e nodev -e nosuid | tr '\\n' ' '; \
             echo; umount {m}"
        )
    };
    let out = in_private_ns(
        &t,
        &format!(
            "mount -t fuse.unionfs-mount app-root {m} -o lowerdir={l}; {s}; \
             mount -t fuse.unionfs-mount app-root {m} -o nodev,nosuid,lowerdir={l}; {s}",
            m = t.p("m"),
            l = t.p("l"),
            s = show(&t.p("m")),
        ),
    );
    // mount.fuse3 passes `dev,suid` unless told otherwise (as for any fstab mount), so the
    // first mount has neither nodev nor nosuid; the second asked for both.
    assert_eq!(
        out.lines().map(str::trim_end).collect::<Vec<_>>(),
        [
            "app-root fuse.unionfs-mount",
            "",
            "app-root fuse.unionfs-mount",
            "nosuid nodev"
        ],
        "{out}"
    );
}

#[test]
fn install_refuses_to_write_over_a_file_another_package_owns() {
    let dir = std::env::temp_dir().join(format!("unionfs-install-owned-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let (fake, prefix) = (dir.join("fake-bin"), dir.join("prefix"));
    fs::create_dir_all(&fake).unwrap();
    // A package database that says some package ships PREFIX/bin/unionfs-layer.
    let query = fake.join("dpkg-query");
    fs::write(
        &query,
        "#!/bin/sh\ncase \"$3\" in */bin/unionfs-layer) echo \"otherpkg: $3\"; exit 0;; esac\n\
         echo \"dpkg-query: no path found matching pattern $3\" >&2; exit 1\n",
    )
    .unwrap();
    fs::set_permissions(&query, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let o = Command::new(INSTALL)
        .arg("--prefix")
        .arg(&prefix)
        .arg("--bin-dir")
        .arg(bin_dir())
        .env("PATH", path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let _ = fs::remove_dir_all(&dir);
    assert!(!o.status.success(), "installed over an owned file: {err}");
    let owned = format!(
        "{}/bin/unionfs-layer belongs to package otherpkg",
        prefix.display()
    );
    assert!(
        err.contains(&owned) && err.contains("nothing was installed"),
        "{err}"
    );
    assert!(
        !prefix.exists(),
        "the refused install wrote into {}",
        prefix.display()
    );
}

#[test]
fn install_checks_the_real_package_database_and_its_merged_usr_names() {
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: no dpkg-query on this machine");
        return;
    }
    if !Path::new("/sbin/mount.fuse3").exists() {
        eprintln!("skipping: needs mount.fuse3 from the fuse3 package");
        return;
    }
    // Debian records /sbin/mount.fuse3; on a merged-/usr system the same file is also
    // /usr/sbin/mount.fuse3, a name `dpkg-query -S` alone does not know: the script's check
    // must find the owner under both names, and none for our own destination.
    let script = format!(
        "source <(sed -n '/^aliases()/,/^}}/p;/^owner()/,/^}}/p' {INSTALL}); \
         owner /sbin/mount.fuse3; owner /usr/sbin/mount.fuse3; echo \"[$(owner /usr/local/bin/unionfs-mount)]\""
    );
    let o = Command::new("bash").args(["-c", &script]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["fuse3", "fuse3", "[]"],
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
