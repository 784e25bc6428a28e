//! `unionfs-run images | layers | ps | rm | rmi | prune`: what the layer store holds, and
//! removing it under the store's rules (nothing in use goes).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Error;
use crate::image::{Digest, Store};

/// A store subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreCommand {
    /// List images.
    Images,
    /// List layers and their users.
    Layers,
    /// List named containers.
    Containers,
    /// Remove named containers.
    Rm(Vec<String>),
    /// Remove images (and the layers only they used).
    Rmi(Vec<String>),
    /// Remove unused layers, or exactly these.
    Prune(Vec<String>),
}

/// Runs `cmd` on the store at `root` (or the default); returns the exit status (0, or 1 after
/// printing why).
pub fn run(root: Option<&Path>, cmd: &StoreCommand) -> i32 {
    match exec(root, cmd) {
        Ok(ok) if ok => 0,
        Ok(_) => 1,
        Err(e) => {
            eprintln!("unionfs-run: {e}");
            1
        }
    }
}

fn exec(root: Option<&Path>, cmd: &StoreCommand) -> Result<bool, Error> {
    let store = Store::open(root)?;
    match cmd {
        StoreCommand::Images => images(&store).map(|()| true),
        StoreCommand::Layers => layers(&store).map(|()| true),
        StoreCommand::Containers => containers(&store).map(|()| true),
        StoreCommand::Rm(names) => {
            let lock = store.lock()?;
            Ok(each(names, |n| {
                lock.remove_container(n, &super::unshared_rm::remove)?;
                println!("{n}");
                Ok(())
            }))
        }
        StoreCommand::Rmi(what) => {
            let lock = store.lock()?;
            Ok(each(what, |w| {
                let rec = lock.find_image(w)?;
                let freed = lock.remove_image(&rec)?;
                println!("removed image {}", rec.id);
                for d in freed {
                    println!("removed layer {d}");
                }
                Ok(())
            }))
        }
        StoreCommand::Prune(which) => {
            let lock = store.lock()?;
            if which.is_empty() {
                for d in lock.prune()? {
                    println!("removed layer {d}");
                }
                return Ok(true);
            }
            let all = store.layers()?;
            Ok(each(which, |w| {
                let d = find_layer(&all, w)?;
                lock.remove_layer(&d)?;
                println!("removed layer {d}");
                Ok(())
            }))
        }
    }
}

/// Runs `f` on every item, printing each failure; true when all succeeded.
fn each(items: &[String], mut f: impl FnMut(&str) -> Result<(), crate::Error>) -> bool {
    let mut ok = true;
    for i in items {
        if let Err(e) = f(i) {
            eprintln!("unionfs-run: {e}");
            ok = false;
        }
    }
    ok
}

/// The layer a full diff id or a prefix of its hex (4 digits or more) names.
fn find_layer(all: &[Digest], what: &str) -> Result<Digest, crate::Error> {
    let hex = what.split_once(':').map_or(what, |(_, h)| h);
    let found: Vec<&Digest> = all
        .iter()
        .filter(|d| d.to_string() == what || (hex.len() >= 4 && d.hex().starts_with(hex)))
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(crate::Error::new(format!(
            "no layer '{what}' in the store (unionfs-run layers lists them)"
        ))),
        _ => Err(crate::Error::new(format!(
            "'{what}' names {} layers: give more digits",
            found.len()
        ))),
    }
}

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn age(created: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = now.saturating_sub(created);
    match s {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

fn images(store: &Store) -> Result<(), Error> {
    println!(
        "{:<14}{:<8}{:<11}{:<10}REFERENCE",
        "IMAGE ID", "LAYERS", "SIZE", "CREATED"
    );
    for i in store.images()? {
        let bytes: u64 = i
            .layers
            .iter()
            .filter_map(|l| Digest::parse(l).ok())
            .map(|d| store.usage(&store.layer_dir(&d)))
            .sum();
        let id = Digest::parse(&i.id).map_or(i.id.clone(), |d| d.short().to_string());
        println!(
            "{:<14}{:<8}{:<11}{:<10}{}",
            id,
            i.layers.len(),
            size(bytes),
            age(i.created),
            i.refs.join(", ")
        );
    }
    Ok(())
}

fn layers(store: &Store) -> Result<(), Error> {
    println!("{:<73}{:<11}USED BY", "LAYER (DIFF ID)", "SIZE");
    for d in store.layers()? {
        let users = store.users_of(&d, None)?;
        let mut used = if users.is_empty() {
            "-".to_string()
        } else {
            users.join(", ")
        };
        if let Some(pids) = crate::image::store::holders(&store.layer_dir(&d)) {
            used.push_str(&format!(
                " (mounted by {})",
                crate::image::store::describe_pids(&pids)
            ));
        }
        println!(
            "{:<73}{:<11}{used}",
            d.to_string(),
            size(store.usage(&store.layer_dir(&d)))
        );
    }
    Ok(())
}

fn containers(store: &Store) -> Result<(), Error> {
    // Under the lock: a launch takes a container's lock while it holds the store's, so the
    // look at that lock here cannot make a starting run fail.
    let _lock = store.lock()?;
    println!(
        "{:<20}{:<28}{:<11}{:<16}SOURCE",
        "NAME", "STATUS", "UPPER", "CREATED"
    );
    for c in store.containers()? {
        let status = match store.running(&c.name) {
            Some(p) => format!("running ({})", crate::image::store::describe_pids(&p)),
            None => "stopped".to_string(),
        };
        let source = match (&c.reference, &c.image) {
            (Some(r), _) => r.clone(),
            (None, Some(id)) => id.clone(),
            (None, None) => c
                .lowers
                .iter()
                .map(|l| l.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        };
        let upper = store.container_dir(&c.name).join("upper");
        println!(
            "{:<20}{:<36}{:<11}{:<10}{source}",
            c.name,
            status,
            size(store.usage(&upper)),
            age(c.created)
        );
    }
    Ok(())
}
