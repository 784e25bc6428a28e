//! The container launcher: namespaces, cgroups, the container root on a union mount.
//!
//! The processes and the order of operations follow docs/ARCHITECTURE.md ("One launch"): the launcher P, a holder H
//! that owns the (optional) user namespace and a private mount namespace and serves the root
//! filesystem, and the container init I in new mount/pid/uts/ipc(/net) namespaces. The phases
//! are types in [`process`], the holder's and the init's own steps live in `holder` and `init`,
//! and what they say to each other is the typed `protocol`; the host-facing pieces (cgroups, id maps, mounts) live in their own
//! modules so that their logic can be tested without root where that is cheap.

mod bind_targets;
pub mod capabilities;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod exit;
mod holder;
pub mod idmap;
pub mod image;
mod init;
pub mod instance;
pub mod namespaces;
pub mod process;
mod protocol;
mod reaper;
pub mod root;
pub mod rootfs;
pub mod seccomp;
pub mod signals;
mod staging;
pub mod store_cmd;
pub mod terminal;
mod unshared_rm;
pub mod user;

pub use config::LaunchConfig;
pub use process::run;

/// A launcher error: what went wrong and, where we know it, what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    msg: String,
}

impl Error {
    /// An error with this message.
    pub fn msg(m: impl Into<String>) -> Self {
        Error { msg: m.into() }
    }

    /// The same error with `what` (the step that failed) in front.
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        Error {
            msg: format!("{what}: {}", self.msg),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

impl From<crate::error::Error> for Error {
    fn from(e: crate::error::Error) -> Self {
        Error::msg(e.to_string())
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::msg(e.desc().to_string())
    }
}

/// Attach "while doing X" context to nix/io results.
pub(crate) trait Context<T> {
    /// Turn the error into an [`Error`] prefixed with `what`.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::msg(format!("{}: {}", what(), e.desc())))
    }
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::msg(format!("{}: {e}", what())))
    }
}
