//! The agent's durable state: a plain row persister over SQLite.
//!
//! The ledger keeps its state in memory, maps its own interned ids to the rows
//! defined here, and hands every row it changed to [`Store::write`] as one
//! [`WriteBatch`] per group commit. The agent acknowledges the messages behind a
//! batch only after `write` has returned, so after a kill -9 the restarted
//! agent [`Store::load`]s at least everything it acknowledged, and the `seq` kept
//! per cell makes a resent message count once.
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: a committed
//! transaction is in the operating system's hands before `write` returns, which
//! survives the death of the process (what tally promises) though not
//! necessarily a power cut, and costs no fsync per commit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior};

use tally_audit::CellCounts;

use crate::{Error, Result};

/// The schema version this agent writes; a database of a higher version is refused.
pub const SCHEMA_VERSION: i64 = 4;

/// The database's file name inside the data directory.
pub const FILE_NAME: &str = "agent.db";

/// How long a statement waits for a lock held by another connection, such as an
/// operator's `sqlite3` shell, before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Every table is STRICT so that a stray value of the wrong type is refused at
/// write time instead of surfacing as a confusing error at the next start.
///
/// Cells and history lead their primary key with the bucket: a commit touches
/// the newest buckets of every source and series, and with the bucket first
/// those rows sit together at the end of the tree instead of on one page per
/// (source, series, partition) — which made a commit of 10,000 new cells over ten
/// times slower. Pruning by age is then a range delete on the key.
///
/// Only the buckets of the window are loaded back into memory (DESIGN §8);
/// what the agent reads of older ones goes by series: `bucket_sum` holds each
/// (series, bucket)'s sum of cells, keyed series first so that a topic's
/// history over a day is a few short range reads, and `history` has an index
/// by series for the same reason. A series row carries its totals over the
/// stored cells (`live_*`) and its first bucket, so that a restart need not
/// read every cell to know them.
const SCHEMA: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE source (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    cluster      TEXT NOT NULL,
    tier_kinds   TEXT NOT NULL,
    epoch        INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    messages     INTEGER NOT NULL,
    errors       INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE series (
    id                INTEGER PRIMARY KEY,
    cluster           TEXT NOT NULL,
    topic             TEXT NOT NULL,
    tier              TEXT NOT NULL,
    pruned_records    INTEGER NOT NULL,
    pruned_expired    INTEGER NOT NULL,
    first_bucket      INTEGER,
    live_records      INTEGER NOT NULL DEFAULT 0,
    live_bytes        INTEGER NOT NULL DEFAULT 0,
    live_no_timestamp INTEGER NOT NULL DEFAULT 0,
    live_expired      INTEGER NOT NULL DEFAULT 0,
    live_skipped      INTEGER NOT NULL DEFAULT 0,
    live_aborted      INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;

CREATE TABLE cell (
    source       INTEGER NOT NULL,
    series       INTEGER NOT NULL,
    partition_no INTEGER NOT NULL,
    bucket       INTEGER NOT NULL,
    epoch        INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    records      INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    no_timestamp INTEGER NOT NULL,
    expired      INTEGER NOT NULL,
    skipped      INTEGER NOT NULL,
    aborted      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, source, series, partition_no)
) STRICT, WITHOUT ROWID;

CREATE TABLE history (
    series              INTEGER NOT NULL,
    bucket              INTEGER NOT NULL,
    status              TEXT NOT NULL,
    unresolved_at_close INTEGER NOT NULL,
    records             INTEGER NOT NULL,
    reference           INTEGER NOT NULL,
    pending             INTEGER NOT NULL,
    expired             INTEGER NOT NULL,
    skipped             INTEGER NOT NULL,
    closed_at_ms        INTEGER NOT NULL,
    PRIMARY KEY (bucket, series)
) STRICT, WITHOUT ROWID;


CREATE TABLE kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT, WITHOUT ROWID;
";

/// The tables and index version 3 added: part of a new database's schema,
/// and of the upgrade from version 2.
const SCHEMA_3_ADDED: &str = "
CREATE INDEX history_by_series ON history (series, bucket);

CREATE TABLE bucket_sum (
    series       INTEGER NOT NULL,
    bucket       INTEGER NOT NULL,
    records      INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    no_timestamp INTEGER NOT NULL,
    expired      INTEGER NOT NULL,
    skipped      INTEGER NOT NULL,
    aborted      INTEGER NOT NULL,
    PRIMARY KEY (series, bucket)
) STRICT, WITHOUT ROWID;
";

/// The table version 4 added: each lag entry's health by a row id, its state
/// in a compact binary form, so that a lag sample rewrites a row of some
/// 100 bytes found by its integer key (version 3 kept it as JSON under its
/// four names, 850 bytes).
const SCHEMA_4_ADDED: &str = "
CREATE TABLE lag_health (
    id             INTEGER PRIMARY KEY,
    cluster        TEXT NOT NULL,
    consumer_group TEXT NOT NULL,
    topic          TEXT NOT NULL,
    partition_no   INTEGER NOT NULL,
    state          BLOB NOT NULL
) STRICT;
";

/// Upgrades a version-3 database (after [`SCHEMA_4_ADDED`]): the health rows
/// move to `lag_health` with their JSON state, which the ledger still reads,
/// and which the next sample of each rewrites in the compact form.
const UPGRADE_3_TO_4: &str = "
INSERT INTO lag_health (cluster, consumer_group, topic, partition_no, state)
    SELECT cluster, consumer_group, topic, partition_no, CAST(state AS BLOB) FROM health
    ORDER BY cluster, consumer_group, topic, partition_no;
DROP TABLE health;
UPDATE meta SET value = 4 WHERE key = 'schema_version';
";

// The upserts below give every column of the row, and these tables have no
// index but their key: so `INSERT OR REPLACE` stores the same row as an
// `ON CONFLICT DO UPDATE`, with one b-tree search where that takes two (a
// third less time per row, measured on the cell table). The history has an
// index of its own, which a replace would rewrite, and keeps its upsert.
const UPSERT_SOURCE: &str = "
INSERT OR REPLACE INTO source (id, name, cluster, tier_kinds, epoch, last_seen_ms, messages, errors)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const UPSERT_SERIES: &str = "
INSERT OR REPLACE INTO series (id, cluster, topic, tier, pruned_records, pruned_expired,
                               first_bucket, live_records, live_bytes, live_no_timestamp,
                               live_expired, live_skipped, live_aborted)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

const UPSERT_SUM: &str = "
INSERT OR REPLACE INTO bucket_sum (series, bucket, records, bytes, no_timestamp, expired,
                                   skipped, aborted)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Upgrades a version-2 database (after [`SCHEMA_3_ADDED`]): the series'
/// totals and first buckets and the per-(series, bucket) sums are computed
/// once from the cells.
const UPGRADE_2_TO_3: &str = "
ALTER TABLE series ADD COLUMN first_bucket INTEGER;
ALTER TABLE series ADD COLUMN live_records INTEGER NOT NULL DEFAULT 0;
ALTER TABLE series ADD COLUMN live_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE series ADD COLUMN live_no_timestamp INTEGER NOT NULL DEFAULT 0;
ALTER TABLE series ADD COLUMN live_expired INTEGER NOT NULL DEFAULT 0;
ALTER TABLE series ADD COLUMN live_skipped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE series ADD COLUMN live_aborted INTEGER NOT NULL DEFAULT 0;
INSERT INTO bucket_sum
    SELECT series, bucket, sum(records), sum(bytes), sum(no_timestamp), sum(expired),
           sum(skipped), sum(aborted)
    FROM cell GROUP BY series, bucket;
UPDATE series SET
    (first_bucket, live_records, live_bytes, live_no_timestamp, live_expired, live_skipped,
     live_aborted) =
    (SELECT min(bucket), coalesce(sum(records), 0), coalesce(sum(bytes), 0),
            coalesce(sum(no_timestamp), 0), coalesce(sum(expired), 0),
            coalesce(sum(skipped), 0), coalesce(sum(aborted), 0)
     FROM bucket_sum WHERE bucket_sum.series = series.id);
UPDATE meta SET value = 3 WHERE key = 'schema_version';
";

const UPSERT_CELL: &str = "
INSERT OR REPLACE INTO cell (source, series, partition_no, bucket, epoch, seq,
                             records, bytes, no_timestamp, expired, skipped, aborted)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

const UPSERT_HISTORY: &str = "
INSERT INTO history (series, bucket, status, unresolved_at_close, records, reference,
                     pending, expired, skipped, closed_at_ms)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (bucket, series) DO UPDATE SET
    status = excluded.status, unresolved_at_close = excluded.unresolved_at_close,
    records = excluded.records, reference = excluded.reference, pending = excluded.pending,
    expired = excluded.expired, skipped = excluded.skipped, closed_at_ms = excluded.closed_at_ms";

const UPSERT_HEALTH: &str = "
INSERT OR REPLACE INTO lag_health (id, cluster, consumer_group, topic, partition_no, state)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const DELETE_HEALTH: &str = "DELETE FROM lag_health WHERE id = ?1";

const DELETE_KV: &str = "DELETE FROM kv WHERE key = ?1";

const UPSERT_KV: &str = "
INSERT INTO kv (key, value) VALUES (?1, ?2)
ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// An emitter known to the agent, keyed by `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    /// The ledger's interned id of the source.
    pub id: u32,
    /// The source name the emitter announced in its `hello`.
    pub name: String,
    /// The cluster the emitter reports for.
    pub cluster: String,
    /// The tier kinds it announced, as JSON.
    pub tier_kinds: String,
    /// The `started_at_ms` of its latest `hello`: a new value means a new emitter run.
    pub epoch: i64,
    /// When a message of it last arrived, epoch milliseconds.
    pub last_seen_ms: i64,
    /// Messages received from it.
    pub messages: u64,
    /// Messages of it that were refused.
    pub errors: u64,
}

