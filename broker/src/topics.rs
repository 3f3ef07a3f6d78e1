//! The broker's topics: their partitions' logs and their configs; each
//! partition also holds its idempotent producers' state (`producers`).
//!
//! On disk, `<data-dir>/topics/` holds one folder per live topic and nothing
//! else: `topics/<name>/topic.json` and `topics/<name>/<partition>/`. Any name
//! Kafka allows (1–249 characters of `[a-zA-Z0-9._-]`) is one path component.
//! A deleted topic's folder is moved in one rename to
//! `<data-dir>/deleted/<topic id>/`, beside `topics/` on the same filesystem,
//! and removed from there in the background or at the next start; so a
//! topic's name never decides whether its folder is data or debris.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::log::{LogConfig, LogObserver, PartitionLog, replace_file, sync_dir};
use crate::producers::ProducerStates;
use crate::{Error, Result};

/// A Kafka error code with a message for the client and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The Kafka error.
    pub error: ResponseError,
    /// What was wrong, naming the value.
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(error: ResponseError, message: impl Into<String>) -> Self {
        Refusal {
            error,
            message: message.into(),
        }
    }
}

/// The topic names Kafka keeps for itself: its `Topic.INTERNAL_TOPICS` and its
/// KRaft metadata log. This broker keeps committed offsets in its own store and
/// has no transaction, share-group or metadata log, so none of them is a topic
/// here; and none may become an ordinary topic, or clients and tools that find
/// one would read it as Kafka's.
pub const INTERNAL_TOPICS: &[&str] = &[
    "__consumer_offsets",
    "__transaction_state",
    "__share_group_state",
    "__cluster_metadata",
];

/// Whether `name` is one of Kafka's [`INTERNAL_TOPICS`]. Other names that
/// start with `__` are ordinary topics, as in Kafka.
pub fn is_internal(name: &str) -> bool {
    INTERNAL_TOPICS.contains(&name)
}

/// Kafka refuses a topic whose name equals an existing one once '.' is read
/// as '_', because both give the same metric names.
fn collides(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || matches!((x, y), (b'.', b'_') | (b'_', b'.')))
}

pub(crate) const TOPICS_DIR: &str = "topics";
const DELETED_DIR: &str = "deleted";
const META_FILE: &str = "topic.json";

/// The configs a topic keeps and the log honours, as Kafka names them.
pub const TOPIC_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "message.timestamp.type",
];

/// The rest of Kafka's topic-level configs: accepted (a value of the right
/// kind), stored and reported by DescribeConfigs, with no effect on this
/// single broker's log. Each with the check of its value.
pub const STORED_TOPIC_CONFIGS: &[(&str, ValueKind)] = &[
    (
        "compression.type",
        ValueKind::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
    ),
    ("delete.retention.ms", ValueKind::Long),
    ("file.delete.delay.ms", ValueKind::Long),
    ("flush.messages", ValueKind::Long),
    ("flush.ms", ValueKind::Long),
    ("follower.replication.throttled.replicas", ValueKind::Text),
    ("index.interval.bytes", ValueKind::Long),
    ("leader.replication.throttled.replicas", ValueKind::Text),
    ("local.retention.bytes", ValueKind::Long),
    ("local.retention.ms", ValueKind::Long),
    ("max.compaction.lag.ms", ValueKind::Long),
    ("max.message.bytes", ValueKind::Long),
    ("message.downconversion.enable", ValueKind::Bool),
    ("message.format.version", ValueKind::Text),
    ("message.timestamp.after.max.ms", ValueKind::Long),
    ("message.timestamp.before.max.ms", ValueKind::Long),
    ("message.timestamp.difference.max.ms", ValueKind::Long),
    ("min.cleanable.dirty.ratio", ValueKind::Ratio),
    ("min.compaction.lag.ms", ValueKind::Long),
    ("min.insync.replicas", ValueKind::Long),
    ("preallocate", ValueKind::Bool),
    ("remote.log.copy.disable", ValueKind::Bool),
    ("remote.log.delete.on.disable", ValueKind::Bool),
    ("remote.storage.enable", ValueKind::Bool),
    ("segment.index.bytes", ValueKind::Long),
    ("segment.jitter.ms", ValueKind::Long),
    ("unclean.leader.election.enable", ValueKind::Bool),
];

