//! The transaction coordinator: per `transactional.id`, the producer id and
//! epoch it holds, its state, the partitions and groups its open
//! transaction touched, and the offsets it staged with TxnOffsetCommit.
//!
//! The state is durable as the committed offsets are: every change is a
//! record appended to `<data-dir>/transactions.log` before it is answered
//! (`[u32 length][u32 crc32c][JSON of the whole state of one id]`; the last
//! record of an id wins; a torn tail is cut off at load; the file is
//! rewritten to the live set once it grows well beyond it). It is fsynced as
//! the log is: on every write under `fsync = "always"`, on the broker's tick
//! otherwise (a killed process loses nothing the kernel has).
//!
//! Ending a transaction is two steps. The state turns `PrepareCommit` or
//! `PrepareAbort` (stored), the markers are written to every partition and,
//! on commit, the staged offsets are committed; then it turns
//! `CompleteCommit` or `CompleteAbort` (stored). A broker that stops between
//! the two finishes the job when it starts again ([`recover`]), so a
//! transaction is committed or aborted whole, never half. A transaction left
//! open by a producer that went away is aborted at its timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::batch::{self, Marker};
use crate::context::{Broker, now_ms};
use crate::groups::CommittedOffset;
use crate::topics::Refusal;
use crate::{Error, Result};

/// Kafka's `transaction.max.timeout.ms` default: the longest timeout a
/// producer may ask for.
pub const MAX_TIMEOUT_MS: i32 = 900_000;

/// Kafka's `transactional.id.expiration.ms` default: an id with no
/// transaction open is forgotten after this long without a change.
pub const ID_EXPIRY_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// Where a transactional id's transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// No transaction yet under this epoch.
    Empty,
    /// A transaction is open: partitions or groups were added.
    Ongoing,
    /// Commit decided; markers being written.
    PrepareCommit,
    /// Abort decided; markers being written.
    PrepareAbort,
    /// The last transaction committed.
    CompleteCommit,
    /// The last transaction aborted.
    CompleteAbort,
}

impl State {
    /// The name Kafka's tools show (DescribeTransactions, ListTransactions).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::Ongoing => "Ongoing",
            State::PrepareCommit => "PrepareCommit",
            State::PrepareAbort => "PrepareAbort",
            State::CompleteCommit => "CompleteCommit",
            State::CompleteAbort => "CompleteAbort",
        }
    }

    fn ending(self) -> bool {
        matches!(self, State::PrepareCommit | State::PrepareAbort)
    }
}

/// An offset staged by TxnOffsetCommit, committed with the transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset to commit.
    pub offset: i64,
    /// The leader epoch the client saw.
    pub leader_epoch: i32,
    /// The client's metadata.
    pub metadata: Option<String>,
}

/// The whole state of one transactional id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The transactional id.
    pub id: String,
    /// The producer id it holds.
    pub producer_id: i64,
    /// The producer epoch; an older one is fenced.
    pub epoch: i16,
    /// The producer's transaction timeout.
    pub timeout_ms: i32,
    /// Where its transaction is.
    pub state: State,
    /// Partitions the open transaction wrote to (AddPartitionsToTxn).
    pub partitions: BTreeSet<(String, i32)>,
    /// Groups whose offsets it may commit (AddOffsetsToTxn).
    pub groups: BTreeSet<String>,
    /// Offsets staged per group (TxnOffsetCommit).
    pub offsets: BTreeMap<String, Vec<Staged>>,
    /// When the open transaction began (epoch ms), -1 when none is open.
    pub started_ms: i64,
    /// When the state last changed (epoch ms).
    pub updated_ms: i64,
}

/// A transaction being ended: what [`complete`] writes.
#[derive(Clone, Debug)]
pub struct Ending {
    /// The transactional id.
    pub id: String,
    /// The marker's producer and epoch, and whether it commits.
    pub marker: Marker,
    /// Where the markers go.
    pub partitions: Vec<(String, i32)>,
    /// Offsets committed with the transaction (none on abort).
    pub offsets: BTreeMap<String, Vec<Staged>>,
}

