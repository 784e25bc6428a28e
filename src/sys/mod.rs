//! Every unsafe system call wrapper lives here.
pub mod launch;