/// What a stored topic config's value must be.
#[derive(Clone, Copy, Debug)]
pub enum ValueKind {
    /// A whole number.
    Long,
    /// `true` or `false`.
    Bool,
    /// A number from 0 to 1.
    Ratio,
    /// Any text.
    Text,
    /// One of these.
    OneOf(&'static [&'static str]),
}

impl ValueKind {
    /// Checks `value` of config `key`: a clear refusal where it is not of this kind.
    fn check(self, key: &str, value: &str) -> Result<(), Refusal> {
        let ok = match self {
            ValueKind::Long => value.parse::<i64>().is_ok(),
            ValueKind::Bool => matches!(value, "true" | "false"),
            ValueKind::Ratio => value.parse::<f64>().is_ok_and(|r| (0.0..=1.0).contains(&r)),
            ValueKind::Text => true,
            ValueKind::OneOf(choices) => choices.contains(&value),
        };
        if ok {
            return Ok(());
        }
        let expected = match self {
            ValueKind::Long => "a whole number".to_owned(),
            ValueKind::Bool => "true or false".to_owned(),
            ValueKind::Ratio => "a number from 0 to 1".to_owned(),
            ValueKind::Text => String::new(),
            ValueKind::OneOf(choices) => format!("one of {choices:?}"),
        };
        Err(Refusal::new(
            ResponseError::InvalidConfig,
            format!("config \"{key}\" = \"{value}\" is not valid: expected {expected}"),
        ))
    }
}

/// What `topic.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TopicMeta {
    id: String,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

/// One partition: its log and its producers.
pub struct Partition {
    /// The partition's log.
    pub log: Mutex<PartitionLog>,
    /// Idempotent producers' recent batches.
    pub producers: Mutex<ProducerStates>,
}

/// A topic and its partitions.
pub struct Topic {
    /// The topic's name.
    pub name: String,
    /// The topic's id (Metadata v10+).
    pub id: uuid::Uuid,
    /// Explicitly set configs.
    pub configs: BTreeMap<String, String>,
    /// The log settings in force.
    pub log_config: LogConfig,
    /// The partitions, by index.
    pub partitions: Vec<Arc<Partition>>,
    dir: PathBuf,
}

