//! `unionfs-mount`: mount a union of layers (see `unionfs-mount --help`).

#![deny(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match unionfs::options::parse(std::env::args_os()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let level = if args.debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    if let Some(mnt) = &args.cleanup {
        return match unionfs::mount::cleanup(mnt) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!(
                    "unionfs-mount: {} is not mounted: nothing to clean up",
                    mnt.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("unionfs-mount: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(socket) = &args.serve {
        let socket = if socket.as_os_str().is_empty() {
            unionfs::options::default_socket()
        } else {
            socket.clone()
        };
        let code = unionfs::daemon::server::run(&socket, args.foreground || args.debug);
        return ExitCode::from(code as u8);
    }
    let mut inv = match unionfs::options::parse_args(args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("unionfs-mount: {e}");
            return ExitCode::from(2);
        }
    };
    inv.argv = std::env::args_os().skip(1).collect();
    ExitCode::from(unionfs::daemon::run(inv) as u8)
}
