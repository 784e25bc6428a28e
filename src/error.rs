//! The error type of the library's setup paths: every message names what was wrong and what to do.

use std::fmt;

/// A setup error (bad option, missing layer, failed mount) with a message meant for a person.
#[derive(Debug)]
pub struct Error {
    msg: String,
}

impl Error {
    /// An error with the given message.
    pub fn new(msg: impl Into<String>) -> Self {
        Error { msg: msg.into() }
    }

    /// An error for a failed system call: `what` says what we tried, `hint` what the user can do.
    pub fn sys(what: impl fmt::Display, err: impl fmt::Display, hint: &str) -> Self {
        if hint.is_empty() {
            Error::new(format!("{what}: {err}"))
        } else {
            Error::new(format!("{what}: {err}; {hint}"))
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

/// Result of the library's setup paths.
pub type Result<T> = std::result::Result<T, Error>;
