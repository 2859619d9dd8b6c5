//! Persistent control-plane state.
//!
//! The [`Store`] trait is shaped after etcd's data model so that an etcd-backed store can
//! replace the embedded one without touching the controller:
//! - one global revision, bumped once per committed [`ChangeSet`] (etcd: one `Txn`);
//! - every value carries its create/modify revision (etcd `create_revision`/`mod_revision`);
//! - keys of one kind share a prefix, so listing a kind is one range read;
//! - a change set may carry an expected revision (etcd `Compare` on the revision), which is how
//!   two controllers would detect a lost update;
//! - [`Store::events_since`] + [`Store::watch`] give a resumable change stream (etcd `Watch`
//!   with `start_revision`; [`StoreError::Compacted`] when history was trimmed).
//!
//! The trait is synchronous: the embedded store does short fsync-bound writes, and callers on
//! an async runtime run store calls on the blocking pool. An etcd implementation would drive
//! its client from its own runtime handle.
//!
//! [`RedbStore`] is the embedded implementation: a single `redb` file under the state
//! directory. redb commits with [`redb::Durability::Immediate`] by default, which writes the
//! new pages, flips the header slot and `fdatasync`s the file before `commit()` returns
//! (verified in redb 4.6 `PageManager::commit` → `storage.flush()` → `File::sync_data`); we
//! also set it explicitly on every transaction so the guarantee does not depend on a default.
//! So a revision returned by [`Store::commit`] survives a crash or power loss.

use std::fs;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::types::{Resource, ResourceKey, ResourceKind, Revision};

/// A stored value with its etcd-style revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub value: T,
    /// Revision of the change set that created the key (kept across updates).
    pub create_revision: Revision,
    /// Revision of the change set that last wrote the key.
    pub mod_revision: Revision,
}

/// One change in a [`ChangeSet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// Create or replace.
    Put(Resource),
    /// Remove; the key must exist, or the whole change set fails.
    Delete(ResourceKey),
}

/// Changes committed together: all of them or none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub changes: Vec<Change>,
    /// When set, the commit fails with [`StoreError::Conflict`] unless the store is still at
    /// this revision (optimistic concurrency, like an etcd `Txn` comparing revisions).
    pub expect_revision: Option<Revision>,
}

impl ChangeSet {
    pub fn new(changes: Vec<Change>) -> Self {
        Self {
            changes,
            expect_revision: None,
        }
    }
}

/// What one committed change did, as seen by watchers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventChange {
    Put(Versioned<Resource>),
    Delete(ResourceKey),
}

/// Everything one revision changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub revision: Revision,
    pub changes: Vec<EventChange>,
}

/// The whole store as of one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub revision: Revision,
    pub resources: Vec<Versioned<Resource>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database error: {0}")]
    Database(#[from] redb::Error),
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state database {0} is already open (is another vdfwd running with the same state directory?)"
    )]
    AlreadyOpen(PathBuf),
    #[error("stored value for {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store is at revision {actual}, the change was prepared against {expected}")]
    Conflict {
        expected: Revision,
        actual: Revision,
    },
    #[error("{0} does not exist")]
    NotFound(ResourceKey),
    #[error(
        "history before revision {oldest} was compacted (asked for changes after {requested})"
    )]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Database(e.into())
}

/// Control-plane state storage. See the module docs for the model.
pub trait Store: Send + Sync + 'static {
    /// The latest committed revision (0 for an empty store).
    fn revision(&self) -> Result<Revision, StoreError>;

    fn get(&self, key: &ResourceKey) -> Result<Option<Versioned<Resource>>, StoreError>;

    /// Every resource of one kind, in key order, and the revision they were read at.
    fn list(&self, kind: ResourceKind) -> Result<(Revision, Vec<Versioned<Resource>>), StoreError>;

    /// Every resource, read consistently at one revision.
    fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// Applies a change set atomically and durably; returns its revision. An empty change set
    /// commits nothing and returns the current revision.
    fn commit(&self, changes: &ChangeSet) -> Result<Revision, StoreError>;

    /// The events of every revision after `after`, oldest first.
    fn events_since(&self, after: Revision) -> Result<Vec<Event>, StoreError>;

    /// A receiver that sees the latest committed revision; wake-up only, read the events with
    /// [`Store::events_since`].
    fn watch(&self) -> watch::Receiver<Revision>;
}