impl Topic {
    /// The partition with this index.
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

/// What gives every partition the observer of its log (the audit's books).
pub trait Observers: Send + Sync {
    /// The observer of one partition's log: of a partition loaded at start
    /// (its books restored and brought up to the log), or of one just
    /// `created` (empty books).
    fn observer(
        &self,
        topic: &str,
        partition: i32,
        log: &PartitionLog,
        created: bool,
    ) -> Result<Arc<dyn LogObserver>>;
}

/// All topics of the broker.
pub struct Topics {
    dir: PathBuf,
    deleted: PathBuf,
    defaults: LogConfig,
    map: RwLock<BTreeMap<String, Arc<Topic>>>,
    appended: watch::Sender<u64>,
    observers: RwLock<Option<Arc<dyn Observers>>>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// Parses the configs of a topic over `defaults`; an unknown key or a bad value is refused.
pub fn log_config(
    defaults: &LogConfig,
    configs: &BTreeMap<String, String>,
) -> Result<LogConfig, Refusal> {
    let mut cfg = defaults.clone();
    for (key, value) in configs {
        let int = |v: &str| {
            v.parse::<i64>().map_err(|_| {
                Refusal::new(
                    ResponseError::InvalidConfig,
                    format!("config \"{key}\" = \"{v}\" is not an integer"),
                )
            })
        };
        match key.as_str() {
            "retention.ms" => cfg.retention_ms = int(value)?,
            "retention.bytes" => cfg.retention_bytes = int(value)?,
            "segment.ms" => cfg.segment_ms = int(value)?.max(1),
            "segment.bytes" => {
                let n = int(value)?;
                if n < 1024 {
                    return Err(Refusal::new(
                        ResponseError::InvalidConfig,
                        format!(
                            "config \"segment.bytes\" = \"{value}\" is too small: expected 1024 or more"
                        ),
                    ));
                }
                cfg.segment_bytes = n as u64;
            }
            "message.timestamp.type" => match value.as_str() {
                "CreateTime" => cfg.log_append_time = false,
                "LogAppendTime" => cfg.log_append_time = true,
                _ => {
                    return Err(Refusal::new(
                        ResponseError::InvalidConfig,
                        format!(
                            "config \"message.timestamp.type\" = \"{value}\": expected CreateTime or LogAppendTime"
                        ),
                    ));
                }
            },
            "cleanup.policy" => {
                if value != "delete" {
                    return Err(Refusal::new(
                        ResponseError::InvalidConfig,
                        format!(
                            "config \"cleanup.policy\" = \"{value}\": only \"delete\" is supported"
                        ),
                    ));
                }
            }
            // Checked and described with the stored configs, honoured by produce.
            "max.message.bytes" => cfg.max_message_bytes = Some(int(value)?),
            other => match STORED_TOPIC_CONFIGS.iter().find(|(name, _)| *name == other) {
                Some((_, kind)) => kind.check(key, value)?,
                None => {
                    return Err(Refusal::new(
                        ResponseError::InvalidConfig,
                        format!(
                            "config \"{key}\" is not a topic config: expected one of {TOPIC_CONFIGS:?} (honoured) or {:?} (stored)",
                            STORED_TOPIC_CONFIGS
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                        ),
                    ));
                }
            },
        }
    }
    Ok(cfg)
}

impl Topics {
    /// Opens (and recovers) every topic under `data_dir/topics`, and removes
    /// what deleted topics left behind.
    pub fn open(data_dir: &Path, defaults: LogConfig) -> Result<Topics> {
        let dir = data_dir.join(TOPICS_DIR);
        let deleted = data_dir.join(DELETED_DIR);
        for d in [&dir, &deleted] {
            std::fs::create_dir_all(d).map_err(io("cannot create the folder", d))?;
        }
        let mut map = BTreeMap::new();
        let entries = std::fs::read_dir(&dir).map_err(io("cannot read the topics folder", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io("cannot read the topics folder", &dir))?;
            let path = entry.path();
            let Ok(name) = entry.file_name().into_string() else {
                warn!(path = %path.display(), "skipping a folder whose name is not a topic name");
                continue;
            };
            let meta_path = path.join(META_FILE);
            let text = match std::fs::read_to_string(&meta_path) {
                Ok(text) => text,
                Err(e) => {
                    warn!(path = %path.display(), "skipping a folder without a readable {META_FILE}: {e}");
                    continue;
                }
            };
            let meta: TopicMeta = serde_json::from_str(&text)
                .map_err(|e| Error::Config(format!("topic file '{}': {e}", meta_path.display())))?;
            if let Some(id) = deleted_by_older_version(&name, &meta) {
                // Never loaded, whether or not it can be moved away now.
                match std::fs::rename(&path, deleted.join(id)) {
                    Ok(()) => {
                        info!(folder = %name, "a topic deleted before the last stop is removed")
                    }
                    Err(e) => {
                        warn!(folder = %name, "a topic deleted before the last stop cannot be moved away (tried again at the next start): {e}")
                    }
                }
                continue;
            }
            if is_internal(&name) {
                warn!(
                    topic = %name,
                    "a topic with the name of a Kafka internal topic, created by an older version; it is kept, but clients may take it for Kafka's: DeleteTopics removes it"
                );
            }
            let log_config = log_config(&defaults, &meta.configs).map_err(|r| {
                Error::Config(format!(
                    "topic file '{}': {}",
                    meta_path.display(),
                    r.message
                ))
            })?;
            let topic = open_topic(&path, &name, &meta, log_config)?;
            map.insert(name, Arc::new(topic));
        }
        sync_dir(&dir)?;
        purge(&deleted);
        info!(topics = map.len(), "topics loaded");
        Ok(Topics {
            dir,
            deleted,
            defaults,
            map: RwLock::new(map),
            appended: watch::channel(0).0,
            observers: RwLock::new(None),
        })
    }