impl Txn {
    /// The state of an id with no transaction open (`Empty`).
    fn idle(id: &str, producer_id: i64, epoch: i16, timeout_ms: i32, now: i64) -> Txn {
        Txn {
            id: id.to_owned(),
            producer_id,
            epoch,
            timeout_ms,
            state: State::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            offsets: BTreeMap::new(),
            started_ms: -1,
            updated_ms: now,
        }
    }
}

impl Ending {
    /// The end of `t`'s open transaction: its markers at its epoch, and on
    /// commit its staged offsets.
    fn of(t: &Txn, commit: bool) -> Ending {
        Ending {
            id: t.id.clone(),
            marker: Marker {
                producer_id: t.producer_id,
                producer_epoch: t.epoch,
                commit,
            },
            partitions: t.partitions.iter().cloned().collect(),
            offsets: if commit {
                t.offsets.clone()
            } else {
                BTreeMap::new()
            },
        }
    }
}

/// What InitProducerId gets from the coordinator.
#[derive(Debug)]
pub enum Init {
    /// The producer id and the new epoch.
    Ready(i64, i16),
    /// The id's open transaction must be aborted first; ask again after.
    AbortFirst(Ending),
}

struct Inner {
    txns: HashMap<String, Txn>,
    /// producer id → transactional id.
    by_producer: HashMap<i64, String>,
    file: File,
    /// Records in the file.
    records: usize,
    /// Written since the last fsync.
    dirty: bool,
}

/// The coordinator of every transactional id.
pub struct Transactions {
    path: PathBuf,
    sync_always: bool,
    inner: Mutex<Inner>,
    /// When idle ids were last looked for (epoch ms).
    swept_ms: std::sync::atomic::AtomicI64,
}

/// The largest record the log may hold: a state names its partitions and
/// staged offsets, each bounded by what one request can carry.
const MAX_RECORD: usize = 64 << 20;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

fn encode(txn: &Txn) -> Vec<u8> {
    let body = serde_json::to_vec(txn).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The records of a log, and the length of its sound prefix.
fn decode(bytes: &[u8]) -> (Vec<Txn>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD {
            break;
        }
        let Some(body) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(txn) = serde_json::from_slice::<Txn>(body) else {
            break;
        };
        out.push(txn);
        at += 8 + len;
    }
    (out, at)
}

