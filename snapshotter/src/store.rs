//! Snapshot metadata in redb, an embedded ACID store: one write transaction per change, so
//! a snapshot is either wholly recorded or not at all, whatever happens to the process.
//!
//! Tables: `snapshots` (key or name -> JSON [`Record`]), `children` (parent name -> child
//! keys, for refusing to remove a parent), `meta` (`next_id`, the directory numbers).
//!
//! Filesystem steps that belong to a change run inside its transaction, before the commit
//! (Prepare renames the finished directory into place), or after it (Remove deletes the
//! directory): a crash leaves at most a directory the store does not know, which the recovery
//! pass deletes. Write transactions are serialised by redb, which also keeps the Cleanup pass
//! from deleting a directory a Prepare is about to record.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use redb::{
    Database, MultimapTableDefinition, ReadableMultimapTable, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hooks::pause_point;
use crate::layout::{Layout, Usage};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("children");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// containerd's limit on one label (key and value together), checked as it checks it.
const MAX_LABEL: usize = 4096;

/// The state of a snapshot, as containerd names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only, made by View; never committed.
    View,
    /// Writable, made by Prepare; may be committed.
    Active,
    /// Immutable, made by Commit; may be a parent.
    Committed,
}

/// What the store keeps of one snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Number of its directory under `snapshots/`.
    pub id: u64,
    /// Its state.
    pub kind: Kind,
    /// Name of its parent, `""` for none.
    pub parent: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When it was made (for a committed snapshot: committed).
    pub created: SystemTime,
    /// When its labels last changed.
    pub updated: SystemTime,
    /// Its own disk usage, measured at Commit (committed snapshots do not change).
    pub usage: Option<Usage>,
}

/// The open metadata store of one `--root`.
pub struct Store {
    db: Database,
}

/// Checks labels as containerd's own store does, naming the offending one.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::InvalidArgument(
                "a label has an empty key: give every label a name".into(),
            ));
        }
        if k.len() + v.len() > MAX_LABEL {
            return Err(Error::InvalidArgument(format!(
                "label {k:?}: key and value are {} bytes together, more than containerd's \
                 limit of {MAX_LABEL}",
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the snapshot {what} is empty: give a non-empty {what}"
        )));
    }
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<Record> {
    Ok(serde_json::from_slice(bytes)?)
}

fn get_in(txn: &WriteTransaction, key: &str) -> Result<Option<Record>> {
    let t = txn.open_table(SNAPSHOTS)?;
    let r = t.get(key)?;
    r.map(|g| decode(g.value())).transpose()
}

fn put_in(txn: &WriteTransaction, key: &str, rec: &Record) -> Result<()> {
    let bytes = serde_json::to_vec(rec)?;
    txn.open_table(SNAPSHOTS)?.insert(key, bytes.as_slice())?;
    Ok(())
}

fn not_found(key: &str) -> Error {
    Error::NotFound(format!(
        "snapshot {key:?} does not exist (list them with `ctr snapshots --snapshotter unionfs ls`)"
    ))
}

