//! Running an OCI image (`--image DIR[:TAG]`) or a named container (`--name NAME`): the
//! image's layers come from the layer store (unpacked there once), and its config is applied
//! under podman's rules:
//!
//! - Env: the image's entries over the launcher's defaults, `-e` over both;
//! - command: `--entrypoint` replaces the image's Entrypoint (`""` removes it) and then the
//!   image's Cmd is dropped unless the entrypoint given is `[]`; arguments after `--` replace
//!   Cmd;
//! - WorkingDir: `--workdir` replaces it (and must exist); the image's is created when missing;
//! - User: `--user` replaces it; names are looked up in the container's /etc/passwd and
//!   /etc/group (see `user`).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::user::UserSpec;
use super::{Error, LaunchConfig};
use crate::image::store::{describe_pids, holders, InUse};
use crate::image::{self, ContainerRecord, RunConfig, Store};
use crate::sys;

/// What the command line says about images, names and the run's defaults.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `--image DIR[:TAG]`.
    pub image: Option<String>,
    /// `--name NAME`.
    pub name: Option<String>,
    /// `--store DIR`.
    pub store: Option<PathBuf>,
    /// `--entrypoint CMD` (a string, or a JSON array).
    pub entrypoint: Option<String>,
    /// `--workdir DIR`.
    pub workdir: Option<PathBuf>,
    /// `--user USER[:GROUP]`.
    pub user: Option<UserSpec>,
}

impl Request {
    /// Whether the run needs the layer store.
    pub fn uses_store(&self) -> bool {
        self.image.is_some() || self.name.is_some()
    }
}

/// Held while the container runs: shared locks on the store layers it mounts, and the lock
/// that makes a named container run once at a time.
#[derive(Debug, Default)]
pub struct Held {
    _layers: Option<InUse>,
    _name: Option<OwnedFd>,
}

/// Fills in `cfg` (lowers, upper, env, command, working directory, user) from `req`, unpacking
/// and recording the image and creating the named container as needed.
pub fn prepare(req: &Request, cfg: &mut LaunchConfig) -> Result<Held, Error> {
    let mut held = Held::default();
    let mut run = None;
    if req.uses_store() {
        run = from_store(req, cfg, &mut held)?;
    }
    apply(req, cfg, run.as_ref())?;
    Ok(held)
}