/// A counted series: one tier of one topic in one cluster, keyed by `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRow {
    /// The ledger's interned id of the series.
    pub id: u32,
    /// The cluster of the topic.
    pub cluster: String,
    /// The topic.
    pub topic: String,
    /// The tier, as written on the wire (`broker`, `group:billing`, …).
    pub tier: String,
    /// Records of the cells already pruned, so that totals survive pruning.
    pub pruned_records: u64,
    /// Expired records of the cells already pruned.
    pub pruned_expired: u64,
    /// The first bucket it ever counted in, if any.
    pub first_bucket: Option<i64>,
    /// The sum of its stored cells (those not pruned yet).
    pub live: CellCounts,
}

/// The sum of the cells of one series in one bucket, keyed by (`series`, `bucket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumRow {
    /// The [`SeriesRow::id`].
    pub series: u32,
    /// The bucket start, epoch milliseconds.
    pub bucket: i64,
    /// The sum of the series' cells in the bucket.
    pub counts: CellCounts,
}

/// The latest cumulative count of one source for one series, partition and
/// bucket, keyed by (`source`, `series`, `partition`, `bucket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellRow {
    /// The [`SourceRow::id`] that counted.
    pub source: u32,
    /// The [`SeriesRow::id`] counted.
    pub series: u32,
    /// The topic partition.
    pub partition: i32,
    /// The bucket start, epoch milliseconds.
    pub bucket: i64,
    /// The source's epoch when it sent this count.
    pub epoch: i64,
    /// The `seq` of the message that carried this count; an older one is ignored.
    pub seq: u64,
    /// The values counted.
    pub counts: CellCounts,
}

/// The books of one series for one closed bucket, keyed by (`series`, `bucket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The [`SeriesRow::id`].
    pub series: u32,
    /// The bucket start, epoch milliseconds.
    pub bucket: i64,
    /// The bucket's status (`complete`, `pending`, `incomplete`, `excess`, `late`).
    pub status: String,
    /// Whether the bucket was pending or incomplete when its grace period ended.
    pub unresolved_at_close: bool,
    /// Records counted by the series.
    pub records: u64,
    /// Records counted by the reference tier.
    pub reference: u64,
    /// Records the group had not consumed yet.
    pub pending: u64,
    /// Records deleted by retention before the group consumed them.
    pub expired: u64,
    /// Records before the group's first commit.
    pub skipped: u64,
    /// When the bucket closed, epoch milliseconds.
    pub closed_at_ms: i64,
}

/// The health window of one consumer group on one partition, keyed by its
/// row `id` (the ledger's), with the names it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRow {
    /// The row id the ledger gave the lag entry.
    pub id: i64,
    /// The cluster.
    pub cluster: Arc<str>,
    /// The consumer group.
    pub group: Arc<str>,
    /// The topic.
    pub topic: Arc<str>,
    /// The topic partition.
    pub partition: i32,
    /// The window's state, in the ledger's compact form (or JSON, as a
    /// version-3 database held it).
    pub state: Vec<u8>,
}

/// Rows to store in one transaction. Every `Vec` is an upsert by its row's key,
/// applied in order, so the last row for a key wins; `health_deleted` is applied
/// after `health`, so a key in both ends up deleted.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// Sources to insert or replace.
    pub sources: Vec<SourceRow>,
    /// Series to insert or replace.
    pub series: Vec<SeriesRow>,
    /// Cells to insert or replace.
    pub cells: Vec<CellRow>,
    /// Per-(series, bucket) sums to insert or replace.
    pub sums: Vec<SumRow>,
    /// Closed-bucket history to insert or replace.
    pub history: Vec<HistoryRow>,
    /// Health windows to insert or replace.
    pub health: Vec<HealthRow>,
    /// Health windows to delete, by row id.
    pub health_deleted: Vec<i64>,
    /// Free-form settings of the ledger to insert or replace, by key.
    pub kv: Vec<(String, String)>,
    /// Keys to delete from the free-form settings, applied after `kv`.
    pub kv_deleted: Vec<String>,
    /// Deletes the cells, sums and history of every bucket that starts
    /// before this (retention), last, in the same transaction as the rows
    /// above (which carry the series' totals that moved to `pruned`).
    pub prune_before: Option<i64>,
}

impl WriteBatch {
    /// Whether the batch holds no row at all, so writing it would do nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of rows in the batch, deletions included.
    pub fn len(&self) -> usize {
        self.sources.len()
            + self.series.len()
            + self.cells.len()
            + self.sums.len()
            + self.history.len()
            + self.health.len()
            + self.health_deleted.len()
            + self.kv.len()
            + self.kv_deleted.len()
            + usize::from(self.prune_before.is_some())
    }
}

/// Everything in the store, each table ordered by its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Every source, by id.
    pub sources: Vec<SourceRow>,
    /// Every series, by id.
    pub series: Vec<SeriesRow>,
    /// Every cell, by (bucket, source, series, partition).
    pub cells: Vec<CellRow>,
    /// Every closed-bucket history row, by (bucket, series).
    pub history: Vec<HistoryRow>,
    /// Every health window, by (cluster, group, topic, partition).
    pub health: Vec<HealthRow>,
    /// Every key and value, by key.
    pub kv: Vec<(String, String)>,
    /// Rows left out because they could not be read (only the lenient
    /// readers used to restore the agent skip rows; [`Store::load`] fails).
    pub skipped: Skipped,
}

/// Rows a lenient read left out, and what was wrong with the first few.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// How many rows were left out.
    pub rows: u64,
    /// What was wrong with the first [`Skipped::EXAMPLES`] of them.
    pub examples: Vec<String>,
}

impl Skipped {
    /// How many examples are kept.
    pub const EXAMPLES: usize = 10;

    /// Notes one row left out.
    pub fn note(&mut self, what: impl FnOnce() -> String) {
        self.rows += 1;
        if self.examples.len() < Self::EXAMPLES {
            self.examples.push(what());
        }
    }

    /// Adds what another read left out.
    pub fn absorb(&mut self, other: Skipped) {
        self.rows += other.rows;
        let room = Self::EXAMPLES.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }
}

/// The agent's state database, `agent.db` in the data directory.
///
/// One `Store` is the only writer; it is `Send` so that it can live on a
/// dedicated writer thread.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

// The store lives on a dedicated writer thread; this stops compiling if it cannot.
const _: fn() = || {
    fn on_writer_thread<T: Send + 'static>() {}
    on_writer_thread::<Store>();
};

