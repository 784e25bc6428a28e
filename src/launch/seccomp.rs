//! The container's seccomp filter: a default profile with the effect of podman's and Docker's,
//! or an OCI/Docker-format JSON profile (`--seccomp PATH`), or none (`--seccomp unconfined`).
//!
//! Profiles are read and compiled by the launcher before any process or host object exists, so
//! a broken profile is refused at once; the container init loads the compiled filter as its last
//! step before exec (after no_new_privs, so no privilege is needed for it). Filters are built
//! and loaded with libseccomp, as runc and crun do: it resolves syscall names per architecture
//! (native plus its 32-bit ABIs, which a container can also call) and orders the rules.
//!
//! The default profile allows everything but the calls that reach the host kernel's global
//! state or its attack surface and that no container needs, each denied with EPERM unless the
//! container holds the capability that Docker's profile asks for it (so `--cap-add SYS_ADMIN`
//! lets `mount` and `unshare` through, as in podman). Docker writes its profile as an allowlist;
//! this one denies the calls Docker's leaves out, which has the same effect for every syscall
//! the host kernel knows and lets calls newer than the profile work.

use std::path::Path;

use caps::{Capability, CapsHashSet};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde_json::Value;

use super::Error;

/// Which filter the container gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SeccompChoice {
    /// The built-in profile (see the module documentation).
    #[default]
    Default,
    /// No filter at all.
    Unconfined,
    /// An OCI runtime-spec or Docker-format JSON profile.
    Profile(std::path::PathBuf),
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the call through.
    Allow,
    /// Fail the call with this errno.
    Errno(i32),
    /// Kill the calling thread.
    KillThread,
    /// Kill the whole process.
    KillProcess,
    /// Send SIGSYS.
    Trap,
    /// Allow and log.
    Log,
    /// Notify a tracer with this value.
    Trace(u16),
}

impl Action {
    fn scmp(self) -> ScmpAction {
        match self {
            Action::Allow => ScmpAction::Allow,
            Action::Errno(e) => ScmpAction::Errno(e),
            Action::KillThread => ScmpAction::KillThread,
            Action::KillProcess => ScmpAction::KillProcess,
            Action::Trap => ScmpAction::Trap,
            Action::Log => ScmpAction::Log,
            Action::Trace(v) => ScmpAction::Trace(v),
        }
    }
}

/// One comparison of a syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCmp {
    /// Argument index, 0 to 5.
    pub index: u32,
    /// The comparison (for `MaskedEqual`, the mask is `value` and the datum `value_two`).
    pub op: ScmpCompareOp,
    /// The value compared against.
    pub value: u64,
}

/// A set of syscalls with an action, the conditions on their arguments, and when it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Syscall names (unknown ones are skipped, as runc does).
    pub names: Vec<String>,
    /// What happens on a match.
    pub action: Action,
    /// Argument conditions, all of which must hold.
    pub args: Vec<ArgCmp>,
    /// The rule applies only when the container holds all of these.
    pub caps_all: Vec<Capability>,
    /// The rule applies only when the container holds none of these.
    pub caps_none: Vec<Capability>,
    /// The rule applies only on these architectures (empty: all).
    pub arches: Vec<String>,
    /// The rule applies only on kernels at least this version.
    pub min_kernel: Option<(u32, u32)>,
}

impl Rule {
    fn deny(names: &[&str], unless: Option<Capability>) -> Rule {
        Rule {
            names: names.iter().map(|s| s.to_string()).collect(),
            action: Action::Errno(libc::EPERM),
            args: Vec::new(),
            caps_all: Vec::new(),
            caps_none: unless.into_iter().collect(),
            arches: Vec::new(),
            min_kernel: None,
        }
    }
}

/// A whole profile: the default action, the architectures, the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// What happens to a syscall no rule matches.
    pub default: Action,
    /// Extra architectures (libseccomp names, `SCMP_ARCH_*`) besides the native one.
    pub arches: Vec<String>,
    /// The rules, in the profile's order.
    pub rules: Vec<Rule>,
}

