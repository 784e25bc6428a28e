//! The command line's parsing: both forms, every option, and the messages of bad input.

use super::*;

fn inv(args: &[&str]) -> Result<Invocation> {
    let mut v = vec!["unionfs-mount".to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    parse_args(parse(v.into_iter().map(OsString::from)).expect("clap"))
}

#[test]
fn colon_escapes_split_layers() {
    assert_eq!(
        split_layers("/a\\:b:/c"),
        vec![PathBuf::from("/a:b"), PathBuf::from("/c")]
    );
    assert_eq!(
        split_layers("/a::/b:"),
        vec![PathBuf::from("/a"), PathBuf::from("/b")]
    );
}

#[test]
fn join_layers_is_read_back_by_split_layers() {
    let layers = [
        PathBuf::from("/a:b"),
        PathBuf::from("/c\\d"),
        PathBuf::from("/e"),
    ];
    let joined = join_layers(&layers);
    assert_eq!(joined, "/a\\:b:/c\\\\d:/e");
    assert_eq!(split_layers(&joined), layers);
}

#[test]
fn on_off_options_and_their_errors() {
    let i = inv(&[
        "-o",
        "uring=off,metacopy,passthrough=auto",
        "/l",
        "/u",
        "/m",
    ])
    .unwrap();
    assert!(i.config.uring == Uring::Off && i.config.metacopy && i.config.passthrough);
    let i = inv(&["-o", "uring=auto,metacopy=off", "/l", "/u", "/m"]).unwrap();
    assert!(i.config.uring == Uring::Auto && !i.config.metacopy);
    let i = inv(&["-o", "uring=on", "/l", "/u", "/m"]).unwrap();
    assert_eq!(i.config.uring, Uring::On);
    assert_eq!(
        i.config.max_nodes,
        MountConfig::new(Vec::new(), None).max_nodes
    );
    let i = inv(&["-o", "max_nodes=0", "/l", "/u", "/m"]).unwrap();
    assert_eq!(i.config.max_nodes, 0);
    for (opt, fix) in [
        ("uring=maybe", "use uring=auto, uring=on or uring=off"),
        ("metacopy=auto", "use metacopy=on or metacopy=off"),
        ("passthrough=1", "use passthrough=auto or passthrough=off"),
        ("max_nodes=lots", "give a whole number of inodes"),
    ] {
        let e = inv(&["-o", opt, "/l", "/u", "/m"]).unwrap_err().to_string();
        assert!(e.contains(opt) && e.contains(fix), "{opt}: {e}");
    }
}

#[test]
fn positional_form() {
    let i = inv(&["/l1:/l2", "/u", "/m"]).unwrap();
    assert_eq!(
        i.config.lowers,
        vec![PathBuf::from("/l1"), PathBuf::from("/l2")]
    );
    assert_eq!(i.config.upper, Some(PathBuf::from("/u")));
    assert_eq!(i.mountpoint, PathBuf::from("/m"));
    let ro = inv(&["/l1", "/m"]).unwrap();
    assert!(ro.config.upper.is_none());
}

#[test]
fn podman_form_with_trailing_comma_and_volatile() {
    let i = inv(&[
        "-o",
        "lowerdir=/a:/b,upperdir=/u,workdir=/w,,volatile",
        "/m",
    ])
    .unwrap();
    assert_eq!(i.config.lowers.len(), 2);
    assert_eq!(i.config.workdir, Some(PathBuf::from("/w")));
    assert!(
        i.config.volatile && i.warnings.is_empty(),
        "{:?}",
        i.warnings
    );
}

#[test]
fn flush_behind_sizes_and_off() {
    let at = |o: &str| inv(&["-o", o, "/l", "/u", "/m"]).map(|i| i.config.flush_behind);
    assert_eq!(at("flush_behind=0").unwrap(), Some(0));
    assert_eq!(at("flush_behind=4096").unwrap(), Some(4096));
    assert_eq!(at("flush_behind=8M").unwrap(), Some(8 << 20));
    assert_eq!(at("flush_behind=2g").unwrap(), Some(2 << 30));
    assert_eq!(at("flush_behind=off").unwrap(), None);
    let default = inv(&["/l", "/u", "/m"]).unwrap().config.flush_behind;
    assert_eq!(default, Some(1 << 20));
    for bad in [
        "flush_behind=1X",
        "flush_behind=",
        "flush_behind=-1",
        "flush_behind=99999999999G",
    ] {
        let e = at(bad).unwrap_err().to_string();
        assert!(
            e.contains("flush_behind=") && e.contains("off"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn fuse_overlayfs_options() {
    let i = inv(&[
        "-o",
        "uidmapping=0:1000:1:1:100000:65536,gidmapping=0:2000:1,static_nlink,noacl,fsync=0",
        "/l",
        "/u",
        "/m",
    ])
    .unwrap();
    let c = &i.config;
    assert_eq!(
        (c.owners.shown_uid(1), c.owners.stored_gid(2000)),
        (100000, 0)
    );
    assert!(c.static_nlink && !c.acl && c.volatile && !c.owners.squashes());
    assert!(i.warnings.is_empty(), "{:?}", i.warnings);
    let d = inv(&["/l", "/u", "/m"]).unwrap().config;
    assert!(d.owners.is_identity() && !d.static_nlink && d.acl && !d.volatile);
    // squash_to_uid/gid take precedence over squash_to_root, in any order.
    let i = inv(&["-o", "squash_to_uid=7,squash_to_root", "/l", "/u", "/m"]).unwrap();
    let o = &i.config.owners;
    assert_eq!((o.shown_uid(5), o.shown_gid(5)), (7, 0));
    let i = inv(&["-o", "squash_to_gid=9", "/l", "/u", "/m"]).unwrap();
    let o = &i.config.owners;
    assert_eq!((o.shown_uid(5), o.shown_gid(5)), (5, 9));
    for (opt, fix) in [
        ("uidmapping=0:1000", "CONTAINER:HOST:COUNT"),
        ("gidmapping=0:1:5:2:3:5", "overlap"),
        ("squash_to_uid=root", "numeric id"),
        ("fsync=2", "fsync=0"),
    ] {
        let e = inv(&["-o", opt, "/l", "/u", "/m"]).unwrap_err().to_string();
        assert!(
            e.contains(opt.split('=').next().unwrap()) && e.contains(fix),
            "{opt}: {e}"
        );
    }
}

#[test]
fn mount_fuse3_form_with_generic_options() {
    let i = inv(&[
        "unionfs",
        "/m",
        "-o",
        "rw,dev,suid,noatime,lowerdir=/a,upperdir=/u",
    ])
    .unwrap();
    assert_eq!(i.mountpoint, PathBuf::from("/m"));
    assert!(i.config.dev);
    assert!(i.warnings.is_empty());
}

#[test]
fn source_argument_is_the_fsname_unless_fsname_is_given() {
    let i = inv(&["-o", "lowerdir=/a", "my-root", "/m"]).unwrap();
    assert_eq!(i.config.fsname, "my-root");
    let i = inv(&["-o", "lowerdir=/a,fsname=explicit", "my-root", "/m"]).unwrap();
    assert_eq!(i.config.fsname, "explicit");
    let i = inv(&[
        "-o",
        "fsname=explicit",
        "-o",
        "lowerdir=/a",
        "my-root",
        "/m",
    ])
    .unwrap();
    assert_eq!(i.config.fsname, "explicit");
    let i = inv(&["-o", "lowerdir=/a", "/m"]).unwrap();
    assert_eq!(i.config.fsname, crate::mount::DEFAULT_FSNAME);
}

#[test]
fn mount_helper_flags_are_accepted() {
    let i = inv(&[
        "unionfs",
        "/m",
        "-n",
        "-s",
        "-v",
        "-t",
        "fuse.unionfs-mount",
        "-o",
        "lowerdir=/a",
    ]);
    assert_eq!(i.unwrap().mountpoint, PathBuf::from("/m"));
}

#[test]
fn bad_inputs_say_what_to_do() {
    let e = inv(&["/m"]).unwrap_err().to_string();
    assert!(e.contains("LOWER1"), "{e}");
    let e = inv(&["-o", "lowerdir=", "/m"]).unwrap_err().to_string();
    assert!(e.contains("needs a value"), "{e}");
    let e = inv(&["-o", "threads=x,lowerdir=/a", "/m"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("whole number"), "{e}");
}