impl Store {
    /// Opens `dir/agent.db`, creating the directory and the database if they
    /// are missing. Refuses a file that is not a tally agent database, and one
    /// written with a newer schema version.
    pub fn open(dir: &Path) -> Result<Store> {
        if let Ok(meta) = std::fs::metadata(dir)
            && !meta.is_dir()
        {
            return Err(Error::Io {
                what: format!("using '{}' as the agent's data directory", dir.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    "it is a file; give a directory, which is created if missing",
                ),
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: format!("creating the agent's data directory '{}'", dir.display()),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        // Without SQLITE_OPEN_URI, so that a directory whose name starts with
        // `file:` is taken as a path.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(|source| Error::Store {
            path: path.clone(),
            source,
        })?;
        let mut store = Store { conn, path };
        store.configure().map_err(|source| store.error(source))?;
        store.check_schema()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every row, each table ordered by its key, from one consistent
    /// snapshot of the database.
    pub fn load(&self) -> Result<Loaded> {
        self.read_all().map_err(|source| self.error(source))
    }

    /// Writes the batch in one transaction: when this returns `Ok`, every row of
    /// it has been committed, and otherwise none has.
    pub fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                write_rows(&tx, batch)?;
                tx.commit()
            });
        result.map_err(|source| self.error(source))
    }

    /// Writes the batches in one transaction, where a batch holding a row
    /// that cannot be stored (a value out of range or of the wrong type) is
    /// left out alone, under a savepoint of its own, and its error returned
    /// in its place; the others commit. `Err` when the transaction itself
    /// fails (the disk, a lock): then nothing is committed.
    pub fn write_each(
        &mut self,
        batches: &[&WriteBatch],
    ) -> Result<Vec<std::result::Result<(), String>>> {
        // The common case first: every batch in one plain transaction. Only
        // when a row cannot be stored is the transaction rolled back and
        // written again with a savepoint per batch, which costs about a
        // third more per commit.
        let path = self.path.clone();
        let failed = |source| Error::Store {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        match batches.iter().try_for_each(|batch| write_rows(&tx, batch)) {
            Ok(()) => {
                tx.commit().map_err(failed)?;
                return Ok(vec![Ok(()); batches.len()]);
            }
            Err(e) if is_row_fault(&e) => tx.rollback().map_err(failed)?,
            Err(e) => return Err(failed(e)),
        }
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        let mut outcomes = Vec::with_capacity(batches.len());
        for batch in batches {
            if batch.is_empty() {
                outcomes.push(Ok(()));
                continue;
            }
            let savepoint = tx.savepoint().map_err(failed)?;
            match write_rows(&savepoint, batch) {
                Ok(()) => {
                    savepoint.commit().map_err(failed)?;
                    outcomes.push(Ok(()));
                }
                // Dropping the savepoint rolls this batch back alone.
                Err(e) if is_row_fault(&e) => outcomes.push(Err(e.to_string())),
                Err(e) => return Err(failed(e)),
            }
        }
        tx.commit().map_err(failed)?;
        Ok(outcomes)
    }

    /// Deletes the cells, sums and history of every bucket that starts before
    /// `bucket_ms`, in one transaction, and returns how many rows it deleted.
    /// Sources, series, health and keys are left alone.
    pub fn prune_before(&mut self, bucket_ms: i64) -> Result<u64> {
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                let deleted = prune_rows(&tx, bucket_ms)?;
                tx.commit()?;
                Ok(deleted)
            });
        let deleted = result.map_err(|source| self.error(source))?;
        Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
    }

    fn error(&self, source: rusqlite::Error) -> Error {
        Error::Store {
            path: self.path.clone(),
            source,
        }
    }

    fn configure(&mut self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        // The first statement to read the file: a file that is not SQLite fails here.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                path = %self.path.display(),
                journal_mode = %mode,
                "the state database cannot use WAL mode here; commits will be slower"
            );
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.conn.set_prepared_statement_cache_capacity(32);
        Ok(())
    }

    /// Creates the schema in an empty database, and refuses a database that is
    /// not tally's or that a newer tally wrote.
    fn check_schema(&mut self) -> Result<()> {
        let Store { conn, path } = self;
        let failed = |source| Error::Store {
            path: path.clone(),
            source,
        };
        let refuse = |problem| Error::StoreSchema {
            path: path.clone(),
            problem,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        match schema_version(&tx).map_err(failed)? {
            SchemaFound::Empty => tx
                .execute_batch(SCHEMA)
                .and_then(|()| tx.execute_batch(SCHEMA_3_ADDED))
                .and_then(|()| tx.execute_batch(SCHEMA_4_ADDED))
                .and_then(|()| {
                    tx.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                        [SCHEMA_VERSION],
                    )
                })
                .and_then(|_| tx.commit())
                .map_err(failed),
            SchemaFound::Version(version) if version == SCHEMA_VERSION => Ok(()),
            SchemaFound::Version(version @ 1..=3) => {
                // Version 1 had no `aborted` count: every cell it holds counted none.
                let to_2 = if version == 1 {
                    "ALTER TABLE cell ADD COLUMN aborted INTEGER NOT NULL DEFAULT 0;"
                } else {
                    ""
                };
                tracing::info!(
                    path = %path.display(),
                    from = version,
                    to = SCHEMA_VERSION,
                    "upgrading the state database{}",
                    if version < 3 {
                        " (sums are computed once from the stored cells)"
                    } else {
                        ""
                    }
                );
                let mut steps = vec![to_2];
                if version < 3 {
                    steps.extend([SCHEMA_3_ADDED, UPGRADE_2_TO_3]);
                }
                steps.extend([SCHEMA_4_ADDED, UPGRADE_3_TO_4]);
                steps
                    .into_iter()
                    .try_for_each(|sql| tx.execute_batch(sql))
                    .and_then(|()| tx.commit())
                    .map_err(failed)
            }
            SchemaFound::Version(version) if version > SCHEMA_VERSION => Err(refuse(format!(
                "has schema version {version}, but this agent reads schema versions up to \
                 {SCHEMA_VERSION}; run the newer tally that wrote it, or move the file aside \
                 to start with empty state"
            ))),
            SchemaFound::Version(version) => Err(refuse(format!(
                "has schema version {version}, which no tally release writes (this agent reads \
                 1 to {SCHEMA_VERSION}); move the file aside to start with empty state"
            ))),
            SchemaFound::Foreign(tables) => Err(refuse(format!(
                "holds {tables} table(s) but no tally schema version, so it is not a tally agent \
                 database; move it aside or choose another data directory"
            ))),
        }
    }

    /// Everything but the cells, which [`Store::stream_cells`] reads. A row
    /// that cannot be read is left out and noted in [`Loaded::skipped`], so
    /// that one bad row does not keep the agent from starting.
    ///
    /// The history is read from bucket `from` on: the older history stays
    /// in the file, read by series through a [`ColdReader`].
    pub fn load_without_cells(&self, from: i64) -> Result<Loaded> {
        self.read_tables(false, true, from)
            .map_err(|source| self.error(source))
    }

    /// Copies what the write-ahead log holds into the database file, as far
    /// as no reader still needs it (SQLite's passive checkpoint, which a
    /// commit runs by itself once the log passes 1,000 pages, unless readers
    /// hold it back). Returns the pages in the log and those of them copied.
    pub fn checkpoint(&mut self) -> Result<(i64, i64)> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(1)?, row.get(2)?))
            })
            .map_err(|e| self.error(e))
    }

    /// Reads each (series, bucket)'s sum of the buckets from `from` on, on a
    /// connection of its own (so that it can run beside
    /// [`Store::load_without_cells`]): a range read per series, since the
    /// sums are keyed series first. A sum that cannot be read is left out;
    /// what was left out is returned with them.
    pub fn read_sums(path: &Path, from: i64) -> Result<(Vec<SumRow>, Skipped)> {
        let mut skipped = Skipped::default();
        let read = |skipped: &mut Skipped| -> rusqlite::Result<Vec<SumRow>> {
            let conn = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            let tx = conn.unchecked_transaction()?;
            let series: Vec<i64> = tx
                .prepare("SELECT id FROM series ORDER BY id")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut select = tx.prepare(
                "SELECT bucket, records, bytes, no_timestamp, expired, skipped, aborted
                 FROM bucket_sum WHERE series = ?1 AND bucket >= ?2 ORDER BY bucket",
            )?;
            let mut out = Vec::new();
            for id in series {
                let Ok(id32) = u32::try_from(id) else {
                    continue;
                };
                let mut rows = select.query(rusqlite::params![id, from])?;
                while let Some(row) = rows.next()? {
                    match counts_at(row, 1) {
                        Ok(counts) => out.push(SumRow {
                            series: id32,
                            bucket: row.get(0)?,
                            counts,
                        }),
                        Err(e) => skipped.note(|| format!("a bucket sum of series {id}: {e}")),
                    }
                }
            }
            Ok(out)
        };
        let sums = read(&mut skipped).map_err(|source| Error::Store {
            path: path.to_path_buf(),
            source,
        })?;
        Ok((sums, skipped))
    }

    /// Reads the cells of the buckets in `buckets` (start inclusive, end
    /// exclusive) on a connection of its own, handing them to `sink` in
    /// chunks of `chunk` rows, so that the caller can restore one chunk while
    /// the next is read. `sink` returns false to stop early. A cell that
    /// cannot be read is left out; what was left out is returned.
    pub fn stream_cells(
        path: &Path,
        chunk: usize,
        buckets: std::ops::Range<i64>,
        mut sink: impl FnMut(Vec<CellRow>) -> bool,
    ) -> Result<Skipped> {
        let mut skipped = Skipped::default();
        let mut read = || -> rusqlite::Result<()> {
            let conn = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            let mut select = conn.prepare(CELLS_RANGE_SELECT)?;
            let mut rows = select.query([buckets.start, buckets.end])?;
            let mut out = Vec::with_capacity(chunk);
            while let Some(row) = rows.next()? {
                match cell_row(row) {
                    Ok(cell) => out.push(cell),
                    Err(e) => {
                        skipped.note(|| format!("a cell: {e}"));
                        continue;
                    }
                }
                if out.len() >= chunk
                    && !sink(std::mem::replace(&mut out, Vec::with_capacity(chunk)))
                {
                    return Ok(());
                }
            }
            if !out.is_empty() {
                sink(out);
            }
            Ok(())
        };
        read().map_err(|source| Error::Store {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(skipped)
    }

    fn read_all(&self) -> rusqlite::Result<Loaded> {
        self.read_tables(true, false, i64::MIN)
    }

    /// Reads the tables; `lenient` leaves out (and notes) rows that cannot
    /// be read instead of failing.
    fn read_tables(&self, with_cells: bool, lenient: bool, from: i64) -> rusqlite::Result<Loaded> {
        // A read transaction, so that the tables come from one snapshot even if
        // an operator's shell writes in between.
        let tx = self.conn.unchecked_transaction()?;
        let mut skipped = lenient.then(Skipped::default);
        let loaded = Loaded {
            sources: read_table(
                &tx,
                "source",
                "SELECT id, name, cluster, tier_kinds, epoch, last_seen_ms, messages, errors
                 FROM source ORDER BY id",
                i64::MIN,
                &|row| {
                    Ok(SourceRow {
                        id: int(row, 0, "source.id")?,
                        name: row.get(1)?,
                        cluster: row.get(2)?,
                        tier_kinds: row.get(3)?,
                        epoch: row.get(4)?,
                        last_seen_ms: row.get(5)?,
                        messages: int(row, 6, "source.messages")?,
                        errors: int(row, 7, "source.errors")?,
                    })
                },
                &mut skipped,
            )?,
            series: read_table(
                &tx,
                "series",
                "SELECT id, cluster, topic, tier, pruned_records, pruned_expired, first_bucket,
                        live_records, live_bytes, live_no_timestamp, live_expired,
                        live_skipped, live_aborted
                 FROM series ORDER BY id",
                i64::MIN,
                &|row| {
                    Ok(SeriesRow {
                        id: int(row, 0, "series.id")?,
                        cluster: row.get(1)?,
                        topic: row.get(2)?,
                        tier: row.get(3)?,
                        pruned_records: int(row, 4, "series.pruned_records")?,
                        pruned_expired: int(row, 5, "series.pruned_expired")?,
                        first_bucket: row.get(6)?,
                        live: CellCounts {
                            records: int(row, 7, "series.live_records")?,
                            bytes: int(row, 8, "series.live_bytes")?,
                            no_timestamp: int(row, 9, "series.live_no_timestamp")?,
                            expired: int(row, 10, "series.live_expired")?,
                            skipped: int(row, 11, "series.live_skipped")?,
                            aborted: int(row, 12, "series.live_aborted")?,
                        },
                    })
                },
                &mut skipped,
            )?,
            cells: if with_cells {
                read_table(&tx, "cell", CELLS_SELECT, from, &cell_row, &mut skipped)?
            } else {
                Vec::new()
            },
            history: read_table(
                &tx,
                "history",
                "SELECT series, bucket, status, unresolved_at_close, records, reference,
                        pending, expired, skipped, closed_at_ms
                 FROM history WHERE bucket >= ?1 ORDER BY bucket, series",
                from,
                &|row| {
                    Ok(HistoryRow {
                        series: int(row, 0, "history.series")?,
                        bucket: row.get(1)?,
                        status: row.get(2)?,
                        unresolved_at_close: flag(row, 3, "history.unresolved_at_close")?,
                        records: int(row, 4, "history.records")?,
                        reference: int(row, 5, "history.reference")?,
                        pending: int(row, 6, "history.pending")?,
                        expired: int(row, 7, "history.expired")?,
                        skipped: int(row, 8, "history.skipped")?,
                        closed_at_ms: row.get(9)?,
                    })
                },
                &mut skipped,
            )?,
            health: read_table(
                &tx,
                "lag_health",
                "SELECT id, cluster, consumer_group, topic, partition_no, state
                 FROM lag_health ORDER BY id",
                i64::MIN,
                &|row| {
                    Ok(HealthRow {
                        id: row.get(0)?,
                        cluster: row.get::<_, String>(1)?.into(),
                        group: row.get::<_, String>(2)?.into(),
                        topic: row.get::<_, String>(3)?.into(),
                        partition: int(row, 4, "lag_health.partition_no")?,
                        state: row.get(5)?,
                    })
                },
                &mut skipped,
            )?,
            kv: read_table(
                &tx,
                "kv",
                "SELECT key, value FROM kv ORDER BY key",
                i64::MIN,
                &|row| Ok((row.get(0)?, row.get(1)?)),
                &mut skipped,
            )?,
            skipped: Skipped::default(),
        };
        tx.commit()?;
        Ok(Loaded {
            skipped: skipped.unwrap_or_default(),
            ..loaded
        })
    }
}

/// What [`Store::check_schema`] found in the file.
enum SchemaFound {
    /// No table at all: a new database.
    Empty,
    /// Tables, but no `meta` table or no version in it: another program's file.
    Foreign(i64),
    /// tally's schema of this version.
    Version(i64),
}

fn schema_version(tx: &Transaction<'_>) -> rusqlite::Result<SchemaFound> {
    let tables: i64 = tx.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
        [],
        |row| row.get(0),
    )?;
    if tables == 0 {
        return Ok(SchemaFound::Empty);
    }
    let has_meta: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta')",
        [],
        |row| row.get(0),
    )?;
    if !has_meta {
        return Ok(SchemaFound::Foreign(tables));
    }
    let version: Option<i64> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(version.map_or(SchemaFound::Foreign(tables), SchemaFound::Version))
}