/// Syscalls the default profile denies whatever the capabilities: the kernel's global state
/// (kexec, the keyring, swap), obsolete or unused interfaces with a history of bugs.
pub const ALWAYS_DENIED: [&str; 19] = [
    "kexec_load",
    "kexec_file_load",
    "keyctl",
    "add_key",
    "request_key",
    "swapon",
    "swapoff",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "vm86",
    "vm86old",
    "lookup_dcookie",
    "get_kernel_syms",
    "create_module",
    "query_module",
    "open_by_handle_at",
];

/// Syscalls the default profile denies unless the container holds the capability.
pub fn denied_unless_cap() -> Vec<(Capability, &'static [&'static str])> {
    use Capability::*;
    vec![
        (
            CAP_SYS_ADMIN,
            &[
                "mount",
                "umount",
                "umount2",
                "mount_setattr",
                "move_mount",
                "open_tree",
                "fsopen",
                "fsconfig",
                "fsmount",
                "fspick",
                "pivot_root",
                "unshare",
                "setns",
                "name_to_handle_at",
                "fanotify_init",
                "quotactl",
                "quotactl_fd",
            ],
        ),
        (CAP_SYS_BOOT, &["reboot"]),
        (
            CAP_SYS_MODULE,
            &["init_module", "finit_module", "delete_module"],
        ),
        (CAP_SYS_PACCT, &["acct"]),
        (
            CAP_SYS_PTRACE,
            &[
                "kcmp",
                "pidfd_getfd",
                "process_madvise",
                "process_vm_readv",
                "process_vm_writev",
                "userfaultfd",
            ],
        ),
        (CAP_SYS_RAWIO, &["iopl", "ioperm"]),
        (
            CAP_SYS_TIME,
            &[
                "settimeofday",
                "stime",
                "clock_settime",
                "clock_settime64",
                "clock_adjtime",
                "clock_adjtime64",
            ],
        ),
        (
            CAP_SYS_NICE,
            &[
                "get_mempolicy",
                "mbind",
                "set_mempolicy",
                "set_mempolicy_home_node",
                "move_pages",
            ],
        ),
        (CAP_SYSLOG, &["syslog"]),
        (CAP_BPF, &["bpf"]),
        (CAP_PERFMON, &["perf_event_open"]),
    ]
}

/// clone(2) flags that make namespaces: denied without CAP_SYS_ADMIN, as `unshare` is.
const CLONE_NS_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

impl Profile {
    /// The built-in profile.
    pub fn builtin() -> Profile {
        let mut rules = vec![Rule::deny(&ALWAYS_DENIED, None)];
        for (cap, names) in denied_unless_cap() {
            rules.push(Rule::deny(names, Some(cap)));
        }
        // clone's flags are a register: one rule per namespace flag. clone3 passes them in
        // memory a filter cannot read, so it answers ENOSYS and libc falls back to clone.
        for f in CLONE_NS_FLAGS {
            let mut r = Rule::deny(&["clone"], Some(Capability::CAP_SYS_ADMIN));
            // s390 swaps clone's first two arguments; everywhere else flags come first.
            r.args.push(ArgCmp {
                index: 0,
                op: ScmpCompareOp::MaskedEqual(f),
                value: f,
            });
            rules.push(r);
        }
        let mut c3 = Rule::deny(&["clone3"], Some(Capability::CAP_SYS_ADMIN));
        c3.action = Action::Errno(libc::ENOSYS);
        rules.push(c3);
        Profile {
            default: Action::Allow,
            arches: Vec::new(),
            rules,
        }
    }