impl Store {
    /// Opens (or creates) the store of `layout`. Fails if another snapshotter has it open.
    pub fn open(layout: &Layout) -> Result<Store> {
        let path = layout.db();
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::FailedPrecondition(format!(
                "{} is in use by another unionfs-snapshotter: give each one its own --root",
                path.display()
            )),
            e => Error::Internal(format!(
                "cannot open the snapshot metadata store {}: {e}",
                path.display()
            )),
        })?;
        let txn = db.begin_write()?;
        {
            txn.open_table(SNAPSHOTS)?;
            txn.open_multimap_table(CHILDREN)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        Ok(Store { db })
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Result<Record> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SNAPSHOTS)?;
        let r = t.get(key)?;
        match r {
            Some(g) => decode(g.value()),
            None => Err(not_found(key)),
        }
    }

    /// Every snapshot, by key.
    pub fn list(&self) -> Result<Vec<(String, Record)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SNAPSHOTS)?;
        let mut out = Vec::with_capacity(t.len()? as usize);
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), decode(v.value())?));
        }
        Ok(out)
    }

    /// The directory numbers of `parent` and its ancestors, nearest first (the order of
    /// `lowerdir=`).
    pub fn lineage(&self, parent: &str) -> Result<Vec<u64>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SNAPSHOTS)?;
        let mut ids = Vec::new();
        let mut cur = parent.to_string();
        while !cur.is_empty() {
            let rec = match t.get(cur.as_str())? {
                Some(g) => decode(g.value())?,
                None => {
                    return Err(Error::Internal(format!(
                        "the parent chain is broken at {cur:?}: the store lost a snapshot \
                         that has children; remove the children and pull the image again"
                    )))
                }
            };
            ids.push(rec.id);
            cur = rec.parent;
            if ids.len() > 100_000 {
                return Err(Error::Internal(format!(
                    "the parent chain of {parent:?} loops: the store is corrupt"
                )));
            }
        }
        Ok(ids)
    }

    /// Records a new `kind` snapshot `key` on `parent` (a committed snapshot or `""`), after
    /// `make_dir(id)` has made its directory. Returns the record and its parents' ids.
    pub fn create(
        &self,
        key: &str,
        kind: Kind,
        parent: &str,
        labels: BTreeMap<String, String>,
        make_dir: impl FnOnce(u64) -> Result<()>,
    ) -> Result<Record> {
        check_key("key", key)?;
        check_labels(&labels)?;
        let txn = self.db.begin_write()?;
        if get_in(&txn, key)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "snapshot {key:?} already exists: remove it first or choose another key"
            )));
        }
        if !parent.is_empty() {
            match get_in(&txn, parent)? {
                None => {
                    return Err(Error::NotFound(format!(
                        "parent snapshot {parent:?} does not exist: commit it first"
                    )))
                }
                Some(p) if p.kind != Kind::Committed => {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent:?} is not a committed snapshot: only committed \
                         snapshots can be parents, commit it first"
                    )))
                }
                Some(_) => {}
            }
        }
        let id = {
            let mut meta = txn.open_table(META)?;
            let id = meta.get("next_id")?.map_or(1, |g| g.value());
            meta.insert("next_id", id + 1)?;
            id
        };
        make_dir(id)?;
        let now = SystemTime::now();
        let rec = Record {
            id,
            kind,
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
            usage: None,
        };
        put_in(&txn, key, &rec)?;
        if !parent.is_empty() {
            txn.open_multimap_table(CHILDREN)?.insert(parent, key)?;
        }
        pause_point("prepare-in-txn");
        txn.commit()?;
        Ok(rec)
    }

    /// Turns active snapshot `key` into committed snapshot `name` with `labels`, keeping its
    /// directory; `usage` (measured by the caller on that directory) is stored with it.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
        expect_id: u64,
        usage: Usage,
    ) -> Result<Record> {
        check_key("name", name)?;
        check_labels(&labels)?;
        let txn = self.db.begin_write()?;
        let active = get_in(&txn, key)?.ok_or_else(|| not_found(key))?;
        if active.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is {:?}, not active: only snapshots made by Prepare can be \
                 committed",
                active.kind
            )));
        }
        if active.id != expect_id {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} was removed and made again while it was committed: commit \
                 it again"
            )));
        }
        if get_in(&txn, name)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "snapshot {name:?} already exists: commit under another name or remove it"
            )));
        }
        txn.open_table(SNAPSHOTS)?.remove(key)?;
        let now = SystemTime::now();
        let rec = Record {
            id: active.id,
            kind: Kind::Committed,
            parent: active.parent.clone(),
            labels,
            created: now,
            updated: now,
            usage: Some(usage),
        };
        put_in(&txn, name, &rec)?;
        if !active.parent.is_empty() {
            let mut ch = txn.open_multimap_table(CHILDREN)?;
            ch.remove(active.parent.as_str(), key)?;
            ch.insert(active.parent.as_str(), name)?;
        }
        pause_point("commit-in-txn");
        txn.commit()?;
        Ok(rec)
    }

    /// Forgets snapshot `key` (refused while it has children). The caller deletes its
    /// directory afterwards.
    pub fn remove(&self, key: &str) -> Result<Record> {
        let txn = self.db.begin_write()?;
        let rec = get_in(&txn, key)?.ok_or_else(|| not_found(key))?;
        {
            let ch = txn.open_multimap_table(CHILDREN)?;
            let kids = ch
                .get(key)?
                .take(3)
                .map(|k| k.map(|k| format!("{:?}", k.value())))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            if !kids.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?}: it has children ({}{}); remove them first",
                    kids[..kids.len().min(2)].join(", "),
                    if kids.len() > 2 { ", ..." } else { "" }
                )));
            }
        }
        txn.open_table(SNAPSHOTS)?.remove(key)?;
        if !rec.parent.is_empty() {
            txn.open_multimap_table(CHILDREN)?
                .remove(rec.parent.as_str(), key)?;
        }
        pause_point("remove-in-txn");
        txn.commit()?;
        Ok(rec)
    }

    /// Changes the labels of `key` as containerd's Update does: `fieldpaths` empty replaces
    /// all labels, `labels` replaces all, `labels.K` sets K (or removes it when `labels` has
    /// no value for it); other fields cannot change.
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Record> {
        let txn = self.db.begin_write()?;
        let mut rec = get_in(&txn, key)?.ok_or_else(|| not_found(key))?;
        if fieldpaths.is_empty() {
            rec.labels = labels;
        } else {
            for path in fieldpaths {
                if let Some(k) = path.strip_prefix("labels.") {
                    match labels.get(k).filter(|v| !v.is_empty()) {
                        Some(v) => rec.labels.insert(k.to_string(), v.clone()),
                        None => rec.labels.remove(k),
                    };
                } else if path == "labels" {
                    rec.labels = labels.clone();
                } else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update field {path:?} of snapshot {key:?}: only labels \
                         (\"labels\" or \"labels.KEY\") can change"
                    )));
                }
            }
        }
        check_labels(&rec.labels)?;
        rec.updated = SystemTime::now();
        put_in(&txn, key, &rec)?;
        txn.commit()?;
        Ok(rec)
    }

    /// Runs `f` with the set of directory numbers the store knows, while no change can be
    /// recorded (it holds the write lock), so `f` may delete directories that are not in it.
    pub fn with_known_ids<T>(&self, f: impl FnOnce(&HashSet<u64>) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_write()?;
        let mut ids = HashSet::new();
        {
            let t = txn.open_table(SNAPSHOTS)?;
            for row in t.iter()? {
                let (_, v) = row?;
                ids.insert(decode(v.value())?.id);
            }
        }
        let out = f(&ids);
        txn.abort()?;
        out
    }
}