/// Whether `e` is the fault of the rows written (a value that cannot be
/// stored), not of the database: then only their batch is refused.
fn is_row_fault(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::ToSqlConversionFailure(_) => true,
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            rusqlite::ErrorCode::ConstraintViolation
                | rusqlite::ErrorCode::TypeMismatch
                | rusqlite::ErrorCode::TooBig
        ),
        _ => false,
    }
}

fn write_rows(tx: &Connection, batch: &WriteBatch) -> rusqlite::Result<()> {
    if !batch.sources.is_empty() {
        let mut upsert = tx.prepare_cached(UPSERT_SOURCE)?;
        for s in &batch.sources {
            upsert.execute(rusqlite::params![
                s.id,
                s.name,
                s.cluster,
                s.tier_kinds,
                s.epoch,
                s.last_seen_ms,
                stored(s.messages, "source.messages")?,
                stored(s.errors, "source.errors")?,
            ])?;
        }
    }
    if !batch.series.is_empty() {
        let mut upsert = tx.prepare_cached(UPSERT_SERIES)?;
        for s in &batch.series {
            upsert.execute(rusqlite::params![
                s.id,
                s.cluster,
                s.topic,
                s.tier,
                stored(s.pruned_records, "series.pruned_records")?,
                stored(s.pruned_expired, "series.pruned_expired")?,
                s.first_bucket,
                stored(s.live.records, "series.live_records")?,
                stored(s.live.bytes, "series.live_bytes")?,
                stored(s.live.no_timestamp, "series.live_no_timestamp")?,
                stored(s.live.expired, "series.live_expired")?,
                stored(s.live.skipped, "series.live_skipped")?,
                stored(s.live.aborted, "series.live_aborted")?,
            ])?;
        }
    }
    if !batch.cells.is_empty() {
        let mut upsert = tx.prepare_cached(UPSERT_CELL)?;
        for c in &batch.cells {
            upsert.execute(rusqlite::params![
                c.source,
                c.series,
                c.partition,
                c.bucket,
                c.epoch,
                stored(c.seq, "cell.seq")?,
                stored(c.counts.records, "cell.records")?,
                stored(c.counts.bytes, "cell.bytes")?,
                stored(c.counts.no_timestamp, "cell.no_timestamp")?,
                stored(c.counts.expired, "cell.expired")?,
                stored(c.counts.skipped, "cell.skipped")?,
                stored(c.counts.aborted, "cell.aborted")?,
            ])?;
        }
    }
    if !batch.sums.is_empty() {
        let mut upsert = tx.prepare_cached(UPSERT_SUM)?;
        for s in &batch.sums {
            upsert.execute(rusqlite::params![
                s.series,
                s.bucket,
                stored(s.counts.records, "bucket_sum.records")?,
                stored(s.counts.bytes, "bucket_sum.bytes")?,
                stored(s.counts.no_timestamp, "bucket_sum.no_timestamp")?,
                stored(s.counts.expired, "bucket_sum.expired")?,
                stored(s.counts.skipped, "bucket_sum.skipped")?,
                stored(s.counts.aborted, "bucket_sum.aborted")?,
            ])?;
        }
    }
    if !batch.history.is_empty() {
        let mut upsert = tx.prepare_cached(UPSERT_HISTORY)?;
        for h in &batch.history {
            upsert.execute(rusqlite::params![
                h.series,
                h.bucket,
                h.status,
                h.unresolved_at_close,
                stored(h.records, "history.records")?,
                stored(h.reference, "history.reference")?,
                stored(h.pending, "history.pending")?,
                stored(h.expired, "history.expired")?,
                stored(h.skipped, "history.skipped")?,
                h.closed_at_ms,
            ])?;
        }
    }
    if !batch.health.is_empty() {
        let mut upsert = tx.prepare_cached(UPSERT_HEALTH)?;
        for h in &batch.health {
            upsert.execute(rusqlite::params![
                h.id,
                &*h.cluster,
                &*h.group,
                &*h.topic,
                h.partition,
                h.state
            ])?;
        }
    }
    if !batch.health_deleted.is_empty() {
        let mut delete = tx.prepare_cached(DELETE_HEALTH)?;
        for id in &batch.health_deleted {
            delete.execute([id])?;
        }
    }
    if !batch.kv.is_empty() {
        let mut upsert = tx.prepare_cached(UPSERT_KV)?;
        for (key, value) in &batch.kv {
            upsert.execute([key, value])?;
        }
    }
    if !batch.kv_deleted.is_empty() {
        let mut delete = tx.prepare_cached(DELETE_KV)?;
        for key in &batch.kv_deleted {
            delete.execute([key])?;
        }
    }
    if let Some(before) = batch.prune_before {
        prune_rows(tx, before)?;
    }
    Ok(())
}