impl Transactions {
    /// Loads the coordinator's state from `data_dir`, cutting a torn tail.
    pub fn open(data_dir: &Path, sync_always: bool) -> Result<Transactions> {
        let path = data_dir.join("transactions.log");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("cannot read", &path)(e)),
        };
        let (records, sound) = decode(&bytes);
        if sound < bytes.len() {
            warn!(path = %path.display(), kept = sound, dropped = bytes.len() - sound, "the transaction log has a torn or damaged tail: it is cut off");
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        file.set_len(sound as u64)
            .map_err(io("cannot truncate", &path))?;
        let count = records.len();
        let mut txns = HashMap::new();
        for t in records {
            txns.insert(t.id.clone(), t);
        }
        let by_producer = txns
            .values()
            .map(|t| (t.producer_id, t.id.clone()))
            .collect();
        Ok(Transactions {
            path,
            sync_always,
            inner: Mutex::new(Inner {
                txns,
                by_producer,
                file,
                records: count,
                dirty: false,
            }),
            swept_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Stores `txn` as the id's state (and applies it).
    fn put(&self, inner: &mut Inner, txn: Txn) -> Result<()> {
        let record = encode(&txn);
        if let Err(e) = inner.file.write_all(&record) {
            return Err(io("cannot append to", &self.path)(e));
        }
        inner.records += 1;
        if self.sync_always {
            inner
                .file
                .sync_data()
                .map_err(io("cannot fsync", &self.path))?;
        } else {
            inner.dirty = true;
        }
        inner.by_producer.insert(txn.producer_id, txn.id.clone());
        inner.txns.insert(txn.id.clone(), txn);
        if inner.records > 1024 && inner.records > 4 * inner.txns.len() {
            self.compact(inner)?;
        }
        Ok(())
    }

    fn compact(&self, inner: &mut Inner) -> Result<()> {
        let tmp = self.path.with_extension("log.compacting");
        let mut buf = Vec::new();
        for t in inner.txns.values() {
            buf.extend_from_slice(&encode(t));
        }
        {
            let mut f = File::create(&tmp).map_err(io("cannot create", &tmp))?;
            f.write_all(&buf).map_err(io("cannot write", &tmp))?;
            f.sync_all().map_err(io("cannot fsync", &tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io("cannot replace", &self.path))?;
        crate::log::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        inner.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io("cannot open", &self.path))?;
        inner.records = inner.txns.len();
        inner.dirty = false;
        Ok(())
    }

    /// Fsyncs what was written since the last call (the broker's tick).
    pub fn sync(&self) {
        let mut inner = self.inner.lock();
        if inner.dirty {
            match inner.file.sync_data() {
                Ok(()) => inner.dirty = false,
                Err(e) => {
                    warn!(path = %self.path.display(), "cannot fsync the transaction log: {e}")
                }
            }
        }
    }

    fn stored(&self, inner: &mut Inner, txn: Txn) -> std::result::Result<(), ResponseError> {
        self.put(inner, txn).map_err(|e| {
            warn!("cannot store a transaction's state: {e}");
            ResponseError::KafkaStorageError
        })
    }

    /// The id's state, checked against the producer id and epoch a request
    /// carries; an id whose transaction is being ended is busy.
    fn current<'a>(
        inner: &'a Inner,
        id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> std::result::Result<&'a Txn, ResponseError> {
        let t = inner
            .txns
            .get(id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        if t.producer_id != producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch < t.epoch {
            return Err(ResponseError::ProducerFenced);
        }
        if epoch != t.epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if t.state.ending() {
            return Err(ResponseError::ConcurrentTransactions);
        }
        Ok(t)
    }

    /// InitProducerId with a transactional id: a new id gets a producer id
    /// and epoch 0; a known one gets its epoch bumped (fencing the producer
    /// that held it), after its open transaction, if any, is aborted. A
    /// request that names the producer id and epoch it had (KIP-360) must
    /// name the current ones.
    pub fn init(
        &self,
        id: &str,
        timeout_ms: i32,
        claimed: Option<(i64, i16)>,
        new_id: impl FnOnce() -> Result<i64>,
    ) -> std::result::Result<Init, ResponseError> {
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let mut inner = self.inner.lock();
        let now = now_ms();
        let next = match inner.txns.get(id).cloned() {
            None => {
                let pid = new_id().map_err(|e| {
                    warn!("cannot allocate a producer id: {e}");
                    ResponseError::KafkaStorageError
                })?;
                Txn::idle(id, pid, 0, timeout_ms, now)
            }
            Some(t) => {
                if let Some((pid, epoch)) = claimed
                    && (pid != t.producer_id || epoch != t.epoch)
                {
                    return Err(ResponseError::ProducerFenced);
                }
                if t.state.ending() {
                    return Err(ResponseError::ConcurrentTransactions);
                }
                // Fence first, so that nothing the old producer sends from
                // here on is taken, then abort what it left open.
                let (producer_id, epoch) = match t.epoch.checked_add(1) {
                    Some(e) if e < i16::MAX => (t.producer_id, e),
                    _ => (new_id().map_err(|_| ResponseError::KafkaStorageError)?, 0),
                };
                if t.state == State::Ongoing {
                    let ending = Ending {
                        id: id.to_owned(),
                        marker: Marker {
                            producer_id: t.producer_id,
                            producer_epoch: if producer_id == t.producer_id {
                                epoch
                            } else {
                                t.epoch
                            },
                            commit: false,
                        },
                        partitions: t.partitions.iter().cloned().collect(),
                        offsets: BTreeMap::new(),
                    };
                    let prepared = Txn {
                        state: State::PrepareAbort,
                        epoch: ending.marker.producer_epoch,
                        updated_ms: now,
                        ..t
                    };
                    self.stored(&mut inner, prepared)?;
                    return Ok(Init::AbortFirst(ending));
                }
                Txn::idle(&t.id, producer_id, epoch, timeout_ms, now)
            }
        };
        let answer = Init::Ready(next.producer_id, next.epoch);
        self.stored(&mut inner, next)?;
        Ok(answer)
    }

    /// Opens the transaction if it is not, and adds what `add` adds.
    fn add(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        add: impl FnOnce(&mut Txn) -> bool,
    ) -> std::result::Result<(), ResponseError> {
        let mut inner = self.inner.lock();
        let mut t = Self::current(&inner, id, producer_id, epoch)?.clone();
        let now = now_ms();
        let mut changed = add(&mut t);
        if t.state != State::Ongoing {
            t.state = State::Ongoing;
            t.started_ms = now;
            changed = true;
        }
        if changed {
            t.updated_ms = now;
            self.stored(&mut inner, t)?;
        }
        Ok(())
    }

    /// AddPartitionsToTxn: the transaction will write to `partitions`.
    pub fn add_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> std::result::Result<(), ResponseError> {
        self.add(id, producer_id, epoch, |t| {
            let mut changed = false;
            for p in partitions {
                changed |= t.partitions.insert(p.clone());
            }
            changed
        })
    }

    /// Whether the producer's open transaction includes `partitions` (the
    /// verify-only form of AddPartitionsToTxn v4).
    pub fn verify_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partition: &(String, i32),
    ) -> std::result::Result<(), ResponseError> {
        let inner = self.inner.lock();
        let t = Self::current(&inner, id, producer_id, epoch)?;
        if t.state == State::Ongoing && t.partitions.contains(partition) {
            Ok(())
        } else {
            Err(ResponseError::InvalidTxnState)
        }
    }

    /// AddOffsetsToTxn: the transaction may commit offsets of `group`.
    pub fn add_group(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
    ) -> std::result::Result<(), ResponseError> {
        self.add(id, producer_id, epoch, |t| {
            t.groups.insert(group.to_owned())
        })
    }

    /// TxnOffsetCommit: stages offsets of `group`, committed with the
    /// transaction. The group must have been added (AddOffsetsToTxn).
    pub fn stage_offsets(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        offsets: Vec<Staged>,
    ) -> std::result::Result<(), ResponseError> {
        let mut inner = self.inner.lock();
        let mut t = Self::current(&inner, id, producer_id, epoch)?.clone();
        if t.state != State::Ongoing || !t.groups.contains(group) {
            return Err(ResponseError::InvalidTxnState);
        }
        let staged = t.offsets.entry(group.to_owned()).or_default();
        for o in offsets {
            staged.retain(|s| (s.topic.as_str(), s.partition) != (o.topic.as_str(), o.partition));
            staged.push(o);
        }
        t.updated_ms = now_ms();
        self.stored(&mut inner, t)
    }

    /// Whether offsets of `group` on the partition are staged by an open
    /// transaction (OffsetFetch with `require_stable` waits for them).
    pub fn has_staged(&self, group: &str, topic: &str, partition: i32) -> bool {
        let inner = self.inner.lock();
        inner.txns.values().any(|t| {
            t.state != State::CompleteCommit
                && t.state != State::CompleteAbort
                && t.offsets.get(group).is_some_and(|v| {
                    v.iter()
                        .any(|s| s.topic == topic && s.partition == partition)
                })
        })
    }

    /// EndTxn: decides the open transaction's outcome and stores it; the
    /// caller then writes the markers ([`complete`]). `None`: nothing to do
    /// (a retry of the same decision, answered as done).
    pub fn end(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> std::result::Result<Option<Ending>, ResponseError> {
        let mut inner = self.inner.lock();
        let t = Self::current(&inner, id, producer_id, epoch)?.clone();
        match (t.state, commit) {
            (State::CompleteCommit, true) | (State::CompleteAbort, false) => return Ok(None),
            (State::Ongoing, _) => {}
            _ => return Err(ResponseError::InvalidTxnState),
        }
        Ok(Some(self.prepare(&mut inner, t, commit)?))
    }

    fn prepare(
        &self,
        inner: &mut Inner,
        t: Txn,
        commit: bool,
    ) -> std::result::Result<Ending, ResponseError> {
        let ending = Ending::of(&t, commit);
        let prepared = Txn {
            state: if commit {
                State::PrepareCommit
            } else {
                State::PrepareAbort
            },
            updated_ms: now_ms(),
            ..t
        };
        self.stored(inner, prepared)?;
        Ok(ending)
    }

    /// Marks an ended transaction complete.
    pub fn finish(&self, ending: &Ending) -> std::result::Result<(), ResponseError> {
        let mut inner = self.inner.lock();
        let Some(t) = inner.txns.get(&ending.id).cloned() else {
            return Ok(());
        };
        let done = Txn {
            state: if ending.marker.commit {
                State::CompleteCommit
            } else {
                State::CompleteAbort
            },
            ..Txn::idle(&t.id, t.producer_id, t.epoch, t.timeout_ms, now_ms())
        };
        self.stored(&mut inner, done)
    }

    /// Open transactions past their timeout, decided as aborts.
    pub fn expired(&self, now_ms: i64) -> Vec<Ending> {
        let mut inner = self.inner.lock();
        let late: Vec<Txn> = inner
            .txns
            .values()
            .filter(|t| {
                t.state == State::Ongoing
                    && now_ms.saturating_sub(t.started_ms) > i64::from(t.timeout_ms)
            })
            .cloned()
            .collect();
        let mut out = Vec::new();
        for t in late {
            info!(transactional_id = %t.id, timeout_ms = t.timeout_ms, "transaction timed out: aborting it");
            match self.prepare(&mut inner, t, false) {
                Ok(e) => out.push(e),
                Err(e) => warn!("cannot abort a timed-out transaction: {e:?}"),
            }
        }
        out
    }

    /// Forgets the ids with no transaction open that did not change for
    /// [`ID_EXPIRY_MS`] (the file is rewritten without them); looks at most
    /// once a minute. Returns how many went.
    pub fn forget_idle(&self, now_ms: i64) -> usize {
        use std::sync::atomic::Ordering;
        if now_ms - self.swept_ms.load(Ordering::Relaxed) < 60_000 {
            return 0;
        }
        self.swept_ms.store(now_ms, Ordering::Relaxed);
        let mut inner = self.inner.lock();
        let idle: Vec<String> = inner
            .txns
            .values()
            .filter(|t| {
                matches!(
                    t.state,
                    State::Empty | State::CompleteCommit | State::CompleteAbort
                ) && now_ms.saturating_sub(t.updated_ms) > ID_EXPIRY_MS
            })
            .map(|t| t.id.clone())
            .collect();
        if idle.is_empty() {
            return 0;
        }
        for id in &idle {
            if let Some(t) = inner.txns.remove(id) {
                inner.by_producer.remove(&t.producer_id);
            }
        }
        if let Err(e) = self.compact(&mut inner) {
            warn!("cannot rewrite the transaction log without the expired ids: {e}");
        }
        info!(
            ids = idle.len(),
            "transactional ids expired after 7 days without a transaction"
        );
        idle.len()
    }

    /// Transactions decided before a stop whose markers may be missing.
    pub fn prepared(&self) -> Vec<Ending> {
        let inner = self.inner.lock();
        inner
            .txns
            .values()
            .filter(|t| t.state.ending())
            .map(|t| Ending::of(t, t.state == State::PrepareCommit))
            .collect()
    }

    /// Whether a transactional batch of `producer_id` at `epoch` may be
    /// appended to the partition: its transaction is open and added it.
    pub fn check_produce(
        &self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> std::result::Result<(), Refusal> {
        let inner = self.inner.lock();
        let Some(t) = inner
            .by_producer
            .get(&producer_id)
            .and_then(|id| inner.txns.get(id))
        else {
            return Err(Refusal::new(
                ResponseError::InvalidProducerIdMapping,
                format!("producer {producer_id} holds no transactional id here"),
            ));
        };
        if epoch < t.epoch || t.producer_id != producer_id {
            return Err(Refusal::new(
                ResponseError::InvalidProducerEpoch,
                format!(
                    "producer {producer_id} epoch {epoch} is fenced: transactional id \"{}\" is at epoch {}",
                    t.id, t.epoch
                ),
            ));
        }
        if t.state != State::Ongoing || !t.partitions.contains(&(topic.to_owned(), partition)) {
            return Err(Refusal::new(
                ResponseError::InvalidTxnState,
                format!(
                    "transactional id \"{}\" has not added topic \"{topic}\" partition {partition} to an open transaction (state {})",
                    t.id,
                    t.state.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// Whether the producer holds a transactional id that is open.
    pub fn is_open(&self, producer_id: i64) -> bool {
        let inner = self.inner.lock();
        inner
            .by_producer
            .get(&producer_id)
            .and_then(|id| inner.txns.get(id))
            .is_some_and(|t| t.state == State::Ongoing || t.state.ending())
    }

    /// The state of each of `ids` (DescribeTransactions).
    pub fn describe(&self, id: &str) -> Option<Txn> {
        self.inner.lock().txns.get(id).cloned()
    }

    /// Every id's state (ListTransactions).
    pub fn all(&self) -> Vec<Txn> {
        let mut all: Vec<Txn> = self.inner.lock().txns.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

/// Writes a transaction's marker to one partition; `Ok(None)` when the
/// partition is gone (its topic was deleted).
async fn write_marker(broker: &Broker, topic: &str, partition: i32, marker: Marker) -> Result<()> {
    let Some(part) = broker
        .topics
        .get(topic)
        .and_then(|t| t.partition(partition).cloned())
    else {
        return Ok(());
    };
    let sync = {
        let mut log = part.log.lock();
        let mut producers = part.producers.lock();
        let bytes = batch::control_batch(marker, 0, now_ms());
        let appended = log.append(&bytes, now_ms())?;
        producers.record_marker(appended.base_offset, marker);
        log.sync_handle()
    };
    broker.topics.notify_appended();
    broker.flusher.durable(sync).await
}

/// Writes an ended transaction's markers and, on commit, its offsets, then
/// marks it complete. An error leaves it prepared, to be finished by the
/// next try (a retried EndTxn, or [`recover`] at the next start).
pub async fn complete(broker: &Broker, ending: &Ending) -> std::result::Result<(), ResponseError> {
    for (topic, partition) in &ending.partitions {
        if let Err(e) = write_marker(broker, topic, *partition, ending.marker).await {
            warn!(transactional_id = %ending.id, topic, partition, "cannot write a transaction marker: {e}");
            return Err(ResponseError::KafkaStorageError);
        }
    }
    let at = now_ms();
    for (group, staged) in &ending.offsets {
        let commits = staged
            .iter()
            .map(|s| {
                (
                    s.topic.clone(),
                    s.partition,
                    CommittedOffset {
                        offset: s.offset,
                        leader_epoch: s.leader_epoch,
                        metadata: s.metadata.clone(),
                        commit_time_ms: at,
                    },
                )
            })
            .collect();
        broker.groups.commit(group, commits).await?;
    }
    broker.txns.finish(ending)
}

/// Finishes what a stop interrupted: transactions decided but not complete
/// get their markers, and a partition with a transaction open that no
/// transactional id holds open any more (its state was lost, or it ended
/// without a marker there) gets an abort marker, so that no partition's last
/// stable offset stays behind for ever.
pub async fn recover(broker: &Broker) {
    broker.groups.wait_loaded().await;
    for ending in broker.txns.prepared() {
        info!(transactional_id = %ending.id, commit = ending.marker.commit, "finishing a transaction a stop interrupted");
        if let Err(e) = complete(broker, &ending).await {
            warn!(transactional_id = %ending.id, "cannot finish the transaction: {e:?}");
        }
    }
    for topic in broker.topics.all() {
        for (p, part) in topic.partitions.iter().enumerate() {
            let open: Vec<(i64, i16)> = {
                let producers = part.producers.lock();
                producers
                    .open_transactions()
                    .map(|(pid, _)| (pid, producers.epoch_of(pid)))
                    .collect()
            };
            for (pid, epoch) in open {
                if broker.txns.is_open(pid) {
                    continue;
                }
                warn!(topic = %topic.name, partition = p, producer = pid, "aborting a transaction no coordinator state holds open");
                let marker = Marker {
                    producer_id: pid,
                    producer_epoch: epoch,
                    commit: false,
                };
                if let Err(e) = write_marker(broker, &topic.name, p as i32, marker).await {
                    warn!(topic = %topic.name, partition = p, "cannot write an abort marker: {e}");
                }
            }
        }
    }
}

/// Aborts open transactions past their timeout, and fsyncs the state.
pub async fn tick(broker: &Broker) {
    for ending in broker.txns.expired(now_ms()) {
        if let Err(e) = complete(broker, &ending).await {
            warn!(transactional_id = %ending.id, "cannot abort the timed-out transaction: {e:?}");
        }
    }
    broker.txns.forget_idle(now_ms());
    broker.txns.sync();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> impl FnMut() -> Result<i64> {
        let mut next = 100;
        move || {
            next += 1;
            Ok(next)
        }
    }

    #[test]
    fn states_survive_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let txns = Transactions::open(dir.path(), false).unwrap();
        let Init::Ready(pid, 0) = txns.init("t1", 60_000, None, ids()).unwrap() else {
            panic!("a new id starts at epoch 0");
        };
        txns.add_partitions("t1", pid, 0, &[("orders".into(), 0)])
            .unwrap();
        txns.add_group("t1", pid, 0, "g").unwrap();
        txns.stage_offsets(
            "t1",
            pid,
            0,
            "g",
            vec![Staged {
                topic: "in".into(),
                partition: 0,
                offset: 7,
                leader_epoch: -1,
                metadata: None,
            }],
        )
        .unwrap();
        drop(txns);
        // A record cut short by a kill is dropped at the next open.
        let path = dir.path().join("transactions.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2]).unwrap();
        drop(f);
        let txns = Transactions::open(dir.path(), false).unwrap();
        let t = txns.describe("t1").unwrap();
        assert_eq!(t.state, State::Ongoing);
        assert!(t.partitions.contains(&("orders".to_owned(), 0)));
        assert_eq!(t.offsets["g"][0].offset, 7);
        assert!(txns.has_staged("g", "in", 0));
        // Reopened, the file holds sound records only: more can follow.
        let ending = txns.end("t1", pid, 0, true).unwrap().unwrap();
        assert!(ending.marker.commit);
        assert_eq!(ending.offsets["g"].len(), 1);
        let txns = Transactions::open(dir.path(), false).unwrap();
        assert_eq!(
            txns.prepared().len(),
            1,
            "a decided transaction is finished at the next start"
        );
    }

    #[test]
    fn a_new_epoch_fences_the_old_producer_and_aborts_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let txns = Transactions::open(dir.path(), true).unwrap();
        let Init::Ready(pid, 0) = txns.init("t", 60_000, None, ids()).unwrap() else {
            panic!()
        };
        txns.add_partitions("t", pid, 0, &[("o".into(), 1)])
            .unwrap();
        assert!(txns.check_produce(pid, 0, "o", 1).is_ok());
        assert_eq!(
            txns.check_produce(pid, 0, "o", 2).unwrap_err().error,
            ResponseError::InvalidTxnState
        );
        // A second producer with the same id: the open transaction is
        // aborted at the new epoch, and then the producer gets that epoch.
        let Init::AbortFirst(ending) = txns.init("t", 60_000, None, ids()).unwrap() else {
            panic!("the open transaction must be aborted first");
        };
        assert!(!ending.marker.commit);
        assert_eq!(ending.marker.producer_epoch, 1);
        assert_eq!(
            txns.add_partitions("t", pid, 1, &[]).unwrap_err(),
            ResponseError::ConcurrentTransactions
        );
        txns.finish(&ending).unwrap();
        let Init::Ready(same, epoch) = txns.init("t", 60_000, None, ids()).unwrap() else {
            panic!()
        };
        assert_eq!((same, epoch), (pid, 2));
        // The zombie at epoch 0 is fenced everywhere.
        assert_eq!(
            txns.add_partitions("t", pid, 0, &[]).unwrap_err(),
            ResponseError::ProducerFenced
        );
        assert_eq!(
            txns.end("t", pid, 0, true).unwrap_err(),
            ResponseError::ProducerFenced
        );
        assert_eq!(
            txns.check_produce(pid, 0, "o", 1).unwrap_err().error,
            ResponseError::InvalidProducerEpoch
        );
        // Out-of-range timeouts are refused.
        assert_eq!(
            txns.init("t", 0, None, ids()).unwrap_err(),
            ResponseError::InvalidTransactionTimeout
        );
        assert_eq!(
            txns.init("t", MAX_TIMEOUT_MS + 1, None, ids()).unwrap_err(),
            ResponseError::InvalidTransactionTimeout
        );
    }

    #[test]
    fn idle_ids_expire_after_a_week_and_stay_gone() {
        let dir = tempfile::tempdir().unwrap();
        let txns = Transactions::open(dir.path(), false).unwrap();
        let Init::Ready(pid, e) = txns.init("old", 60_000, None, ids()).unwrap() else {
            panic!()
        };
        let Init::Ready(busy, b) = txns.init("busy", 60_000, None, ids()).unwrap() else {
            panic!()
        };
        txns.add_partitions("busy", busy, b, &[("o".into(), 0)])
            .unwrap();
        let later = now_ms() + ID_EXPIRY_MS + 1;
        // An open transaction keeps its id; the idle one goes, on disk too.
        assert_eq!(txns.forget_idle(later), 1);
        assert!(txns.describe("old").is_none() && txns.describe("busy").is_some());
        assert_eq!(
            txns.check_produce(pid, e, "o", 0).unwrap_err().error,
            ResponseError::InvalidProducerIdMapping
        );
        let reopened = Transactions::open(dir.path(), false).unwrap();
        assert!(reopened.describe("old").is_none());
        assert!(reopened.describe("busy").is_some());
        // At most one look a minute.
        assert_eq!(txns.forget_idle(later + 1), 0);
    }

    #[test]
    fn ending_is_idempotent_and_timeouts_abort() {
        let dir = tempfile::tempdir().unwrap();
        let txns = Transactions::open(dir.path(), false).unwrap();
        let Init::Ready(pid, e) = txns.init("t", 100, None, ids()).unwrap() else {
            panic!()
        };
        assert_eq!(
            txns.end("t", pid, e, true).unwrap_err(),
            ResponseError::InvalidTxnState,
            "nothing is open"
        );
        txns.add_partitions("t", pid, e, &[("o".into(), 0)])
            .unwrap();
        let ending = txns.end("t", pid, e, true).unwrap().unwrap();
        txns.finish(&ending).unwrap();
        // The same decision again is answered as done; the other is refused.
        assert!(txns.end("t", pid, e, true).unwrap().is_none());
        assert_eq!(
            txns.end("t", pid, e, false).unwrap_err(),
            ResponseError::InvalidTxnState
        );
        txns.add_partitions("t", pid, e, &[("o".into(), 0)])
            .unwrap();
        let started = txns.describe("t").unwrap().started_ms;
        assert!(txns.expired(started + 50).is_empty());
        let late = txns.expired(started + 101);
        assert_eq!(late.len(), 1);
        assert!(!late[0].marker.commit);
        assert_eq!(txns.describe("t").unwrap().state, State::PrepareAbort);
    }
}