    /// The log settings of a topic created without configs.
    pub fn defaults(&self) -> &LogConfig {
        &self.defaults
    }

    /// The topic named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map.read().get(name).cloned()
    }

    /// The topic with this id.
    pub fn by_id(&self, id: uuid::Uuid) -> Option<Arc<Topic>> {
        self.map.read().values().find(|t| t.id == id).cloned()
    }

    /// Every topic, by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        self.map.read().values().cloned().collect()
    }

    /// Creates a topic; `validate_only` checks without creating.
    pub fn create(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, Refusal> {
        tally_audit::validate_topic(name)
            .map_err(|e| Refusal::new(ResponseError::InvalidTopicException, e.detail))?;
        if is_internal(name) {
            // Kafka answers INVALID_REQUEST where a client may not create an
            // internal topic ("Creation of internal topic ... is prohibited").
            return Err(Refusal::new(
                ResponseError::InvalidRequest,
                format!(
                    "topic \"{name}\" is one of Kafka's internal topics and cannot be created: this broker keeps committed offsets in its own store; any valid name but {INTERNAL_TOPICS:?} is accepted"
                ),
            ));
        }
        if !(1..=10_000).contains(&partitions) {
            return Err(Refusal::new(
                ResponseError::InvalidPartitions,
                format!("partition count \"{partitions}\" is out of range: expected 1 to 10000"),
            ));
        }
        let log_config = log_config(&self.defaults, &configs)?;
        let mut map = self.map.write();
        if map.contains_key(name) {
            return Err(Refusal::new(
                ResponseError::TopicAlreadyExists,
                format!("topic \"{name}\" already exists"),
            ));
        }
        // Kafka's internal topics exist in every Kafka cluster, so a name
        // that collides with one is refused too.
        if let Some(other) = map
            .keys()
            .map(String::as_str)
            .chain(INTERNAL_TOPICS.iter().copied())
            .find(|k| collides(k, name))
        {
            let kind = if is_internal(other) {
                "Kafka's internal topic"
            } else {
                "existing topic"
            };
            return Err(Refusal::new(
                ResponseError::InvalidTopicException,
                format!(
                    "topic \"{name}\" collides with {kind} \"{other}\": '.' and '_' are the same in metric names, so choose a name that differs in another character"
                ),
            ));
        }
        let meta = TopicMeta {
            id: uuid::Uuid::new_v4().to_string(),
            partitions,
            configs,
        };
        let path = self.dir.join(name);
        let creating = || -> Result<Topic> {
            std::fs::create_dir(&path).map_err(io("cannot create the topic folder", &path))?;
            let text =
                serde_json::to_string_pretty(&meta).map_err(|e| Error::Config(e.to_string()))?;
            replace_file(&path.join(META_FILE), text.as_bytes())?;
            let topic = open_topic(&path, name, &meta, log_config.clone())?;
            sync_dir(&path)?;
            sync_dir(&self.dir)?;
            Ok(topic)
        };
        if validate_only {
            return Ok(Arc::new(Topic {
                name: name.to_owned(),
                id: uuid::Uuid::nil(),
                configs: meta.configs,
                log_config,
                partitions: Vec::new(),
                dir: path,
            }));
        }
        if let Some(refusal) = stray_folder(&path) {
            return Err(refusal);
        }
        let topic = creating().map_err(|e| {
            let _ = std::fs::remove_dir_all(&path);
            Refusal::new(ResponseError::KafkaStorageError, e.to_string())
        })?;
        if let Some(observers) = self.observers.read().as_ref() {
            for (p, part) in topic.partitions.iter().enumerate() {
                let mut log = part.log.lock();
                let observer = observers
                    .observer(name, p as i32, &log, true)
                    .map_err(|e| {
                        let _ = std::fs::remove_dir_all(&path);
                        Refusal::new(ResponseError::KafkaStorageError, e.to_string())
                    })?;
                log.observe(observer);
            }
        }
        let topic = Arc::new(topic);
        map.insert(name.to_owned(), topic.clone());
        info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    /// Grows topic `name` to `count` partitions (CreatePartitions); the
    /// partitions it has keep their data and books, the new ones start
    /// empty. `validate_only` checks without growing. The new partitions'
    /// folders are made before `topic.json` names them, so that a crash
    /// between leaves the topic as it was (and empty folders that a later
    /// growth reuses).
    pub fn add_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<Arc<Topic>, Refusal> {
        let mut map = self.map.write();
        let topic = existing(&map, name)?;
        let now = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
        if count <= now {
            return Err(Refusal::new(
                ResponseError::InvalidPartitions,
                format!(
                    "topic \"{name}\" has {now} partitions, and partitions can only be added: ask for more than {now}, not \"{count}\""
                ),
            ));
        }
        if count > 10_000 {
            return Err(Refusal::new(
                ResponseError::InvalidPartitions,
                format!("partition count \"{count}\" is out of range: expected at most 10000"),
            ));
        }
        if validate_only {
            return Ok(topic);
        }
        let storage = |e: Error| Refusal::new(ResponseError::KafkaStorageError, e.to_string());
        let mut partitions = topic.partitions.clone();
        for p in now..count {
            let log = PartitionLog::open(&topic.dir.join(p.to_string()), topic.log_config.clone())
                .map_err(storage)?;
            let mut producers = ProducerStates::default();
            producers.rebuild(&log).map_err(storage)?;
            partitions.push(Arc::new(Partition {
                log: Mutex::new(log),
                producers: Mutex::new(producers),
            }));
        }
        sync_dir(&topic.dir).map_err(storage)?;
        write_meta(&topic, count, &topic.configs)?;
        if let Some(observers) = self.observers.read().as_ref() {
            for (p, part) in partitions.iter().enumerate().skip(topic.partitions.len()) {
                let mut log = part.log.lock();
                let observer = observers
                    .observer(name, p as i32, &log, true)
                    .map_err(storage)?;
                log.observe(observer);
            }
        }
        let grown = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            configs: topic.configs.clone(),
            log_config: topic.log_config.clone(),
            partitions,
            dir: topic.dir.clone(),
        });
        map.insert(name.to_owned(), grown.clone());
        drop(map);
        self.notify_appended();
        info!(topic = name, from = now, to = count, "partitions added");
        Ok(grown)
    }

