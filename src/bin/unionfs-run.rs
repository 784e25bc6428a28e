//! `unionfs-run`: run a command in a container whose root is a union of layers.

#![deny(unsafe_code)]

fn main() {
    let cli = unionfs::launch::cli::Cli::parse_or_exit();
    match cli.into_config() {
        Ok(cfg) => std::process::exit(unionfs::launch::run(cfg)),
        Err(e) => {
            eprintln!("unionfs-run: {e}");
            std::process::exit(2);
        }
    }
}