/// key -> JSON of `Versioned<Resource>`.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// revision -> JSON of `Event` (bounded history for watchers).
const CHANGELOG: TableDefinition<u64, &[u8]> = TableDefinition::new("changelog");
/// "revision" -> u64, "schema" -> u64.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_SCHEMA: &str = "schema";
const SCHEMA_VERSION: u64 = 1;

/// How many revisions of change history are kept for [`Store::events_since`].
pub const CHANGELOG_RETAIN: u64 = 1024;

/// The file name of the database inside the state directory.
pub const DB_FILE: &str = "vdfw.redb";

/// Embedded, crash-safe store: one redb file under a state directory.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    revision_tx: watch::Sender<Revision>,
}

impl RedbStore {
    /// Opens (creating if needed) the store in `state_dir` (created with mode 0700).
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            path: state_dir.to_path_buf(),
            source,
        };
        create_private_dir(state_dir).map_err(io)?;
        let path = state_dir.join(DB_FILE);
        let existed = path.exists();
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::AlreadyOpen(path));
            }
            Err(e) => return Err(db_err(e)),
        };
        if !existed {
            // The file's directory entry is only durable once the directory is synced.
            fs::File::open(state_dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        let store = Self {
            db,
            path,
            revision_tx: watch::channel(0).0,
        };
        store.init()?;
        let rev = store.revision()?;
        store.revision_tx.send_replace(rev);
        Ok(store)
    }

    /// A store that lives in memory only (`vdfwd --check`, tests): same semantics, nothing
    /// survives the process.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(db_err)?;
        let store = Self {
            db,
            path: PathBuf::from(":memory:"),
            revision_tx: watch::channel(0).0,
        };
        store.init()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the tables and checks the schema version.
    fn init(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            txn.open_table(OBJECTS).map_err(db_err)?;
            txn.open_table(CHANGELOG).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let schema = meta.get(META_SCHEMA).map_err(db_err)?.map(|v| v.value());
            match schema {
                None => {
                    meta.insert(META_SCHEMA, SCHEMA_VERSION).map_err(db_err)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::Corrupt {
                        key: META_SCHEMA.into(),
                        reason: format!(
                            "schema version {other}, this build understands {SCHEMA_VERSION}"
                        ),
                    });
                }
            }
        }
        txn.commit().map_err(db_err)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Versioned<Resource>, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain data types to JSON cannot fail (no maps with non-string keys,
    // no custom serializers that error).
    serde_json::to_vec(value).unwrap_or_default()
}

/// The exclusive upper bound of a prefix scan: the prefix with its trailing `/` bumped to `0`.
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.trim_end_matches('/').to_string();
    end.push('0');
    end
}

fn read_list(
    objects: &impl ReadableTable<&'static str, &'static [u8]>,
    kind: ResourceKind,
) -> Result<Vec<Versioned<Resource>>, StoreError> {
    let start = kind.prefix();
    let end = prefix_end(start);
    let mut out = Vec::new();
    for entry in objects.range(start..end.as_str()).map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        out.push(decode(k.value(), v.value())?);
    }
    Ok(out)
}

impl Store for RedbStore {
    fn revision(&self) -> Result<Revision, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        Ok(meta
            .get(META_REVISION)
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn get(&self, key: &ResourceKey) -> Result<Option<Versioned<Resource>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let objects = txn.open_table(OBJECTS).map_err(db_err)?;
        let skey = key.storage_key();
        match objects.get(skey.as_str()).map_err(db_err)? {
            Some(v) => Ok(Some(decode(&skey, v.value())?)),
            None => Ok(None),
        }
    }

