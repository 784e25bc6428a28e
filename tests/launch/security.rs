//! Seccomp and capabilities: the default filter denies what podman's does (EPERM inside),
//! `--seccomp unconfined` and `--cap-add` let it through, a JSON profile is applied, a broken
//! one is refused before anything starts; `--cap-add`/`--cap-drop`/`--privileged` change the
//! capability sets.

use std::time::{Duration, Instant};

use crate::common::*;

fn base_run(extra: &[&str], cmd: &str) -> Outcome {
    let mut a = args(extra);
    a.push("--tmp-upper".into());
    a.push(base_lower().to_string_lossy().into_owned());
    a.extend(args(&["--", "/bin/sh", "-c", cmd]));
    run(&a)
}

/// `Key:\tvalue` of /proc/self/status as the command saw it.
fn status_field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in {out:?}"))
}

const PROBE: &str = "grep -E 'Seccomp|CapEff' /proc/self/status; \
    unshare -U true 2>&1 && echo userns-ok; unshare -m true 2>&1 && echo mountns-ok; true";

#[test]
fn the_default_filter_denies_namespaces_and_unconfined_or_cap_add_allows_them() {
    if !require_root() || !require_union() {
        return;
    }
    // unshare(CLONE_NEWUSER) needs no capability: only the filter stands in its way.
    let o = base_run(&[], PROBE);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(status_field(&o.stdout, "Seccomp"), "2", "{o:?}");
    assert!(
        o.stdout
            .contains("unshare(0x10000000): Operation not permitted"),
        "{o:?}"
    );
    assert!(!o.stdout.contains("userns-ok"), "{o:?}");

    let o = base_run(&["--seccomp", "unconfined"], PROBE);
    assert_eq!(status_field(&o.stdout, "Seccomp"), "0", "{o:?}");
    assert!(o.stdout.contains("userns-ok"), "{o:?}");
    // Without CAP_SYS_ADMIN the kernel itself still refuses a mount namespace.
    assert!(!o.stdout.contains("mountns-ok"), "{o:?}");

    // With CAP_SYS_ADMIN the default filter lets namespaces through, as podman's does.
    let o = base_run(&["--cap-add", "SYS_ADMIN"], PROBE);
    assert_eq!(status_field(&o.stdout, "Seccomp"), "2", "{o:?}");
    assert!(
        o.stdout.contains("userns-ok") && o.stdout.contains("mountns-ok"),
        "{o:?}"
    );
}

#[test]
fn a_json_profile_is_applied_and_a_broken_one_refused_before_anything_starts() {
    if !require_root() || !require_union() {
        return;
    }
    let t = TempDir::new("seccomp");
    let good = t.join("deny-mkdir.json");
    std::fs::write(
        &good,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
              {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
              {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
               "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]},
              {"names": ["fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO",
               "args": [{"index": 2, "value": 511, "op": "SCMP_CMP_EQ"}]}
            ]}"#,
    )
    .unwrap();
    let o = base_run(
        &["--seccomp", &good.to_string_lossy()],
        "mkdir /tmp/d 2>&1; touch /tmp/f; chmod 755 /tmp/f && echo chmod-755-ok; \
         chmod 777 /tmp/f 2>&1; true",
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("Permission denied"), "errnoRet 13: {o:?}");
    assert!(o.stdout.contains("chmod-755-ok"), "{o:?}");
    assert!(
        o.stdout.contains("Operation not permitted"),
        "argument rule (mode 0777): {o:?}"
    );

    let broken = t.join("broken.json");
    std::fs::write(
        &broken,
        "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n \"syscalls\": [ {\"names\": [\"mkdir\"],, } ]}",
    )
    .unwrap();
    let staging_before = stale_staging();
    let started = Instant::now();
    let marker = t.join("ran");
    let o = base_run(
        &["--seccomp", &broken.to_string_lossy()],
        &format!("touch {}", marker.display()),
    );
    assert_eq!(o.code, 125, "{o:?}");
    assert!(
        o.stderr.contains("broken.json") && o.stderr.contains("line 2"),
        "{o:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!marker.exists());
    assert_eq!(stale_staging(), staging_before);
    let o = base_run(&["--seccomp", "/nonexistent/profile.json"], "true");
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.stderr.contains("/nonexistent/profile.json"), "{o:?}");
}

#[test]
fn cap_add_cap_drop_and_privileged_change_the_sets() {
    if !require_root() || !require_union() {
        return;
    }
    let caps = |extra: &[&str]| {
        let o = base_run(
            extra,
            "grep -E 'CapEff|Seccomp' /proc/self/status; touch /tmp/f; \
             chown 5 /tmp/f 2>/dev/null && echo chown-ok; echo keys=$(stat -c %F /proc/keys)",
        );
        assert_eq!(o.code, 0, "{o:?}");
        let eff = u64::from_str_radix(&status_field(&o.stdout, "CapEff"), 16).unwrap();
        (eff, o.stdout)
    };
    let bit = |c: caps::Capability| 1u64 << c.index();
    let (default, out) = caps(&[]);
    assert_eq!(default, 0xa80425fb, "the default set changed: {out}");
    assert!(out.contains("chown-ok"));
    assert!(out.contains("keys=character special file"), "{out}");
    let (eff, out) = caps(&["--cap-drop", "CHOWN", "--cap-add", "net_admin"]);
    assert_eq!(
        eff,
        (default & !bit(caps::Capability::CAP_CHOWN)) | bit(caps::Capability::CAP_NET_ADMIN),
        "{out}"
    );
    assert!(
        !out.contains("chown-ok"),
        "chown worked without CAP_CHOWN: {out}"
    );
    let (eff, out) = caps(&["--cap-drop", "ALL", "--cap-add", "KILL"]);
    assert_eq!(eff, bit(caps::Capability::CAP_KILL), "{out}");
    // --privileged: every capability the launcher has, no filter, /proc/keys not masked.
    let ours = caps::read(None, caps::CapSet::Permitted)
        .unwrap()
        .iter()
        .fold(0u64, |m, c| m | bit(*c));
    let (eff, out) = caps(&["--privileged"]);
    assert_eq!(eff, ours, "{out}");
    assert_eq!(status_field(&out, "Seccomp"), "0", "{out}");
    assert!(out.contains("keys=regular empty file"), "{out}");
    let o = run(&args(&[
        "--cap-add",
        "SYS_WIZARD",
        "--tmp-upper",
        "/",
        "--",
        "true",
    ]));
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("not a capability"), "{o:?}");
}
