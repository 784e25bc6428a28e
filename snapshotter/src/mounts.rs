//! The mounts handed to containerd for a snapshot, as fuse-overlayfs-snapshotter shapes them:
//! a bind mount where no union is needed (no parent; a view of one layer), otherwise a
//! `fuse3.unionfs-mount` union, which containerd mounts through `mount.fuse3` (it runs the
//! program `unionfs-mount` found on mount.fuse3's fixed PATH).

use std::path::PathBuf;

use containerd_snapshots::api::types::Mount;

use crate::layout::Layout;
use crate::store::Kind;

/// The mount type containerd hands to `mount.fuse3`, which runs `unionfs-mount`.
pub const UNION_TYPE: &str = "fuse3.unionfs-mount";

/// How unions are mounted.
#[derive(Debug, Clone, Default)]
pub struct MountStyle {
    /// Add `shared=SOCKET`: every union is handed to one unionfs-mount server process at
    /// SOCKET instead of running a daemon of its own (`None`: one daemon per union).
    pub shared: Option<PathBuf>,
}

/// The mounts of snapshot `id` of `kind` whose parents are `lowers` (directory numbers,
/// nearest first).
pub fn mounts(
    layout: &Layout,
    style: &MountStyle,
    kind: Kind,
    id: u64,
    lowers: &[u64],
) -> Vec<Mount> {
    let bind = |dir: PathBuf, ro: bool| Mount {
        r#type: "bind".into(),
        source: dir.to_string_lossy().into_owned(),
        target: String::new(),
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    };
    let read_only = kind != Kind::Active;
    match (lowers, read_only) {
        // Nothing to merge: the snapshot's own directory (empty for a view of nothing).
        ([], _) => vec![bind(layout.fs(id), read_only)],
        // A view of one layer is that layer, read-only.
        ([only], true) => vec![bind(layout.fs(*only), true)],
        _ => {
            let lower_dirs: Vec<PathBuf> = lowers.iter().map(|l| layout.fs(*l)).collect();
            let mut options = vec![format!(
                "lowerdir={}",
                unionfs::options::join_layers(&lower_dirs)
            )];
            if read_only {
                // No upper: unionfs-mount mounts a read-only union.
                options.push("ro".into());
            } else {
                options.push(format!("upperdir={}", layout.fs(id).display()));
                options.push(format!("workdir={}", layout.work(id).display()));
            }
            if let Some(sock) = &style.shared {
                options.push(format!("shared={}", sock.display()));
            }
            vec![Mount {
                r#type: UNION_TYPE.into(),
                source: "unionfs".into(),
                target: String::new(),
                options,
            }]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::path::Path;

    fn layout() -> Layout {
        Layout::new(Path::new("/var/lib/us")).unwrap()
    }

    /// What unionfs-mount makes of a union mount, called the way mount.fuse3 calls it.
    fn parsed(m: &Mount) -> unionfs::options::Invocation {
        let mut argv: Vec<OsString> = vec!["unionfs-mount".into(), m.source.clone().into()];
        argv.push("/mnt/target".into());
        for o in &m.options {
            argv.push("-o".into());
            argv.push(o.into());
        }
        let args = unionfs::options::parse(argv).expect("unionfs-mount accepts the arguments");
        unionfs::options::parse_args(args).expect("unionfs-mount accepts the options")
    }

    #[test]
    fn no_parent_is_a_bind_of_the_snapshot_itself() {
        let m = mounts(&layout(), &MountStyle::default(), Kind::Active, 7, &[]);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].r#type.as_str(), m[0].source.as_str()),
            ("bind", "/var/lib/us/snapshots/7/fs")
        );
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let v = mounts(&layout(), &MountStyle::default(), Kind::View, 7, &[]);
        assert_eq!(v[0].options, ["ro", "rbind"]);
    }

    #[test]
    fn a_view_of_one_layer_binds_that_layer_read_only() {
        let m = mounts(&layout(), &MountStyle::default(), Kind::View, 9, &[3]);
        assert_eq!(m[0].source, "/var/lib/us/snapshots/3/fs");
        assert_eq!(m[0].options, ["ro", "rbind"]);
    }

    #[test]
    fn an_active_snapshot_on_layers_is_a_union_unionfs_mount_reads_back() {
        let style = MountStyle {
            shared: Some("/run/us.sock".into()),
        };
        let m = mounts(&layout(), &style, Kind::Active, 5, &[4, 2, 1]);
        assert_eq!(m[0].r#type, "fuse3.unionfs-mount");
        let inv = parsed(&m[0]);
        let fs = |i: u64| PathBuf::from(format!("/var/lib/us/snapshots/{i}/fs"));
        assert_eq!(inv.config.lowers, [fs(4), fs(2), fs(1)]);
        assert_eq!(inv.config.upper, Some(fs(5)));
        assert_eq!(
            inv.config.workdir,
            Some("/var/lib/us/snapshots/5/work".into())
        );
        assert_eq!(inv.shared, Some("/run/us.sock".into()));
        assert!(!inv.config.read_only);
        assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    }

    #[test]
    fn a_view_of_several_layers_is_a_read_only_union_and_shared_is_optional() {
        let m = mounts(&layout(), &MountStyle::default(), Kind::View, 5, &[4, 2]);
        let inv = parsed(&m[0]);
        assert_eq!(inv.config.lowers.len(), 2);
        assert_eq!(inv.config.upper, None);
        assert!(inv.config.read_only);
        assert_eq!(inv.shared, None);
    }
}
