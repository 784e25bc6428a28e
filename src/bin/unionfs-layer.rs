//! `unionfs-layer`: OCI layer tarballs in and out of unionfs layer directories.

#![deny(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use unionfs::oci::cli::{Cli, Cmd};
use unionfs::oci::{IdMap, IdMaps};

/// The layers of a `--lowers L1:L2` argument (topmost first); one that names none is refused
/// rather than taken as "no lowers".
fn lowers_arg(arg: Option<&str>) -> unionfs::Result<Vec<PathBuf>> {
    let Some(arg) = arg else {
        return Ok(Vec::new());
    };
    let layers = unionfs::options::split_layers(arg);
    if layers.is_empty() {
        return Err(unionfs::Error::new(format!(
            "--lowers '{arg}' names no layer: give the lower directories, topmost first, \
             e.g. --lowers /l/app:/l/base"
        )));
    }
    Ok(layers)
}

/// The ranges of repeated `--uid-map`/`--gid-map` arguments as one map (`None`: none given).
fn map_arg(kind: &str, args: &[String]) -> unionfs::Result<Option<IdMap>> {
    if args.is_empty() {
        return Ok(None);
    }
    let mut ranges = Vec::new();
    for a in args {
        let m = IdMap::parse(a).map_err(|e| unionfs::Error::new(format!("--{kind}-map {e}")))?;
        ranges.extend_from_slice(m.ranges());
    }
    IdMap::new(ranges)
        .map(Some)
        .map_err(|e| unionfs::Error::new(format!("--{kind}-map: {e}")))
}

/// The maps an export writes container ids with: the ones given, else the recorded ones.
fn export_maps(
    upper: &Path,
    workdir: Option<&Path>,
    uid_map: &[String],
    gid_map: &[String],
    no_map: bool,
) -> unionfs::Result<IdMaps> {
    if no_map {
        return Ok(IdMaps::default());
    }
    let recorded = unionfs::oci::written_under(upper, workdir)?.unwrap_or_default();
    let maps = IdMaps {
        uids: map_arg("uid", uid_map)?.unwrap_or(recorded.uids),
        gids: map_arg("gid", gid_map)?.unwrap_or(recorded.gids),
    };
    if !maps.is_identity() {
        eprintln!(
            "unionfs-layer: owners written as container ids: uid map {}, gid map {} \
             (--no-map keeps the ids on disk)",
            maps.uids, maps.gids
        );
    }
    Ok(maps)
}

fn run(cli: Cli) -> unionfs::Result<()> {
    match cli.cmd {
        Cmd::Export {
            upper,
            output,
            gzip,
            zstd,
            lowers,
            uid_map,
            gid_map,
            no_map,
            workdir,
        } => {
            if output.is_none() && std::io::stdout().is_terminal() {
                return Err(unionfs::Error::new(
                    "refusing to write a tarball to a terminal: give --output FILE, or \
                     redirect stdout (unionfs-layer export UPPER > layer.tar)",
                ));
            }
            let lowers = lowers_arg(lowers.as_deref())?;
            // Before the output is created: a mistyped layer must not cost an existing file.
            unionfs::oci::check_layers(&upper, &lowers)?;
            let ids = export_maps(&upper, workdir.as_deref(), &uid_map, &gid_map, no_map)?;
            let r = export(&upper, &lowers, &ids, output.as_deref(), gzip, zstd);
            if r.is_err() {
                // A partial tarball must not pass for a layer.
                if let Some(p) = &output {
                    let _ = std::fs::remove_file(p);
                }
            }
            r
        }
        Cmd::Fill { upper, lowers } => {
            let lowers = lowers_arg(Some(&lowers))?;
            let n = unionfs::oci::fill_stubs(&upper, &lowers)?;
            eprintln!(
                "unionfs-layer: filled {n} metadata-only copies in {}",
                upper.display()
            );
            Ok(())
        }
        Cmd::Import {
            tarball,
            dir,
            uid_map,
            gid_map,
        } => {
            let ids = IdMaps {
                uids: map_arg("uid", &uid_map)?.unwrap_or_default(),
                gids: map_arg("gid", &gid_map)?.unwrap_or_default(),
            };
            let stats = if tarball.as_os_str() == "-" {
                unionfs::oci::import(std::io::stdin().lock(), &dir, &ids)?
            } else {
                let f = std::fs::File::open(&tarball).map_err(|e| {
                    unionfs::Error::sys(
                        format!("tarball {}", tarball.display()),
                        e,
                        "give a layer tarball (tar, tar+gzip or tar+zstd), or - for stdin",
                    )
                })?;
                unionfs::oci::import(f, &dir, &ids)?
            };
            eprintln!(
                "unionfs-layer: {} entries into {}",
                stats.entries,
                dir.display()
            );
            Ok(())
        }
        Cmd::Diff { upper, lowers } => {
            let lowers = lowers_arg(lowers.as_deref())?;
            for c in unionfs::oci::diff(&upper, &lowers)? {
                println!("{c}");
            }
            Ok(())
        }
    }
}

fn export(
    upper: &Path,
    lowers: &[PathBuf],
    ids: &IdMaps,
    output: Option<&Path>,
    gzip: bool,
    zstd: bool,
) -> unionfs::Result<()> {
    let sink: Box<dyn Write> = match &output {
        Some(p) => Box::new(std::fs::File::create(p).map_err(|e| {
            unionfs::Error::sys(
                format!("creating the output {}", p.display()),
                e,
                "give a file in an existing directory you may write to",
            )
        })?),
        None => Box::new(std::io::stdout().lock()),
    };
    let sink = std::io::BufWriter::new(sink);
    if zstd {
        let z = zstd::stream::write::Encoder::new(sink, 3)
            .map_err(|e| unionfs::Error::sys("starting zstd", e, ""))?;
        let z = unionfs::oci::export(upper, lowers, ids, z)?;
        z.finish()
            .and_then(|mut w| w.flush())
            .map_err(|e| unionfs::Error::sys("finishing zstd", e, ""))?;
    } else if gzip {
        let gz = flate2::write::GzEncoder::new(sink, flate2::Compression::default());
        let gz = unionfs::oci::export(upper, lowers, ids, gz)?;
        gz.finish()
            .and_then(|mut w| w.flush())
            .map_err(|e| unionfs::Error::sys("finishing gzip", e, ""))?;
    } else {
        unionfs::oci::export(upper, lowers, ids, sink)?
            .flush()
            .map_err(|e| unionfs::Error::sys("writing the tarball", e, ""))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unionfs-layer: {e}");
            ExitCode::FAILURE
        }
    }
}