    /// Reads an OCI runtime-spec (`linux.seccomp`) or Docker/podman profile; `what` names it in
    /// errors.
    pub fn from_json(text: &str, what: &str) -> Result<Profile, Error> {
        let v: Value = serde_json::from_str(text).map_err(|e| {
            Error::msg(format!(
                "seccomp profile {what}: not valid JSON at line {}, column {}: {e}; fix the \
                 file or use --seccomp unconfined",
                e.line(),
                e.column()
            ))
        })?;
        let bad = |e: Error| e.context(format!("seccomp profile {what}"));
        let obj = v
            .as_object()
            .ok_or_else(|| bad(Error::msg("the top level must be an object")))?;
        let default = action_of(&v, "defaultAction", "defaultErrnoRet").map_err(bad)?;
        let mut arches: Vec<String> = strings(obj.get("architectures")).map_err(bad)?;
        if let Some(map) = obj.get("archMap").and_then(Value::as_array) {
            for m in map {
                arches.extend(strings(m.get("architecture")).map_err(bad)?);
                arches.extend(strings(m.get("subArchitectures")).map_err(bad)?);
            }
        }
        let mut rules = Vec::new();
        let calls = match obj.get("syscalls") {
            None | Some(Value::Null) => &Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(bad(Error::msg("\"syscalls\" must be a list"))),
        };
        for (i, c) in calls.iter().enumerate() {
            rules.push(rule(c).map_err(|e| bad(e.context(format!("syscalls[{i}]"))))?);
        }
        Ok(Profile {
            default,
            arches,
            rules,
        })
    }

    /// The profile `choice` names (read now, so a broken file stops the launch), or none.
    pub fn for_choice(choice: &SeccompChoice) -> Result<Option<Profile>, Error> {
        match choice {
            SeccompChoice::Default => Ok(Some(Profile::builtin())),
            SeccompChoice::Unconfined => Ok(None),
            SeccompChoice::Profile(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Error::msg(format!("--seccomp {}: cannot read it: {e}", p.display()))
                })?;
                Profile::from_json(&text, &p.display().to_string()).map(Some)
            }
        }
    }

    /// Builds the filter for a container holding `caps`.
    pub fn compile(&self, caps: &CapsHashSet) -> Result<Filter, Error> {
        let fail = |what: &str, e: libseccomp::error::SeccompError| {
            Error::msg(format!("building the seccomp filter: {what}: {e}"))
        };
        let mut ctx = ScmpFilterContext::new(self.default.scmp()).map_err(|e| fail("init", e))?;
        let native = ScmpArch::native();
        let mut arches: Vec<ScmpArch> = compat_arches(native);
        for a in &self.arches {
            match a.parse::<ScmpArch>() {
                Ok(a) if a != native && !arches.contains(&a) => arches.push(a),
                _ => {}
            }
        }
        for a in arches {
            // An architecture this libseccomp cannot filter for is one the kernel cannot run.
            let _ = ctx.add_arch(a);
        }
        let kernel = kernel_version();
        for r in &self.rules {
            if r.action == self.default
                || !r.caps_all.iter().all(|c| caps.contains(c))
                || r.caps_none.iter().any(|c| caps.contains(c))
                || (!r.arches.is_empty() && !r.arches.iter().any(|a| arch_matches(a, native)))
                || r.min_kernel.is_some_and(|m| kernel < m)
            {
                continue;
            }
            let cmps: Vec<ScmpArgCompare> = r
                .args
                .iter()
                .map(|a| ScmpArgCompare::new(a.index, a.op, a.value))
                .collect();
            // A rule compares each argument once; several conditions on one argument are
            // alternatives, as runc reads them.
            let mut seen = std::collections::HashSet::new();
            let repeated = r.args.iter().any(|a| !seen.insert(a.index));
            for name in &r.names {
                let Ok(sc) = ScmpSyscall::from_name(name) else {
                    continue; // not a syscall of this architecture or libseccomp version
                };
                let res = if repeated {
                    cmps.iter().try_for_each(|c| {
                        ctx.add_rule_conditional(r.action.scmp(), sc, std::slice::from_ref(c))
                            .map(drop)
                    })
                } else {
                    ctx.add_rule_conditional(r.action.scmp(), sc, &cmps)
                        .map(drop)
                };
                res.map_err(|e| fail(&format!("rule for {name}"), e))?;
            }
        }
        Ok(Filter(ctx))
    }
}

/// A compiled filter, loaded by the container init just before exec.
pub struct Filter(ScmpFilterContext);

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filter")
    }
}

impl Filter {
    /// Installs the filter on the calling thread (no_new_privs must be set).
    pub fn load(&self) -> Result<(), Error> {
        self.0
            .load()
            .map_err(|e| Error::msg(format!("loading the seccomp filter: {e}")))
    }
}