/// Deletes the cells, sums and history of every bucket before `before`;
/// returns the rows deleted.
fn prune_rows(tx: &Connection, before: i64) -> rusqlite::Result<usize> {
    let mut deleted = tx
        .prepare_cached("DELETE FROM cell WHERE bucket < ?1")?
        .execute([before])?;
    deleted += tx
        .prepare_cached("DELETE FROM history WHERE bucket < ?1")?
        .execute([before])?;
    // Keyed series first: one short range delete per series.
    let series: Vec<i64> = tx
        .prepare_cached("SELECT id FROM series")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut delete =
        tx.prepare_cached("DELETE FROM bucket_sum WHERE series = ?1 AND bucket < ?2")?;
    for id in series {
        deleted += delete.execute([id, before])?;
    }
    Ok(deleted)
}

const CELLS_SELECT: &str = "SELECT source, series, partition_no, bucket, epoch, seq,
        records, bytes, no_timestamp, expired, skipped, aborted
 FROM cell WHERE bucket >= ?1 ORDER BY bucket, source, series, partition_no";

const CELLS_RANGE_SELECT: &str = "SELECT source, series, partition_no, bucket, epoch, seq,
        records, bytes, no_timestamp, expired, skipped, aborted
 FROM cell WHERE bucket >= ?1 AND bucket < ?2 ORDER BY bucket, source, series, partition_no";

/// Reads what the agent keeps only in the file: the cells, sums and history
/// of buckets older than its window (DESIGN §8), on a read-only connection
/// of its own. In WAL mode it reads what was committed, beside the writer.
pub struct ColdReader {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for ColdReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdReader")
            .field("path", &self.path)
            .finish()
    }
}

/// A stored bucket of one series, as the bucket view needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBucket {
    /// The [`SeriesRow::id`].
    pub series: u32,
    /// The bucket start, epoch milliseconds.
    pub bucket: i64,
    /// The sum of the series' cells in the bucket.
    pub counts: CellCounts,
    /// Whether the bucket was pending or incomplete when its grace period
    /// ended, where its close is on record.
    pub unresolved_at_close: Option<bool>,
}

