//! The harness's error type: every message names what was wrong and, where the user can do
//! something about it, what to do (the same style as the `unionfs` library's `Error`).
//!
//! A step that fails on the union under test is not an error: it is a result ("ENOENT") to
//! compare. An [`Error`] means the harness could not do its own work (build a layer, mount,
//! capture a tree, read a scenario), and its message ends up in a report line or a step's
//! `error: ...` result.

use std::fmt;
use std::path::Path;

/// Why the harness could not do something, as a message meant for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    msg: String,
}

impl Error {
    /// An error with the given message.
    pub fn msg(msg: impl Into<String>) -> Self {
        Error { msg: msg.into() }
    }

    /// A failed operation on a file: `what` names the call ("lstat", "readdir"), `err` what it
    /// said (for a `sys::Errno`, pass `e.desc()`). Reads `WHAT PATH: ERR`.
    pub fn at(what: &str, path: &Path, err: impl fmt::Display) -> Self {
        Error::msg(format!("{what} {}: {err}", path.display()))
    }

    /// This error with `what` (where it happened: a file, a layer, a step) said first.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error::msg(format!("{what}: {}", self.msg))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

/// Result of the harness's own work.
pub type Result<T> = std::result::Result<T, Error>;