    /// Replaces topic `name`'s configs with `configs` (AlterConfigs; what
    /// is not in it goes back to its default): checked, written to
    /// `topic.json` before it takes effect, then in force in every
    /// partition's log. `validate_only` checks without changing.
    pub fn alter_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, Refusal> {
        let log_config = log_config(&self.defaults, &configs)?;
        let mut map = self.map.write();
        let topic = existing(&map, name)?;
        if validate_only || topic.configs == configs {
            return Ok(topic);
        }
        let storage = |e: Error| Refusal::new(ResponseError::KafkaStorageError, e.to_string());
        write_meta(
            &topic,
            i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX),
            &configs,
        )?;
        for part in &topic.partitions {
            part.log
                .lock()
                .set_config(log_config.clone())
                .map_err(storage)?;
        }
        let altered = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            configs,
            log_config,
            partitions: topic.partitions.clone(),
            dir: topic.dir.clone(),
        });
        map.insert(name.to_owned(), altered.clone());
        info!(topic = name, configs = ?altered.configs, "topic configs altered");
        Ok(altered)
    }

    /// Deletes a topic and its data: its folder leaves `topics/` in one
    /// rename, made durable before this returns, so that the topic does not
    /// come back after a crash; the files are removed in the background.
    pub fn delete(&self, name: &str) -> Result<Arc<Topic>, Refusal> {
        let mut map = self.map.write();
        let topic = existing(&map, name)?;
        let mut gone = self.deleted.join(topic.id.simple().to_string());
        if gone.exists() {
            gone = self.deleted.join(uuid::Uuid::new_v4().simple().to_string());
        }
        // Under the lock, so that a topic created again with this name gets
        // a folder of its own; its logs are retired before the lock is let
        // go, so that a produce or retention pass still holding this topic
        // cannot touch that new folder (until then its old paths lead
        // nowhere).
        std::fs::rename(&topic.dir, &gone).map_err(|e| {
            Refusal::new(
                ResponseError::KafkaStorageError,
                format!(
                    "topic \"{name}\" cannot be deleted: moving its folder '{}' to '{}' failed: {e}",
                    topic.dir.display(),
                    gone.display()
                ),
            )
        })?;
        for part in &topic.partitions {
            part.log.lock().retire();
        }
        map.remove(name);
        drop(map);
        for d in [&self.dir, &self.deleted] {
            if let Err(e) = sync_dir(d) {
                warn!(topic = name, "the deletion may not survive a crash: {e}");
            }
        }
        std::thread::spawn(move || {
            if let Err(e) = std::fs::remove_dir_all(&gone) {
                warn!(path = %gone.display(), "cannot remove a deleted topic's files (retried at the next start): {e}");
            }
        });
        info!(topic = name, "topic deleted");
        Ok(topic)
    }

    /// Gives every partition, loaded and created from now on, the observer
    /// `observers` makes for it.
    pub fn observe(&self, observers: Arc<dyn Observers>) -> Result<()> {
        let map = self.map.read();
        for topic in map.values() {
            for (p, part) in topic.partitions.iter().enumerate() {
                let mut log = part.log.lock();
                let observer = observers.observer(&topic.name, p as i32, &log, false)?;
                log.observe(observer);
            }
        }
        *self.observers.write() = Some(observers);
        Ok(())
    }

    /// Wakes fetchers waiting for new records.
    pub fn notify_appended(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever records are appended anywhere.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }
}