impl ColdReader {
    /// Opens the database at `path` (a file [`Store::open`] made) for reading.
    pub fn open(path: &Path) -> Result<ColdReader> {
        let failed = |source| Error::Store {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(failed)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(ColdReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn error(&self, source: rusqlite::Error) -> Error {
        Error::Store {
            path: self.path.clone(),
            source,
        }
    }

    /// The stored cell of (`bucket`, `source`, `series`, `partition`), if any.
    pub fn cell(
        &self,
        bucket: i64,
        source: u32,
        series: u32,
        partition: i32,
    ) -> Result<Option<CellRow>> {
        self.conn
            .prepare_cached(
                "SELECT source, series, partition_no, bucket, epoch, seq,
                        records, bytes, no_timestamp, expired, skipped, aborted
                 FROM cell WHERE bucket = ?1 AND source = ?2 AND series = ?3 AND partition_no = ?4",
            )
            .and_then(|mut select| {
                select
                    .query_row(
                        rusqlite::params![bucket, source, series, partition],
                        cell_row,
                    )
                    .optional()
            })
            .map_err(|e| self.error(e))
    }

    /// The stored sum of `series` in `bucket`, if any.
    pub fn sum(&self, series: u32, bucket: i64) -> Result<Option<CellCounts>> {
        self.conn
            .prepare_cached(
                "SELECT records, bytes, no_timestamp, expired, skipped, aborted
                 FROM bucket_sum WHERE series = ?1 AND bucket = ?2",
            )
            .and_then(|mut select| {
                select
                    .query_row(rusqlite::params![series, bucket], |row| counts_at(row, 0))
                    .optional()
            })
            .map_err(|e| self.error(e))
    }

    /// The stored close of `series` in `bucket`: its status and whether it
    /// was unresolved at close.
    pub fn closed(&self, series: u32, bucket: i64) -> Result<Option<(String, bool)>> {
        self.conn
            .prepare_cached(
                "SELECT status, unresolved_at_close FROM history WHERE series = ?1 AND bucket = ?2",
            )
            .and_then(|mut select| {
                select
                    .query_row(rusqlite::params![series, bucket], |row| {
                        Ok((row.get(0)?, flag(row, 1, "history.unresolved_at_close")?))
                    })
                    .optional()
            })
            .map_err(|e| self.error(e))
    }

    /// Per series, the sum of the stored cells of every bucket before
    /// `before`: what retention is about to delete.
    pub fn sums_before(&self, before: i64) -> Result<Vec<(u32, CellCounts)>> {
        self.conn
            .prepare_cached(
                "SELECT series, sum(records), sum(bytes), sum(no_timestamp), sum(expired),
                        sum(skipped), sum(aborted)
                 FROM cell WHERE bucket < ?1 GROUP BY series",
            )
            .and_then(|mut select| {
                select
                    .query_map([before], |row| {
                        Ok((int(row, 0, "cell.series")?, counts_at(row, 1)?))
                    })?
                    .collect()
            })
            .map_err(|e| self.error(e))
    }

    /// The stored buckets of each of `series` in `buckets` (start inclusive,
    /// end exclusive), ordered by series and bucket, with their closes.
    pub fn buckets(
        &self,
        series: &[u32],
        buckets: std::ops::Range<i64>,
    ) -> Result<Vec<StoredBucket>> {
        let mut out = Vec::new();
        let read = |out: &mut Vec<StoredBucket>| -> rusqlite::Result<()> {
            // One read transaction, so that sums and closes agree.
            let tx = self.conn.unchecked_transaction()?;
            {
                let mut sums = tx.prepare_cached(
                    "SELECT bucket, records, bytes, no_timestamp, expired, skipped, aborted
                     FROM bucket_sum WHERE series = ?1 AND bucket >= ?2 AND bucket < ?3
                     ORDER BY bucket",
                )?;
                let mut closes = tx.prepare_cached(
                    "SELECT bucket, unresolved_at_close FROM history
                     WHERE series = ?1 AND bucket >= ?2 AND bucket < ?3 ORDER BY bucket",
                )?;
                for &s in series {
                    let first = out.len();
                    let mut rows = sums.query(rusqlite::params![s, buckets.start, buckets.end])?;
                    while let Some(row) = rows.next()? {
                        out.push(StoredBucket {
                            series: s,
                            bucket: row.get(0)?,
                            counts: counts_at(row, 1)?,
                            unresolved_at_close: None,
                        });
                    }
                    let mut rows =
                        closes.query(rusqlite::params![s, buckets.start, buckets.end])?;
                    while let Some(row) = rows.next()? {
                        let bucket: i64 = row.get(0)?;
                        let unresolved = flag(row, 1, "history.unresolved_at_close")?;
                        if let Ok(i) = out[first..].binary_search_by_key(&bucket, |b| b.bucket) {
                            out[first + i].unresolved_at_close = Some(unresolved);
                        }
                    }
                }
            }
            tx.commit()
        };
        read(&mut out).map_err(|e| self.error(e))?;
        Ok(out)
    }
}

/// Six counts from column `at` on.
fn counts_at(row: &Row<'_>, at: usize) -> rusqlite::Result<CellCounts> {
    Ok(CellCounts {
        records: int(row, at, "records")?,
        bytes: int(row, at + 1, "bytes")?,
        no_timestamp: int(row, at + 2, "no_timestamp")?,
        expired: int(row, at + 3, "expired")?,
        skipped: int(row, at + 4, "skipped")?,
        aborted: int(row, at + 5, "aborted")?,
    })
}

fn cell_row(row: &Row<'_>) -> rusqlite::Result<CellRow> {
    Ok(CellRow {
        source: int(row, 0, "cell.source")?,
        series: int(row, 1, "cell.series")?,
        partition: int(row, 2, "cell.partition_no")?,
        bucket: row.get(3)?,
        epoch: row.get(4)?,
        seq: int(row, 5, "cell.seq")?,
        counts: CellCounts {
            records: int(row, 6, "cell.records")?,
            bytes: int(row, 7, "cell.bytes")?,
            no_timestamp: int(row, 8, "cell.no_timestamp")?,
            expired: int(row, 9, "cell.expired")?,
            skipped: int(row, 10, "cell.skipped")?,
            aborted: int(row, 11, "cell.aborted")?,
        },
    })
}

/// Reads a whole table into a vector sized by a count first, since growing a
/// million-row vector by doubling would copy it about twenty times.
///
/// `from`, for a select that takes a parameter (`?1`), is the first bucket read.
fn read_table<T>(
    tx: &Transaction<'_>,
    table: &str,
    select: &str,
    from: i64,
    decode: &dyn Fn(&Row<'_>) -> rusqlite::Result<T>,
    skipped: &mut Option<Skipped>,
) -> rusqlite::Result<Vec<T>> {
    let by_bucket = select.contains("?1");
    let count: i64 = if by_bucket {
        tx.query_row(
            &format!("SELECT count(*) FROM {table} WHERE bucket >= ?1"),
            [from],
            |row| row.get(0),
        )?
    } else {
        tx.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get(0)
        })?
    };
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut select = tx.prepare_cached(select)?;
    let mut rows = if by_bucket {
        select.query([from])?
    } else {
        select.query([])?
    };
    while let Some(row) = rows.next()? {
        match (decode(row), skipped.as_mut()) {
            (Ok(v), _) => out.push(v),
            (Err(e), Some(skipped)) => skipped.note(|| format!("a row of {table}: {e}")),
            (Err(e), None) => return Err(e),
        }
    }
    Ok(out)
}

/// Reads an integer column into a narrower or unsigned type, refusing a value
/// that does not fit (a corrupt or hand-edited database) instead of wrapping it.
fn int<T: TryFrom<i64>>(row: &Row<'_>, index: usize, column: &str) -> rusqlite::Result<T> {
    let value: i64 = row.get(index)?;
    T::try_from(value).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            Type::Integer,
            format!(
                "{column} holds {value}, outside the range of {}",
                std::any::type_name::<T>()
            )
            .into(),
        )
    })
}

fn flag(row: &Row<'_>, index: usize, column: &str) -> rusqlite::Result<bool> {
    match row.get::<_, i64>(index)? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(rusqlite::Error::FromSqlConversionFailure(
            index,
            Type::Integer,
            format!("{column} holds {value}, but only 0 and 1 are accepted").into(),
        )),
    }
}

