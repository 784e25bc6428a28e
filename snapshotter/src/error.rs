//! The snapshotter's error: one variant per gRPC code containerd acts on, each with a message
//! that says what was wrong and what to do.

use std::fmt;

use containerd_snapshots::tonic::{Code, Status};

/// A failed snapshot operation; becomes a gRPC status with the matching code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No snapshot by that key or name (`NotFound`).
    NotFound(String),
    /// The key or name is taken (`AlreadyExists`).
    AlreadyExists(String),
    /// The operation does not fit the snapshot's state: children, wrong kind
    /// (`FailedPrecondition`).
    FailedPrecondition(String),
    /// The request itself is malformed (`InvalidArgument`).
    InvalidArgument(String),
    /// The store or the disk failed (`Internal`).
    Internal(String),
}

/// Results of snapshot operations.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An `Internal` error for a failed filesystem step on `path`.
    pub fn io(what: &str, path: &std::path::Path, err: std::io::Error) -> Error {
        Error::Internal(format!(
            "{what} {}: {err} (check that the snapshotter's --root is writable and has space)",
            path.display()
        ))
    }

    /// The gRPC code containerd expects for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Internal(_) => Code::Internal,
        }
    }

    fn message(&self) -> &str {
        match self {
            Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::FailedPrecondition(m)
            | Error::InvalidArgument(m)
            | Error::Internal(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.message().to_string())
    }
}

/// Every redb error is a store failure: name the database file so the operator knows where.
macro_rules! store_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Internal(format!(
                    "snapshot metadata store (ROOT/metadata.redb): {e}; the snapshotter's log has \
                     details, restart it to recover the last committed state"
                ))
            }
        }
    )*};
}

store_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Internal(format!(
            "a snapshot record in ROOT/metadata.redb does not decode: {e}; it was written by \
             another version of unionfs-snapshotter?"
        ))
    }
}