    fn list(&self, kind: ResourceKind) -> Result<(Revision, Vec<Versioned<Resource>>), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let rev = meta
            .get(META_REVISION)
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0);
        let objects = txn.open_table(OBJECTS).map_err(db_err)?;
        Ok((rev, read_list(&objects, kind)?))
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let revision = meta
            .get(META_REVISION)
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0);
        let objects = txn.open_table(OBJECTS).map_err(db_err)?;
        let mut resources = Vec::new();
        for kind in ResourceKind::ALL {
            resources.extend(read_list(&objects, kind)?);
        }
        Ok(Snapshot {
            revision,
            resources,
        })
    }

    fn commit(&self, set: &ChangeSet) -> Result<Revision, StoreError> {
        // begin_write serializes writers, so the read-check-write below is race free.
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let revision = {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let current = meta
                .get(META_REVISION)
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(0);
            if let Some(expected) = set.expect_revision {
                if expected != current {
                    return Err(StoreError::Conflict {
                        expected,
                        actual: current,
                    });
                }
            }
            if set.changes.is_empty() {
                return Ok(current);
            }
            let revision = current + 1;
            let mut objects = txn.open_table(OBJECTS).map_err(db_err)?;
            let mut events = Vec::with_capacity(set.changes.len());
            for change in &set.changes {
                match change {
                    Change::Put(resource) => {
                        let skey = resource.key().storage_key();
                        let create_revision = match objects.get(skey.as_str()).map_err(db_err)? {
                            Some(old) => decode(&skey, old.value())?.create_revision,
                            None => revision,
                        };
                        let value = Versioned {
                            value: resource.clone(),
                            create_revision,
                            mod_revision: revision,
                        };
                        objects
                            .insert(skey.as_str(), encode(&value).as_slice())
                            .map_err(db_err)?;
                        events.push(EventChange::Put(value));
                    }
                    Change::Delete(key) => {
                        let skey = key.storage_key();
                        if objects.remove(skey.as_str()).map_err(db_err)?.is_none() {
                            // Dropping `txn` without commit aborts everything written so far.
                            return Err(StoreError::NotFound(key.clone()));
                        }
                        events.push(EventChange::Delete(key.clone()));
                    }
                }
            }
            let mut log = txn.open_table(CHANGELOG).map_err(db_err)?;
            let event = Event {
                revision,
                changes: events,
            };
            log.insert(revision, encode(&event).as_slice())
                .map_err(db_err)?;
            if revision > CHANGELOG_RETAIN {
                let cutoff = revision - CHANGELOG_RETAIN;
                let old: Vec<u64> = log
                    .range(..=cutoff)
                    .map_err(db_err)?
                    .map(|e| e.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()
                    .map_err(db_err)?;
                for k in old {
                    log.remove(k).map_err(db_err)?;
                }
            }
            meta.insert(META_REVISION, revision).map_err(db_err)?;
            revision
        };
        txn.commit().map_err(db_err)?;
        self.revision_tx.send_replace(revision);
        Ok(revision)
    }

    fn events_since(&self, after: Revision) -> Result<Vec<Event>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let log = txn.open_table(CHANGELOG).map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let current = meta
            .get(META_REVISION)
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0);
        if after >= current {
            return Ok(Vec::new());
        }
        let oldest = log
            .first()
            .map_err(db_err)?
            .map(|(k, _)| k.value())
            .unwrap_or(current + 1);
        if after + 1 < oldest {
            return Err(StoreError::Compacted {
                requested: after,
                oldest,
            });
        }
        let mut out = Vec::new();
        for entry in log.range(after + 1..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let event: Event =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    key: format!("changelog/{}", k.value()),
                    reason: e.to_string(),
                })?;
            out.push(event);
        }
        Ok(out)
    }

    fn watch(&self) -> watch::Receiver<Revision> {
        self.revision_tx.subscribe()
    }
}