/// Whether a folder of `topics/` is what an older version left of a deleted
/// topic, and if so the topic's id: that version renamed `<name>` to
/// `<name>.<id as 32 hex digits>.deleted` in place. Only that exact pattern,
/// with the topic's own id inside, is debris; a live topic may well be called
/// `orders.deleted`.
fn deleted_by_older_version<'a>(folder: &'a str, meta: &TopicMeta) -> Option<&'a str> {
    let (name, hex) = folder.strip_suffix(".deleted")?.rsplit_once('.')?;
    let simple = hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let own_id = matches!(
        (uuid::Uuid::parse_str(hex), uuid::Uuid::parse_str(&meta.id)),
        (Ok(a), Ok(b)) if a == b
    );
    (!name.is_empty() && simple && own_id).then_some(hex)
}

/// Removes the folders of deleted topics; what cannot be removed now is
/// tried again at the next start.
fn purge(deleted: &Path) {
    let Ok(entries) = std::fs::read_dir(deleted) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Err(e) = std::fs::remove_dir_all(&path) {
            warn!(path = %path.display(), "cannot remove a deleted topic's files: {e}");
        }
    }
}

/// A folder at a new topic's path that no loaded topic owns: what a crash
/// during a create left (an empty folder, or one with only a half-written
/// `topic.json.tmp`) is reused; anything else is refused rather than taken
/// for the new topic's data.
fn stray_folder(path: &Path) -> Option<Refusal> {
    let entries = std::fs::read_dir(path).ok()?;
    let debris = entries
        .flatten()
        .all(|e| e.file_name() == std::ffi::OsStr::new("topic.json.tmp"));
    if debris {
        let _ = std::fs::remove_dir_all(path);
        return None;
    }
    Some(Refusal::new(
        ResponseError::KafkaStorageError,
        format!(
            "folder '{}' already exists but holds no topic this broker loaded: move it away to create this topic",
            path.display()
        ),
    ))
}

