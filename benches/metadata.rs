//! Metadata micro-benchmarks, per operation, kernel overlayfs / unionfs / fuse-overlayfs in the
//! same run (layers on a tmpfs), plus the layer model's lookup cost against stack depth (no
//! mount).
//!
//!     cargo bench --bench metadata          # full counts (root: it mounts)
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a few iterations of each,
//! to keep the benchmark itself working; its numbers then mean nothing. scripts/bench.sh has
//! the whole-workload table of the README.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use unionfs::layer::resolve::{self, DirSet};
use unionfs::layer::{Stack, StackConfig};
use unionfs::mount::MountConfig;

struct Scale {
    files: usize,
    reps: usize,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let scale = if full {
        Scale {
            files: 5000,
            reps: 20000,
        }
    } else {
        Scale {
            files: 50,
            reps: 20,
        }
    };
    let root = std::env::temp_dir().join(format!("unionfs-bench-meta-{}", std::process::id()));
    fs::create_dir_all(&root).expect("temp dir");
    lookup_depth(&root, &scale);
    if nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists() {
        // On a private tmpfs: the round trips, not a disk (or ext4's allocator state after the
        // previous implementation's deletes), should decide the numbers.
        let ram = root.join("ram");
        fs::create_dir_all(&ram).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &ram,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1g"),
        )
        .expect("mounting a tmpfs for the benchmark");
        per_op(&ram, &scale);
        let _ = nix::mount::umount2(&ram, nix::mount::MntFlags::MNT_DETACH);
    } else if std::env::var("UNIONFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("UNIONFS_REQUIRE_FUSE=1 but this machine cannot mount (needs root and /dev/fuse)");
    } else {
        println!("\nper-operation table skipped: mounting needs root and /dev/fuse");
    }
    let _ = fs::remove_dir_all(&root);
}

/// Time per call of `f`, in microseconds.
fn per_call(reps: usize, mut f: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for i in 0..reps {
        f(i);
    }
    t.elapsed().as_secs_f64() * 1e6 / reps as f64
}

/// `resolve::lookup` of a name held by the bottom layer, against the number of layers above
/// it: with the per-directory name index the cost must stay flat.
fn lookup_depth(root: &Path, scale: &Scale) {
    println!("layer model: lookup of a name in the bottom layer (no mount, warm caches)\n");
    println!("| layers | us per lookup |");
    println!("|---|---|");
    for n in [1usize, 4, 16, 64, 128] {
        let base = root.join(format!("depth{n}"));
        let lowers: Vec<PathBuf> = (0..n).map(|i| base.join(format!("L{i}"))).collect();
        for (i, l) in lowers.iter().enumerate() {
            fs::create_dir_all(l.join("d")).unwrap();
            for j in 0..20 {
                fs::write(l.join(format!("d/l{i}_{j}")), b"x").unwrap();
            }
        }
        let stack = Stack::open(&StackConfig {
            lowers: lowers.clone(),
            upper: None,
            workdir: None,
        })
        .expect("stack");
        let set = DirSet::open(&stack, b"d", &(0..n).collect::<Vec<_>>()).expect("dirset");
        let name = format!("l{}_7", n - 1).into_bytes();
        let us = per_call(scale.reps, |_| {
            let f = resolve::lookup(&stack, &set, &name).unwrap();
            assert!(f.is_some());
        });
        println!("| {n} | {us:.2} |");
    }
}