/// The 32-bit ABIs a process of the native architecture can also call the kernel with.
fn compat_arches(native: ScmpArch) -> Vec<ScmpArch> {
    match native {
        ScmpArch::X8664 => vec![ScmpArch::X86, ScmpArch::X32],
        ScmpArch::Aarch64 => vec![ScmpArch::Arm],
        _ => Vec::new(),
    }
}

/// Whether a profile's architecture name (`amd64`, `x86_64`, `SCMP_ARCH_X86_64`) is `native`.
fn arch_matches(name: &str, native: ScmpArch) -> bool {
    let n = name.to_ascii_lowercase();
    let n = n.trim_start_matches("scmp_arch_");
    match native {
        ScmpArch::X8664 => matches!(n, "amd64" | "x86_64"),
        ScmpArch::Aarch64 => matches!(n, "arm64" | "aarch64"),
        ScmpArch::X86 => matches!(n, "386" | "x86" | "i386"),
        ScmpArch::Arm => n == "arm",
        _ => false,
    }
}

/// The running kernel's (major, minor).
fn kernel_version() -> (u32, u32) {
    let r = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_version(&r).unwrap_or((0, 0))
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn strings(v: Option<&Value>) -> Result<Vec<String>, Error> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| Error::msg(format!("expected a string, found {x}")))
            })
            .collect(),
        Some(o) => Err(Error::msg(format!(
            "expected a string or a list of strings, found {o}"
        ))),
    }
}

/// The action `obj[key]` names, with the errno in `obj[errno_key]` (EPERM when absent).
fn action_of(obj: &Value, key: &str, errno_key: &str) -> Result<Action, Error> {
    let errno = obj
        .get(errno_key)
        .and_then(Value::as_i64)
        .unwrap_or(libc::EPERM as i64) as i32;
    let name = obj
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::msg(format!("no \"{key}\"")))?;
    action(name, errno)
}

fn action(name: &str, errno: i32) -> Result<Action, Error> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_TRACE" => Action::Trace(errno as u16),
        other => {
            return Err(Error::msg(format!(
                "unknown action {other:?} (known: SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, \
                 SCMP_ACT_KILL_PROCESS, SCMP_ACT_TRAP, SCMP_ACT_LOG, SCMP_ACT_TRACE)"
            )))
        }
    })
}

fn caps_of(v: Option<&Value>) -> Result<Vec<Capability>, Error> {
    strings(v.and_then(|x| x.get("caps")))?
        .iter()
        .map(|c| {
            c.parse::<Capability>()
                .map_err(|_| Error::msg(format!("unknown capability {c:?}")))
        })
        .collect()
}

fn rule(c: &Value) -> Result<Rule, Error> {
    let mut names = strings(c.get("names"))?;
    names.extend(strings(c.get("name"))?);
    if names.is_empty() {
        return Err(Error::msg("no \"names\""));
    }
    let act = action_of(c, "action", "errnoRet")?;
    let mut args = Vec::new();
    if let Some(list) = c.get("args").filter(|a| !a.is_null()) {
        for a in list
            .as_array()
            .ok_or_else(|| Error::msg("\"args\" must be a list"))?
        {
            let num = |k: &str| a.get(k).and_then(Value::as_u64);
            let index = num("index")
                .filter(|i| *i < 6)
                .ok_or_else(|| Error::msg("arg \"index\" must be 0-5"))?
                as u32;
            let value =
                num("value").ok_or_else(|| Error::msg("arg without a numeric \"value\""))?;
            let two = num("valueTwo").unwrap_or(0);
            let op = a
                .get("op")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::msg("arg without \"op\""))?;
            let (op, value) = match op {
                "SCMP_CMP_NE" => (ScmpCompareOp::NotEqual, value),
                "SCMP_CMP_LT" => (ScmpCompareOp::Less, value),
                "SCMP_CMP_LE" => (ScmpCompareOp::LessOrEqual, value),
                "SCMP_CMP_EQ" => (ScmpCompareOp::Equal, value),
                "SCMP_CMP_GE" => (ScmpCompareOp::GreaterEqual, value),
                "SCMP_CMP_GT" => (ScmpCompareOp::Greater, value),
                "SCMP_CMP_MASKED_EQ" => (ScmpCompareOp::MaskedEqual(value), two),
                o => return Err(Error::msg(format!("unknown arg op {o:?}"))),
            };
            args.push(ArgCmp { index, op, value });
        }
    }
    let inc = c.get("includes");
    let exc = c.get("excludes");
    let min_kernel = match inc.and_then(|i| i.get("minKernel")).and_then(Value::as_str) {
        Some(k) => {
            Some(parse_version(k).ok_or_else(|| Error::msg(format!("bad minKernel {k:?}")))?)
        }
        None => None,
    };
    let mut arches = strings(inc.and_then(|i| i.get("arches")))?;
    // Excluded architectures: the rule applies everywhere but there.
    let excluded = strings(exc.and_then(|i| i.get("arches")))?;
    if excluded.iter().any(|a| arch_matches(a, ScmpArch::native())) {
        arches = vec!["none".into()];
    }
    Ok(Rule {
        names,
        action: act,
        args,
        caps_all: caps_of(inc)?,
        caps_none: caps_of(exc)?,
        arches,
        min_kernel,
    })
}

