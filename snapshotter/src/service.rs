//! containerd's snapshot operations on the store and the disk: the `Snapshotter` trait of
//! the containerd-snapshots crate, whose tonic server turns them into the gRPC service.
//!
//! Store and disk calls block, so each operation runs on tokio's blocking pool; the gRPC side
//! stays on one thread.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{tonic, Info, Snapshotter, Usage as CtrUsage};
use futures::stream;

use crate::error::{Error, Result};
use crate::filter::Filters;
use crate::layout::{self, Layout};
use crate::mounts::{mounts, MountStyle};
use crate::recovery;
use crate::store::{Kind, Record, Store};

/// The snapshotter: its store, its directories and how it mounts unions.
pub struct UnionSnapshotter {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    layout: Layout,
    style: MountStyle,
}

impl UnionSnapshotter {
    /// Opens the store under `root` (creating both if new) and removes what a crash left.
    pub fn open(root: &Path, style: MountStyle) -> Result<UnionSnapshotter> {
        let layout = Layout::new(root)?;
        layout.create()?;
        let store = Store::open(&layout)?;
        let n = recovery::remove_orphans(&store, &layout)?;
        if n > 0 {
            log::warn!("recovery: removed {n} snapshot directories the store did not know");
        }
        Ok(UnionSnapshotter {
            inner: Arc::new(Inner {
                store,
                layout,
                style,
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::Internal(format!("a snapshot operation stopped: {e}")))?
    }
}

fn kind_of(k: Kind) -> containerd_snapshots::Kind {
    match k {
        Kind::View => containerd_snapshots::Kind::View,
        Kind::Active => containerd_snapshots::Kind::Active,
        Kind::Committed => containerd_snapshots::Kind::Committed,
    }
}

fn info(name: String, rec: Record) -> Info {
    Info {
        kind: kind_of(rec.kind),
        name,
        parent: rec.parent,
        labels: rec.labels.into_iter().collect(),
        created_at: rec.created,
        updated_at: rec.updated,
    }
}

fn labels(l: HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

impl Inner {
    fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let rec = self.store.create(&key, kind, &parent, labels, |id| {
            self.layout.make_snapshot_dir(id)
        })?;
        let lowers = self.store.lineage(&rec.parent)?;
        log::info!("{kind:?} {key:?} on {parent:?}: directory {}", rec.id);
        Ok(mounts(&self.layout, &self.style, rec.kind, rec.id, &lowers))
    }
}

#[tonic::async_trait]
impl Snapshotter for UnionSnapshotter {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<Info> {
        self.blocking(move |i| Ok(info(key.clone(), i.store.get(&key)?)))
            .await
    }

    async fn update(&self, new: Info, fieldpaths: Option<Vec<String>>) -> Result<Info> {
        self.blocking(move |i| {
            let paths = fieldpaths.unwrap_or_default();
            let rec = i.store.update(&new.name, labels(new.labels), &paths)?;
            Ok(info(new.name, rec))
        })
        .await
    }

    async fn usage(&self, key: String) -> Result<CtrUsage> {
        self.blocking(move |i| {
            let rec = i.store.get(&key)?;
            let u = match rec.usage {
                Some(u) => u,
                None => layout::usage(&i.layout.fs(rec.id))?,
            };
            Ok(CtrUsage {
                inodes: u.inodes,
                size: u.size,
            })
        })
        .await
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>> {
        self.blocking(move |i| {
            let rec = i.store.get(&key)?;
            if rec.kind == Kind::Committed {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is committed: mounts exist only for active snapshots and \
                     views; make one on it with Prepare or View"
                )));
            }
            let lowers = i.store.lineage(&rec.parent)?;
            Ok(mounts(&i.layout, &i.style, rec.kind, rec.id, &lowers))
        })
        .await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let labels = self::labels(labels);
        self.blocking(move |i| i.create(Kind::Active, key, parent, labels))
            .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let labels = self::labels(labels);
        self.blocking(move |i| i.create(Kind::View, key, parent, labels))
            .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let labels = self::labels(labels);
        self.blocking(move |i| {
            let active = i.store.get(&key)?;
            if active.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is {:?}, not active: only snapshots made by Prepare can \
                     be committed",
                    active.kind
                )));
            }
            // Measured before the transaction: a committed snapshot never changes again.
            let usage = layout::usage(&i.layout.fs(active.id))?;
            let rec = i.store.commit(&name, &key, labels, active.id, usage)?;
            log::info!("committed {key:?} as {name:?} (directory {})", rec.id);
            Ok(())
        })
        .await
    }

    async fn remove(&self, key: String) -> Result<()> {
        self.blocking(move |i| {
            let rec = i.store.remove(&key)?;
            // The store forgot it: from here a crash leaves an orphan that recovery deletes.
            if let Err(e) = i.layout.remove_snapshot_dir(rec.id) {
                log::warn!("removed {key:?} but not yet its directory: {e} (Cleanup or the next start deletes it)");
            }
            log::info!("removed {key:?} (directory {})", rec.id);
            Ok(())
        })
        .await
    }

    async fn clear(&self) -> Result<()> {
        self.blocking(|i| recovery::remove_orphans(&i.store, &i.layout).map(|_| ()))
            .await
    }

    type InfoStream = stream::Iter<std::vec::IntoIter<Result<Info>>>;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<Self::InfoStream> {
        let filters = Filters::parse(&filters)?;
        let all = self.blocking(|i| i.store.list()).await?;
        let infos: Vec<Result<Info>> = all
            .into_iter()
            .filter(|(name, rec)| filters.matches(name, rec))
            .map(|(name, rec)| Ok(info(name, rec)))
            .collect();
        Ok(stream::iter(infos))
    }
}
