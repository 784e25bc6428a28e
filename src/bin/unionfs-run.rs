//! `unionfs-run`: run a command in a container whose root is a union of layers.

#![deny(unsafe_code)]

fn main() {
    std::process::exit(unionfs::launch::cli::Cli::parse_or_exit().execute());
}