/// Whether `path` is the word `unconfined` rather than a file.
pub fn parse_choice(s: &str) -> SeccompChoice {
    match s {
        "unconfined" => SeccompChoice::Unconfined,
        "default" => SeccompChoice::Default,
        p => SeccompChoice::Profile(Path::new(p).to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_profile_denies_what_podman_denies() {
        let p = Profile::builtin();
        let denied = |name: &str, caps: &CapsHashSet| {
            p.rules.iter().any(|r| {
                r.names.iter().any(|n| n == name)
                    && r.args.is_empty()
                    && matches!(r.action, Action::Errno(_))
                    && !r.caps_none.iter().any(|c| caps.contains(c))
            })
        };
        let none = CapsHashSet::new();
        for n in [
            "kexec_load",
            "init_module",
            "finit_module",
            "delete_module",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "open_by_handle_at",
            "clock_settime",
            "settimeofday",
            "swapon",
            "reboot",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "clone3",
        ] {
            assert!(denied(n, &none), "{n} is not denied");
        }
        let admin: CapsHashSet = [Capability::CAP_SYS_ADMIN].into_iter().collect();
        assert!(!denied("mount", &admin) && !denied("unshare", &admin));
        assert!(denied("kexec_load", &admin) && denied("bpf", &admin));
        // Every name is a syscall libseccomp knows somewhere, so no rule is a typo.
        for r in &p.rules {
            for n in &r.names {
                assert!(
                    ScmpSyscall::from_name(n).is_ok()
                        || ScmpSyscall::from_name_by_arch(n, ScmpArch::X86).is_ok(),
                    "{n} is no syscall"
                );
            }
        }
        p.compile(&none).unwrap();
        p.compile(&admin).unwrap();
    }

    #[test]
    fn docker_and_oci_profiles_are_read() {
        let docker = r#"{
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
            "syscalls": [
                {"names": ["read", "write", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"], "minKernel": "4.8"}},
                {"name": "clone", "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]}"#;
        let p = Profile::from_json(docker, "t.json").unwrap();
        assert_eq!(p.default, Action::Errno(1));
        assert_eq!(p.rules.len(), 4);
        assert_eq!(p.rules[2].caps_all, vec![Capability::CAP_SYS_ADMIN]);
        assert_eq!(p.rules[3].action, Action::Errno(38));
        assert_eq!(
            p.rules[3].args[0].op,
            ScmpCompareOp::MaskedEqual(2114060288)
        );
        p.compile(&CapsHashSet::new()).unwrap();
        let oci = r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                      "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#;
        Profile::from_json(oci, "oci")
            .unwrap()
            .compile(&CapsHashSet::new())
            .unwrap();
    }

    #[test]
    fn broken_profiles_say_where() {
        let e = Profile::from_json(
            "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n \"syscalls\": [}",
            "p.json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("p.json") && e.contains("line 2"), "{e}");
        let e = Profile::from_json(r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#, "p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown action \"SCMP_ACT_MAYBE\""), "{e}");
        let e = Profile::from_json(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
            "p",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("syscalls[0]") && e.contains("index"), "{e}");
    }
}