/// The three implementations over one lower of `files` files and an empty upper.
fn per_op(root: &Path, scale: &Scale) {
    let lower = root.join("lower");
    fs::create_dir_all(lower.join("d")).unwrap();
    fs::create_dir_all(lower.join("m")).unwrap();
    for i in 0..scale.files {
        fs::write(lower.join(format!("d/f{i}")), b"data").unwrap();
        fs::write(lower.join(format!("m/f{i}")), b"data").unwrap();
    }
    let ops: [(&str, Op); 6] = [
        ("stat (warm)", op_stat),
        ("open+close (read)", op_open),
        ("create+close", op_create),
        ("unlink (upper file)", op_unlink),
        ("chmod (lower file: copy-up)", op_chmod),
        ("readdir (files in one dir)", op_readdir),
    ];
    let mut impls = vec!["kernel", "unionfs"];
    if Command::new("fuse-overlayfs")
        .arg("--version")
        .output()
        .is_ok()
    {
        impls.push("fuse-overlayfs");
    }
    let mut rows: Vec<Vec<f64>> = vec![Vec::new(); ops.len()];
    for imp in &impls {
        let m = Mounted::new(imp, root, &lower);
        for (k, (_, op)) in ops.iter().enumerate() {
            rows[k].push(op(&m.mnt, scale));
        }
    }
    println!(
        "\nper operation, us (ratio = kernel time / time); {} files, {} iterations\n",
        scale.files, scale.reps
    );
    print!("| operation |");
    for imp in &impls {
        print!(" {imp} |");
        if *imp != "kernel" {
            print!(" ratio |");
        }
    }
    println!();
    println!("|---|{}", "---|".repeat(impls.len() * 2 - 1));
    for (k, (label, _)) in ops.iter().enumerate() {
        print!("| {label} |");
        for (i, v) in rows[k].iter().enumerate() {
            print!(" {v:.1} |");
            if i > 0 {
                print!(" {:.2} |", rows[k][0] / v);
            }
        }
        println!();
    }
}

type Op = fn(&Path, &Scale) -> f64;

fn op_stat(m: &Path, s: &Scale) -> f64 {
    let p = m.join("d/f1");
    fs::metadata(&p).unwrap();
    per_call(s.reps, |_| {
        fs::symlink_metadata(&p).unwrap();
    })
}

fn op_open(m: &Path, s: &Scale) -> f64 {
    let p = m.join("d/f2");
    per_call(s.reps, |_| {
        drop(fs::File::open(&p).unwrap());
    })
}

fn op_create(m: &Path, s: &Scale) -> f64 {
    fs::create_dir_all(m.join("new")).unwrap();
    per_call(s.files, |i| {
        drop(fs::File::create(m.join(format!("new/c{i}"))).unwrap());
    })
}

fn op_unlink(m: &Path, s: &Scale) -> f64 {
    per_call(s.files, |i| {
        fs::remove_file(m.join(format!("new/c{i}"))).unwrap();
    })
}

fn op_chmod(m: &Path, s: &Scale) -> f64 {
    per_call(s.files, |i| {
        let p = m.join(format!("m/f{i}"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    })
}

fn op_readdir(m: &Path, s: &Scale) -> f64 {
    let reps = (s.reps / s.files.max(1)).max(3);
    let us = per_call(reps, |_| {
        assert_eq!(fs::read_dir(m.join("d")).unwrap().count(), s.files);
    });
    us / s.files as f64
}

/// One mounted implementation; unmounted on drop.
struct Mounted {
    imp: &'static str,
    mnt: PathBuf,
    guard: Option<unionfs::mount::MountGuard>,
}

impl Mounted {
    fn new(imp: &'static str, root: &Path, lower: &Path) -> Mounted {
        let base = root.join(imp);
        let (upper, work, mnt) = (base.join("u"), base.join("w"), base.join("m"));
        for d in [&upper, &work, &mnt] {
            fs::create_dir_all(d).unwrap();
        }
        let mut guard = None;
        match imp {
            "unionfs" => {
                let cfg = MountConfig::new(vec![lower.to_path_buf()], Some(upper));
                guard = Some(cfg.mount(&mnt).expect("mounting unionfs"));
            }
            _ => {
                let opts = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.display(),
                    upper.display(),
                    work.display()
                );
                let ok = if imp == "kernel" {
                    Command::new("mount")
                        .args(["-t", "overlay", "overlay", "-o", &opts])
                        .arg(&mnt)
                        .status()
                } else {
                    Command::new("fuse-overlayfs")
                        .args(["-o", &opts])
                        .arg(&mnt)
                        .status()
                };
                assert!(ok.is_ok_and(|s| s.success()), "mounting {imp}");
            }
        }
        Mounted { imp, mnt, guard }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        match self.guard.take() {
            Some(g) => {
                let _ = g.unmount();
            }
            None => {
                let c = CString::new(self.mnt.as_os_str().as_encoded_bytes()).unwrap_or_default();
                if let Err(e) = nix::mount::umount2(c.as_c_str(), nix::mount::MntFlags::MNT_DETACH)
                {
                    eprintln!("unmounting {} at {}: {e}", self.imp, self.mnt.display());
                }
            }
        }
    }
}