fn from_store(
    req: &Request,
    cfg: &mut LaunchConfig,
    held: &mut Held,
) -> Result<Option<RunConfig>, Error> {
    let store = Store::open(req.store.as_deref())?;
    if let Some(n) = &req.name {
        image::check_name(n)?;
    }
    // Read and checked before the lock: a broken layout fails without waiting on others.
    let img = req.image.as_deref().map(image::layout::open).transpose()?;
    for w in img.iter().flat_map(|i| &i.warnings) {
        eprintln!("unionfs-run: warning: {w}");
    }
    let lock = store.lock()?;
    let existing = match &req.name {
        Some(n) => store.container(n)?,
        None => None,
    };
    let mut run = None;
    let mut dirs = Vec::new();
    let mut want = ContainerRecord {
        name: req.name.clone().unwrap_or_default(),
        image: None,
        reference: None,
        layers: Vec::new(),
        lowers: Vec::new(),
        created: 0,
    };
    if let Some(i) = &img {
        dirs = lock.unpack(i)?;
        let rec = lock.record_image(i)?;
        want.image = Some(rec.id);
        want.reference = Some(i.reference.clone());
        want.layers = rec.layers;
        run = Some(i.run.clone());
    } else if cfg.lowers.is_empty() {
        let name = req.name.as_deref().unwrap_or_default();
        let Some(c) = &existing else {
            return Err(Error::msg(format!(
                "no container named '{name}' in the store {}: create it with --image \
                 DIR[:TAG] (or layer directories) and --name {name}",
                store.root().display()
            )));
        };
        want = c.clone();
        if let Some(id) = &c.image {
            let rec = store.image(id)?.ok_or_else(|| {
                Error::msg(format!(
                    "container '{name}' was made from image {id}, which is no longer in the \
                     store: run it with --image {} --name {name} to add it again",
                    c.reference.as_deref().unwrap_or("DIR:TAG")
                ))
            })?;
            for l in &rec.layers {
                let d = image::Digest::parse(l)?;
                let dir = store.layer_dir(&d);
                if !dir.is_dir() {
                    return Err(Error::msg(format!(
                        "layer {l} of container '{name}' is missing from the store ({}): run \
                         it with --image {} --name {name} to unpack it again",
                        dir.display(),
                        c.reference.as_deref().unwrap_or("DIR:TAG")
                    )));
                }
                dirs.push(dir);
            }
            run = Some(rec.run);
        } else {
            cfg.lowers = c.lowers.clone();
        }
    } else {
        want.lowers = cfg.lowers.iter().map(|l| canonical(l)).collect();
    }
    if !dirs.is_empty() {
        // The store lists layers bottom first; a union lists them topmost first.
        cfg.lowers = dirs.iter().rev().cloned().collect();
    }
    if let Some(name) = &req.name {
        if let Some(c) = &existing {
            same_source(c, &want)?;
        }
        let upper = lock.create_container(&want)?;
        if existing.is_none() {
            owned_by_container_root(&upper, cfg)?;
        }
        cfg.upper = Some(upper);
        held._name = Some(claim(&store, name)?);
    }
    if !dirs.is_empty() {
        held._layers = Some(lock.use_layers(&dirs)?);
    }
    Ok(run)
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Gives a new named container's upper to the container's root: with `--uid-map` ranges as
/// root that is another host id than ours, and it could not write its own root directory
/// otherwise (a user's own upper must be chowned the same way).
fn owned_by_container_root(upper: &Path, cfg: &LaunchConfig) -> Result<(), Error> {
    let host =
        |ranges: &[super::idmap::IdRange]| ranges.iter().find(|r| r.inside == 0).map(|r| r.outside);
    let (uid, gid) = (host(&cfg.uid_maps), host(&cfg.gid_maps));
    if !nix::unistd::geteuid().is_root() || (uid.is_none() && gid.is_none()) {
        return Ok(());
    }
    std::os::unix::fs::chown(upper, uid, gid).map_err(|e| {
        Error::msg(format!(
            "giving {} to the container's root: {e}",
            upper.display()
        ))
    })
}

/// Refuses to run container `have` on another root than the one it was made with.
fn same_source(have: &ContainerRecord, want: &ContainerRecord) -> Result<(), Error> {
    if have.image == want.image && (have.image.is_some() || have.lowers == want.lowers) {
        return Ok(());
    }
    let show = |c: &ContainerRecord| match (&c.reference, &c.image) {
        (Some(r), _) => format!("image {r}"),
        (None, Some(id)) => format!("image {id}"),
        (None, None) => format!(
            "the layers {}",
            c.lowers
                .iter()
                .map(|l| l.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        ),
    };
    Err(Error::msg(format!(
        "container '{}' was made from {}, not {}: run it with that (or with --name {} alone), \
         or remove it first (unionfs-run rm {})",
        have.name,
        show(have),
        show(want),
        have.name,
        have.name
    )))
}

/// The exclusive lock of named container `name` for this run, or who runs it now.
fn claim(store: &Store, name: &str) -> Result<OwnedFd, Error> {
    let dir = store.container_dir(name);
    let fd = sys::open_path(&dir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .map_err(|e| Error::msg(format!("container {}: {}", dir.display(), e.desc())))?;
    match sys::try_lock_exclusive(fd.as_fd()) {
        Ok(()) => Ok(fd),
        Err(_) => {
            drop(fd);
            let pids = holders(&dir).unwrap_or_default();
            Err(Error::msg(format!(
                "container '{name}' is already running ({}): one run at a time uses its upper; \
                 wait for that run to end, or give another --name",
                describe_pids(&pids)
            )))
        }
    }
}

/// `--entrypoint` as podman reads it: a JSON array, or else one program name.
fn parse_entrypoint(s: &str) -> Vec<String> {
    serde_json::from_str::<Vec<String>>(s).unwrap_or_else(|_| vec![s.to_string()])
}

/// The command under podman's rules (see the module's doc).
pub fn command(
    entrypoint: Option<&str>,
    args: &[OsString],
    image: Option<&RunConfig>,
) -> Vec<OsString> {
    let given = entrypoint.map(parse_entrypoint);
    let ep = match &given {
        Some(e) => e.clone(),
        None => image.and_then(|r| r.entrypoint.clone()).unwrap_or_default(),
    };
    let mut out: Vec<OsString> = Vec::new();
    if !(ep.len() == 1 && ep[0].is_empty()) {
        out.extend(ep.into_iter().map(OsString::from));
    }
    if !args.is_empty() {
        out.extend(args.iter().cloned());
    } else if given.as_ref().is_none_or(|g| g.is_empty()) {
        let cmd = image.and_then(|r| r.cmd.clone()).unwrap_or_default();
        out.extend(cmd.into_iter().map(OsString::from));
    }
    out
}

/// Applies the image's run config (if any) and the command line's overrides to `cfg`.
fn apply(req: &Request, cfg: &mut LaunchConfig, image: Option<&RunConfig>) -> Result<(), Error> {
    if let Some(r) = image {
        let mut env: Vec<(String, String)> = r
            .env
            .iter()
            .flatten()
            .filter_map(|e| e.split_once('='))
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.append(&mut cfg.env);
        cfg.env = env;
    }
    cfg.command = command(req.entrypoint.as_deref(), &cfg.command, image);
    if cfg.command.is_empty() {
        return Err(Error::msg(if image.is_some() {
            "no command: the image has neither Entrypoint nor Cmd; put one after `--`"
        } else {
            "no command given: put it after `--`, e.g. `unionfs-run LOWER UPPER -- /bin/sh`"
        }));
    }
    let image_dir = image
        .and_then(|r| r.working_dir.as_deref())
        .filter(|w| !w.is_empty());
    (cfg.cwd, cfg.create_cwd) = match (&req.workdir, image_dir) {
        (Some(w), _) => (w.clone(), false),
        // Relative in a config means relative to the root.
        (None, Some(w)) => (Path::new("/").join(w), true),
        (None, None) => (PathBuf::from("/"), false),
    };
    let image_user = image
        .and_then(|r| r.user.as_deref())
        .filter(|u| !u.is_empty());
    (cfg.user, cfg.user_origin) = match (&req.user, image_user) {
        (Some(u), _) => (u.clone(), "--user"),
        (None, Some(u)) => (
            UserSpec::parse(u).map_err(|e| e.context("the image's User"))?,
            "the image's User",
        ),
        (None, None) => (UserSpec::root(), "--user"),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn entrypoint_and_cmd_follow_podman() {
        let img = RunConfig {
            entrypoint: Some(vec!["/ep".into(), "-x".into()]),
            cmd: Some(vec!["default".into()]),
            ..RunConfig::default()
        };
        let i = Some(&img);
        assert_eq!(command(None, &[], i), os(&["/ep", "-x", "default"]));
        assert_eq!(command(None, &os(&["a"]), i), os(&["/ep", "-x", "a"]));
        assert_eq!(command(Some("/other"), &[], i), os(&["/other"]));
        assert_eq!(
            command(Some("/other"), &os(&["a"]), i),
            os(&["/other", "a"])
        );
        assert_eq!(command(Some(r#"["/j","1"]"#), &[], i), os(&["/j", "1"]));
        assert_eq!(command(Some(""), &[], i), os(&[]));
        assert_eq!(command(Some(""), &os(&["sh"]), i), os(&["sh"]));
        assert_eq!(command(Some("[]"), &[], i), os(&["default"]));
        let cmd_only = RunConfig {
            cmd: Some(vec!["/bin/sh".into()]),
            ..RunConfig::default()
        };
        assert_eq!(command(None, &os(&["ls"]), Some(&cmd_only)), os(&["ls"]));
        assert_eq!(command(None, &[], None), os(&[]));
    }
}
