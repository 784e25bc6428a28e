//! Every unsafe system call wrapper lives here.
