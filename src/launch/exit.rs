//! How the launcher ends: the exit codes it gives for its own failures (as docker and podman
//! use them), and an error paired with its code.

use super::Error;

/// Exit code for a failure of the launcher itself (as docker/podman use it).
pub const EXIT_LAUNCHER: i32 = 125;
/// Exit code when the command exists but cannot be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// Exit code when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// An error together with the exit code the launcher should give for it.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: i32,
    /// What went wrong.
    pub error: Error,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            code: EXIT_LAUNCHER,
            error,
        }
    }
}