/// The topic named `name` in `map`, or UNKNOWN_TOPIC_OR_PARTITION naming it.
fn existing(map: &BTreeMap<String, Arc<Topic>>, name: &str) -> Result<Arc<Topic>, Refusal> {
    map.get(name).cloned().ok_or_else(|| {
        Refusal::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic \"{name}\" does not exist"),
        )
    })
}

/// Rewrites `topic`'s `topic.json` (atomically, made durable) with
/// `partitions` and `configs`.
fn write_meta(
    topic: &Topic,
    partitions: i32,
    configs: &BTreeMap<String, String>,
) -> Result<(), Refusal> {
    let meta = TopicMeta {
        id: topic.id.to_string(),
        partitions,
        configs: configs.clone(),
    };
    let text = serde_json::to_string_pretty(&meta)
        .map_err(|e| Refusal::new(ResponseError::KafkaStorageError, e.to_string()))?;
    replace_file(&topic.dir.join(META_FILE), text.as_bytes())
        .map_err(|e| Refusal::new(ResponseError::KafkaStorageError, e.to_string()))
}

fn open_topic(path: &Path, name: &str, meta: &TopicMeta, log_config: LogConfig) -> Result<Topic> {
    let id = uuid::Uuid::parse_str(&meta.id)
        .map_err(|e| Error::Config(format!("topic \"{name}\" id: {e}")))?;
    let mut partitions = Vec::with_capacity(meta.partitions.max(0) as usize);
    for p in 0..meta.partitions {
        let log = PartitionLog::open(&path.join(p.to_string()), log_config.clone())?;
        let mut producers = ProducerStates::default();
        producers.rebuild(&log)?;
        partitions.push(Arc::new(Partition {
            log: Mutex::new(log),
            producers: Mutex::new(producers),
        }));
    }
    Ok(Topic {
        name: name.to_owned(),
        id,
        configs: meta.configs.clone(),
        log_config,
        partitions,
        dir: path.to_path_buf(),
    })
}

impl crate::groups::consumer::Catalog for Topics {
    fn topic(&self, name: &str) -> Option<(uuid::Uuid, i32)> {
        self.get(name)
            .map(|t| (t.id, i32::try_from(t.partitions.len()).unwrap_or(i32::MAX)))
    }

    fn name_of(&self, id: uuid::Uuid) -> Option<String> {
        self.all()
            .into_iter()
            .find(|t| t.id == id)
            .map(|t| t.name.clone())
    }

    fn names(&self) -> Vec<String> {
        self.all().into_iter().map(|t| t.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_configs_are_checked() {
        let d = LogConfig::default();
        let ok: BTreeMap<String, String> = [
            ("retention.ms".to_owned(), "1000".to_owned()),
            (
                "message.timestamp.type".to_owned(),
                "LogAppendTime".to_owned(),
            ),
        ]
        .into();
        let cfg = log_config(&d, &ok).unwrap();
        assert_eq!(cfg.retention_ms, 1000);
        assert!(cfg.log_append_time);
        // Kafka's other topic configs are stored when their value fits.
        let stored: BTreeMap<String, String> = [
            ("flush.ms".to_owned(), "1".to_owned()),
            ("compression.type".to_owned(), "lz4".to_owned()),
            ("min.cleanable.dirty.ratio".to_owned(), "0.5".to_owned()),
            ("preallocate".to_owned(), "true".to_owned()),
        ]
        .into();
        assert_eq!(
            format!("{:?}", log_config(&d, &stored).unwrap()),
            format!("{d:?}")
        );
        for (k, v) in [
            ("retention.ms", "soon"),
            ("cleanup.policy", "compact"),
            ("flush.ms", "often"),
            ("compression.type", "brotli"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("preallocate", "yes"),
            ("no.such.config", "1"),
        ] {
            let bad: BTreeMap<String, String> = [(k.to_owned(), v.to_owned())].into();
            let r = log_config(&d, &bad).unwrap_err();
            assert_eq!(r.error, ResponseError::InvalidConfig);
            assert!(r.message.contains(k), "{}", r.message);
        }
    }
}