/// SQLite integers are signed; a count above `i64::MAX` cannot come from a real
/// stream, so it is refused rather than stored as a negative number.
fn stored(value: u64, column: &str) -> rusqlite::Result<i64> {
    i64::try_from(value).map_err(|_| {
        rusqlite::Error::ToSqlConversionFailure(
            format!(
                "{column} = {value} is above the largest storable count {}",
                i64::MAX
            )
            .into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use tempfile::TempDir;

    /// The largest value the ledger promises to store.
    const BIG: u64 = 1 << 53;

    fn source(id: u32, messages: u64) -> SourceRow {
        SourceRow {
            id,
            name: format!("broker-{id}"),
            cluster: "local".into(),
            tier_kinds: r#"["broker","group"]"#.into(),
            epoch: 1_732_800_000_123,
            last_seen_ms: 1_732_800_060_000,
            messages,
            errors: 3,
        }
    }

    fn series(id: u32, tier: &str) -> SeriesRow {
        SeriesRow {
            id,
            cluster: "local".into(),
            topic: "orders.v1".into(),
            tier: tier.into(),
            pruned_records: BIG,
            pruned_expired: 7,
            first_bucket: Some(-60_000),
            live: CellCounts {
                records: BIG,
                aborted: 3,
                ..CellCounts::default()
            },
        }
    }

    fn cell(source: u32, series: u32, partition: i32, bucket: i64, records: u64) -> CellRow {
        CellRow {
            source,
            series,
            partition,
            bucket,
            epoch: 1_732_800_000_123,
            seq: 42,
            counts: CellCounts {
                records,
                bytes: records.saturating_mul(100),
                no_timestamp: 1,
                expired: 2,
                skipped: 3,
                aborted: 4,
            },
        }
    }

    fn history(series: u32, bucket: i64, status: &str) -> HistoryRow {
        HistoryRow {
            series,
            bucket,
            status: status.into(),
            unresolved_at_close: true,
            records: 350,
            reference: 400,
            pending: 50,
            expired: 0,
            skipped: BIG,
            closed_at_ms: bucket + 180_000,
        }
    }

    fn health(id: i64, group: &str, partition: i32, state: &str) -> HealthRow {
        HealthRow {
            id,
            cluster: "local".into(),
            group: group.into(),
            topic: "orders".into(),
            partition,
            state: state.into(),
        }
    }

    /// A batch with every kind of row, in key order so that it equals what `load` returns.
    fn every_kind() -> WriteBatch {
        WriteBatch {
            sources: vec![source(1, 10), source(2, BIG)],
            series: vec![series(1, "broker"), series(2, "group:billing")],
            cells: vec![
                cell(1, 1, 0, -60_000, 0),
                cell(1, 1, -1, 60_000, 5),
                cell(1, 1, 0, 60_000, BIG),
                cell(2, 2, i32::MAX, i64::MAX - 1, 9),
            ],
            history: vec![history(1, 0, "complete"), history(2, 0, "pending")],
            health: vec![
                health(1, "billing", 0, r#"{"commits":[]}"#),
                health(2, "ünïcode-gröup", 3, "{}"),
            ],
            health_deleted: Vec::new(),
            sums: vec![SumRow {
                series: 1,
                bucket: 60_000,
                counts: CellCounts {
                    records: BIG,
                    bytes: 5,
                    ..CellCounts::default()
                },
            }],
            prune_before: None,
            kv: vec![
                ("bucket_width_ms".into(), "60000".into()),
                ("z".into(), String::new()),
            ],
            kv_deleted: Vec::new(),
        }
    }

    fn loaded_from(batch: &WriteBatch) -> Loaded {
        Loaded {
            sources: batch.sources.clone(),
            series: batch.series.clone(),
            cells: batch.cells.clone(),
            history: batch.history.clone(),
            health: batch.health.clone(),
            kv: batch.kv.clone(),
            skipped: Skipped::default(),
        }
    }

    fn raw(store: &Store) -> Connection {
        Connection::open(store.path()).expect("open the database directly")
    }

    #[test]
    fn every_row_type_round_trips() {
        let dir = TempDir::new().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.path(), dir.path().join("agent.db"));
        assert_eq!(store.load().unwrap(), Loaded::default());

        let batch = every_kind();
        assert_eq!(batch.len(), 15);
        assert!(!batch.is_empty());
        store.write(&batch).unwrap();
        assert_eq!(store.load().unwrap(), loaded_from(&batch));
        // The sums are read by series, not loaded.
        let cold = ColdReader::open(store.path()).unwrap();
        assert_eq!(cold.sum(1, 60_000).unwrap(), Some(batch.sums[0].counts));
        assert_eq!(cold.sum(1, 0).unwrap(), None);

        store.write(&WriteBatch::default()).unwrap();
        assert_eq!(store.load().unwrap(), loaded_from(&batch));
    }

    /// A database written by an agent of schema version 1 (cells without
    /// `aborted`, no sums, series without totals) opens: it is upgraded in
    /// place, every cell it held reads back with its counts and no aborted
    /// records, the series' totals and first buckets and the per-bucket sums
    /// are computed from the cells, the health rows move to `lag_health` (ids
    /// in key order, the JSON state kept as it was), and new cells keep their
    /// counts.
    #[test]
    fn a_version_1_database_is_upgraded_and_keeps_its_cells() {
        let dir = TempDir::new().unwrap();
        let batch = every_kind();
        {
            let mut store = Store::open(dir.path()).unwrap();
            store.write(&batch).unwrap();
        }
        {
            // What version 1 wrote: the same tables without the new column.
            let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
            conn.execute_batch(
                "ALTER TABLE cell DROP COLUMN aborted;
                 DROP INDEX history_by_series;
                 DROP TABLE bucket_sum;
                 ALTER TABLE series DROP COLUMN first_bucket;
                 ALTER TABLE series DROP COLUMN live_records;
                 ALTER TABLE series DROP COLUMN live_bytes;
                 ALTER TABLE series DROP COLUMN live_no_timestamp;
                 ALTER TABLE series DROP COLUMN live_expired;
                 ALTER TABLE series DROP COLUMN live_skipped;
                 ALTER TABLE series DROP COLUMN live_aborted;
                 DROP TABLE lag_health;
                 CREATE TABLE health (
                     cluster        TEXT NOT NULL,
                     consumer_group TEXT NOT NULL,
                     topic          TEXT NOT NULL,
                     partition_no   INTEGER NOT NULL,
                     state          TEXT NOT NULL,
                     PRIMARY KEY (cluster, consumer_group, topic, partition_no)
                 ) STRICT, WITHOUT ROWID;
                 INSERT INTO health VALUES
                     ('local', 'ünïcode-gröup', 'orders', 3, '{}'),
                     ('local', 'billing', 'orders', 0, '{\"commits\":[]}');
                 UPDATE meta SET value = 1 WHERE key = 'schema_version';",
            )
            .unwrap();
        }
        let mut store = Store::open(dir.path()).unwrap();
        let mut expected = loaded_from(&batch);
        for c in &mut expected.cells {
            c.counts.aborted = 0;
        }
        // Each series' totals and first bucket are those of its cells.
        for series in &mut expected.series {
            let mine = || expected.cells.iter().filter(|c| c.series == series.id);
            series.first_bucket = mine().map(|c| c.bucket).min();
            series.live = CellCounts::default();
            for c in mine() {
                series.live.add(&c.counts);
            }
        }
        assert_eq!(expected.series[0].live.records, BIG + 5);
        assert_eq!(expected.series[0].first_bucket, Some(-60_000));
        assert_eq!(store.load().unwrap(), expected);
        let cold = ColdReader::open(store.path()).unwrap();
        assert_eq!(
            cold.sum(1, 60_000).unwrap().map(|c| c.records),
            Some(BIG + 5)
        );
        assert_eq!(
            cold.sum(2, i64::MAX - 1).unwrap().map(|c| c.records),
            Some(9)
        );
        let version: i64 = Connection::open(dir.path().join(FILE_NAME))
            .unwrap()
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let newer = cell(1, 1, 0, 60_000, 9);
        store
            .write(&WriteBatch {
                cells: vec![newer.clone()],
                ..WriteBatch::default()
            })
            .unwrap();
        assert!(store.load().unwrap().cells.contains(&newer));
    }

    #[test]
    fn upsert_replaces_by_key_and_last_in_batch_wins() {
        let dir = TempDir::new().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.write(&every_kind()).unwrap();

        let mut newer_cell = cell(1, 1, 0, 60_000, 77);
        newer_cell.seq = 43;
        let mut renamed = series(2, "group:billing");
        renamed.pruned_records = 5;
        let mut resolved = history(2, 0, "late");
        resolved.pending = 0;
        let update = WriteBatch {
            sources: vec![source(1, 11), source(1, 12)],
            series: vec![renamed.clone()],
            cells: vec![cell(1, 1, 0, 60_000, 1), newer_cell.clone()],
            history: vec![resolved.clone()],
            health: vec![
                health(1, "billing", 0, "first"),
                health(1, "billing", 0, "second"),
            ],
            health_deleted: vec![2],
            kv: vec![("z".into(), "1".into()), ("z".into(), "2".into())],
            kv_deleted: Vec::new(),
            ..WriteBatch::default()
        };
        store.write(&update).unwrap();

        let mut expected = loaded_from(&every_kind());
        expected.sources[0] = source(1, 12);
        expected.series[1] = renamed;
        expected.cells[2] = newer_cell;
        expected.history[1] = resolved;
        expected.health = vec![health(1, "billing", 0, "second")];
        expected.kv[1].1 = "2".into();
        assert_eq!(store.load().unwrap(), expected);
    }

    #[test]
    fn a_checkpoint_a_reader_held_back_completes_once_the_reader_is_done() {
        let dir = TempDir::new().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.write(&every_kind()).unwrap();
        let reader = Connection::open(store.path()).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM cell;")
            .unwrap();
        store
            .write(&WriteBatch {
                cells: vec![cell(1, 1, 0, 120_000, 3)],
                ..WriteBatch::default()
            })
            .unwrap();
        let (log, copied) = store.checkpoint().unwrap();
        assert!(log > 0 && copied < log, "{copied} of {log} pages copied");
        reader.execute_batch("COMMIT").unwrap();
        let (log, copied) = store.checkpoint().unwrap();
        assert_eq!(copied, log);
        assert!(
            store
                .load()
                .unwrap()
                .cells
                .contains(&cell(1, 1, 0, 120_000, 3))
        );
    }

    #[test]
    fn a_key_upserted_and_deleted_in_one_batch_ends_deleted() {
        let dir = TempDir::new().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store
            .write(&WriteBatch {
                health: vec![health(1, "billing", 0, "{}"), health(3, "audit", 1, "{}")],
                health_deleted: vec![1],
                ..WriteBatch::default()
            })
            .unwrap();
        assert_eq!(
            store.load().unwrap().health,
            vec![health(3, "audit", 1, "{}")]
        );
        store
            .write(&WriteBatch {
                kv: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
                kv_deleted: vec!["a".into()],
                ..WriteBatch::default()
            })
            .unwrap();
        assert_eq!(store.load().unwrap().kv, vec![("b".into(), "2".into())]);
    }

    #[test]
    fn a_batch_that_fails_writes_nothing() {
        let dir = TempDir::new().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut batch = every_kind();
        batch.cells.push(cell(3, 3, 0, 0, u64::MAX));
        let err = store.write(&batch).unwrap_err().to_string();
        assert!(err.contains("cell.records"), "{err}");
        assert!(err.contains(&store.path().display().to_string()), "{err}");
        assert_eq!(store.load().unwrap(), Loaded::default());

        // The store stays usable after a refused batch.
        store.write(&every_kind()).unwrap();
        assert_eq!(store.load().unwrap(), loaded_from(&every_kind()));
    }

    #[test]
    fn a_batch_that_cannot_be_stored_fails_alone_among_many() {
        let dir = TempDir::new().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let good = every_kind();
        let bad = WriteBatch {
            sources: vec![source(7, 1)],
            cells: vec![CellRow {
                seq: u64::MAX,
                ..cell(7, 1, 0, 0, 1)
            }],
            ..WriteBatch::default()
        };
        let later = WriteBatch {
            cells: vec![cell(1, 1, 0, 120_000, 5)],
            ..WriteBatch::default()
        };
        let outcomes = store
            .write_each(&[&good, &bad, &WriteBatch::default(), &later])
            .unwrap();
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok() && outcomes[3].is_ok());
        let err = outcomes[1].as_ref().unwrap_err();
        assert!(err.contains("cell.seq"), "{err}");
        let loaded = store.load().unwrap();
        assert!(
            loaded.sources.iter().all(|s| s.id != 7),
            "the bad batch left nothing"
        );
        let mut expected = every_kind();
        expected.cells.push(cell(1, 1, 0, 120_000, 5));
        expected
            .cells
            .sort_by_key(|c| (c.bucket, c.source, c.series, c.partition));
        assert_eq!(loaded.cells, expected.cells);
    }

    #[test]
    fn the_lenient_readers_skip_unreadable_rows_and_say_so() {
        let dir = TempDir::new().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.write(&every_kind()).unwrap();
        raw(&store)
            .execute("UPDATE cell SET records = -5 WHERE source = 2", [])
            .unwrap();
        raw(&store)
            .execute("UPDATE source SET messages = -1 WHERE id = 1", [])
            .unwrap();
        // The strict reader still refuses, naming the column.
        assert!(store.load().is_err());
        let meta = store.load_without_cells(i64::MIN).unwrap();
        assert_eq!(meta.skipped.rows, 1);
        assert!(meta.skipped.examples[0].contains("source.messages holds -1"));
        assert_eq!(meta.sources.len(), every_kind().sources.len() - 1);
        let mut cells = Vec::new();
        let skipped = Store::stream_cells(store.path(), 2, i64::MIN..i64::MAX, |chunk| {
            cells.extend(chunk);
            true
        })
        .unwrap();
        let bad = every_kind().cells.iter().filter(|c| c.source == 2).count() as u64;
        assert!(bad > 0);
        assert_eq!(skipped.rows, bad);
        assert!(
            skipped.examples[0].contains("cell.records holds -5"),
            "{skipped:?}"
        );
        assert_eq!(cells.len() as u64, every_kind().cells.len() as u64 - bad);
    }

    #[test]
    fn a_corrupt_value_is_an_error_naming_file_and_column() {
        let dir = TempDir::new().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.write(&every_kind()).unwrap();
        raw(&store)
            .execute("UPDATE cell SET records = -5 WHERE source = 2", [])
            .unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("cell.records holds -5"), "{err}");
        assert!(err.contains(&store.path().display().to_string()), "{err}");

        raw(&store)
            .execute("UPDATE cell SET records = 1", [])
            .unwrap();
        raw(&store)
            .execute("UPDATE history SET unresolved_at_close = 2", [])
            .unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("history.unresolved_at_close holds 2"), "{err}");
    }

    #[test]
    fn dropped_without_close_reopens_with_identical_state() {
        let dir = TempDir::new().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.write(&every_kind()).unwrap();
        store
            .write(&WriteBatch {
                cells: vec![cell(1, 1, 0, 60_000, 99)],
                ..WriteBatch::default()
            })
            .unwrap();
        let before = store.load().unwrap();
        drop(store);

        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.load().unwrap(), before);
    }

    /// The closest in-process stand-in for a kill -9: the connection is leaked,
    /// so it never checkpoints or closes, and its files are copied as they lie
    /// on disk to a place no live connection knows, where SQLite must recover
    /// the commits from the write-ahead log.
    #[test]
    fn commits_survive_a_connection_that_never_closed() {
        let dir = TempDir::new().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.write(&every_kind()).unwrap();
        let expected = store.load().unwrap();
        std::mem::forget(store);

        let wal = dir.path().join("agent.db-wal");
        assert!(
            std::fs::metadata(&wal).unwrap().len() > 0,
            "the commits are only in the log"
        );
        let copy = TempDir::new().unwrap();
        for name in ["agent.db", "agent.db-wal", "agent.db-shm"] {
            if dir.path().join(name).exists() {
                std::fs::copy(dir.path().join(name), copy.path().join(name)).unwrap();
            }
        }
        let recovered = Store::open(copy.path()).unwrap();
        assert_eq!(recovered.load().unwrap(), expected);
    }

    /// A real kill -9: this test runs itself as a child process that writes,
    /// reports the commit, and is killed with SIGKILL while its store is open.
    #[cfg(unix)]
    #[test]
    fn commits_survive_kill_9() {
        const CHILD_DIR: &str = "TALLY_STORE_KILL_9_CHILD_DIR";
        const COMMITTED: &str = "tally-store-batch-committed";
        if let Some(dir) = std::env::var_os(CHILD_DIR) {
            let mut store = Store::open(Path::new(&dir)).unwrap();
            store.write(&every_kind()).unwrap();
            println!("{COMMITTED}");
            std::thread::sleep(Duration::from_secs(30));
            return;
        }

        let dir = TempDir::new().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::commits_survive_kill_9",
                "--nocapture",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let committed = BufReader::new(stdout)
            .lines()
            .map_while(std::io::Result::ok)
            .any(|line| line.contains(COMMITTED));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(committed, "the child process never committed");
        let wal = dir.path().join("agent.db-wal");
        assert!(
            std::fs::metadata(&wal).unwrap().len() > 0,
            "the commits are only in the log"
        );

        let recovered = Store::open(dir.path()).unwrap();
        assert_eq!(recovered.load().unwrap(), loaded_from(&every_kind()));
    }

    #[test]
    fn prune_removes_only_older_buckets() {
        let dir = TempDir::new().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let batch = WriteBatch {
            cells: vec![
                cell(1, 1, 0, 0, 1),
                cell(1, 1, 0, 60_000, 2),
                cell(1, 1, 0, 120_000, 3),
                cell(2, 1, 1, 60_000, 4),
                cell(2, 1, 1, 180_000, 5),
            ],
            history: vec![
                history(1, 0, "complete"),
                history(1, 120_000, "complete"),
                history(2, 119_999, "late"),
            ],
            ..every_kind()
        };
        store.write(&batch).unwrap();

        // 3 cells, 2 history rows and the sum of series 1 at 60,000.
        assert_eq!(store.prune_before(120_000).unwrap(), 6);
        assert_eq!(
            ColdReader::open(store.path())
                .unwrap()
                .sum(1, 60_000)
                .unwrap(),
            None
        );
        let loaded = store.load().unwrap();
        assert_eq!(
            loaded.cells,
            vec![cell(1, 1, 0, 120_000, 3), cell(2, 1, 1, 180_000, 5)]
        );
        assert_eq!(loaded.history, vec![history(1, 120_000, "complete")]);
        assert_eq!(loaded.sources, batch.sources);
        assert_eq!(loaded.series, batch.series);
        assert_eq!(loaded.health, batch.health);
        assert_eq!(loaded.kv, batch.kv);

        assert_eq!(store.prune_before(120_000).unwrap(), 0);
    }

    #[test]
    fn newer_schema_version_is_refused_naming_file_and_versions() {
        let dir = TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let path = store.path().to_path_buf();
        raw(&store)
            .execute("UPDATE meta SET value = 7 WHERE key = 'schema_version'", [])
            .unwrap();
        drop(store);

        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::StoreSchema { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("'{}'", path.display())),
            "{message}"
        );
        assert!(message.contains("schema version 7"), "{message}");
        assert!(
            message.contains(&format!("up to {SCHEMA_VERSION}")),
            "{message}"
        );
    }

    #[test]
    fn another_programs_database_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("agent.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE cell (x); INSERT INTO cell VALUES (1);")
            .unwrap();
        let message = Store::open(dir.path()).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not a tally agent database"), "{message}");
    }

    #[test]
    fn a_file_given_as_directory_is_an_error_naming_it() {
        let dir = TempDir::new().unwrap();
        let file = dir.path().join("state");
        std::fs::write(&file, "not a directory").unwrap();
        let message = Store::open(&file).unwrap_err().to_string();
        assert!(
            message.contains(&format!("'{}'", file.display())),
            "{message}"
        );
        assert!(message.contains("is a file"), "{message}");

        let below = file.join("agent");
        let message = Store::open(&below).unwrap_err().to_string();
        assert!(
            message.contains(&format!("'{}'", below.display())),
            "{message}"
        );
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_an_error_naming_it() {
        for garbage in [&b"hello"[..], &[0x5a; 8192][..]] {
            let dir = TempDir::new().unwrap();
            let path = dir.path().join("agent.db");
            std::fs::write(&path, garbage).unwrap();
            let message = Store::open(dir.path()).unwrap_err().to_string();
            assert!(
                message.contains(&format!("'{}'", path.display())),
                "{message}"
            );
            assert!(message.contains("not a database"), "{message}");
        }
    }
}
