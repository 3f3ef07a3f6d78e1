//! The broker's context: what every request handler works over (the
//! config, the topics, the groups, the audit instrumentation, the flusher,
//! the metrics, the producer ids), opened once from the data folder, and
//! the hooks through which a handler tells the instrumentation what it did.
//! Handlers take it as a parameter and know nothing of the listener.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::audit::{AuditConfig, Instrumentation};
use crate::config::BrokerConfig;
use crate::groups::{Groups, GroupsConfig};
use crate::log::{Appended, Flusher};
use crate::metrics::BrokerMetrics;
use crate::producers::ProducerIds;
use crate::topics::{Topic, Topics};
use crate::txn::Transactions;
use crate::{Error, Result};

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Everything the request handlers share.
pub struct Broker {
    pub(crate) cfg: BrokerConfig,
    pub(crate) cluster_id: String,
    pub(crate) topics: Topics,
    pub(crate) flusher: Flusher,
    pub(crate) producer_ids: ProducerIds,
    pub(crate) metrics: BrokerMetrics,
    pub(crate) groups: Groups,
    /// The transaction coordinator.
    pub(crate) txns: Transactions,
    pub(crate) audit: Option<Instrumentation>,
    /// Permits for checking produced batches off the async workers
    /// (decompression): one per core, so a flood of compressed batches queues
    /// instead of taking every thread.
    pub(crate) checks: Arc<Semaphore>,
    _lock: std::fs::File,
}

impl Broker {
    /// Opens the data folder (locking it against a second broker) and recovers the log.
    pub fn open(cfg: BrokerConfig) -> Result<Broker> {
        cfg.check()?;
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: "cannot create the data folder",
            path: dir.clone(),
            source,
        })?;
        let lock_path = dir.join(".lock");
        let lock = std::fs::File::create(&lock_path).map_err(|source| Error::Io {
            what: "cannot create",
            path: lock_path.clone(),
            source,
        })?;
        lock.try_lock().map_err(|_| {
            Error::Config(format!(
                "data folder '{}' is in use by another broker (locked: {})",
                dir.display(),
                lock_path.display()
            ))
        })?;
        let id_path = dir.join("cluster_id");
        let cluster_id = match std::fs::read_to_string(&id_path) {
            Ok(id) => id.trim().to_owned(),
            Err(_) => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                std::fs::write(&id_path, &id).map_err(|source| Error::Io {
                    what: "cannot write",
                    path: id_path.clone(),
                    source,
                })?;
                id
            }
        };
        let started = Instant::now();
        let topics = Topics::open(dir, cfg.log_defaults())?;
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "log recovered"
        );
        let groups = Groups::open(
            dir,
            GroupsConfig {
                initial_rebalance_delay: cfg.group_initial_rebalance_delay,
                ..GroupsConfig::default()
            },
        )?;
        let audit = if cfg.instrumentation {
            let audit_cfg = AuditConfig {
                width: cfg.width()?,
                cluster: cfg.cluster.clone(),
                source: format!("broker-{}-{}", cfg.cluster, cfg.node_id),
                agent: (!cfg.agent.is_empty()).then(|| cfg.agent.clone()),
                token: cfg.agent_token.clone(),
                agent_ca: cfg.agent_ca.clone(),
            };
            Some(Instrumentation::open(dir, audit_cfg, &topics)?)
        } else {
            None
        };
        let fsync = cfg.fsync_policy()?;
        Ok(Broker {
            groups,
            txns: Transactions::open(dir, fsync == crate::log::FsyncPolicy::Always)?,
            audit,
            flusher: Flusher::start(fsync),
            producer_ids: ProducerIds::open(dir)?,
            metrics: BrokerMetrics::new(),
            checks: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            cluster_id,
            topics,
            cfg,
            _lock: lock,
        })
    }

    /// The topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The consumer groups and their committed offsets.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// The transaction coordinator.
    pub fn transactions(&self) -> &Transactions {
        &self.txns
    }

    /// The audit instrumentation, unless it is off.
    pub fn audit(&self) -> Option<&Instrumentation> {
        self.audit.as_ref()
    }

    /// Counts an append in the broker's metrics (the audit's books heard
    /// of it from the partition's log).
    pub(crate) fn on_appended(&self, topic: &str, appended: &Appended) {
        let records: i64 = appended
            .headers
            .iter()
            .map(|h| i64::from(h.record_count))
            .sum();
        let bytes: usize = appended.headers.iter().map(|h| h.size()).sum();
        self.metrics.appended(topic, records as u64, bytes as u64);
    }

    pub(crate) fn on_fetched(&self, topic: &str, records: &Bytes) {
        if records.is_empty() {
            return;
        }
        // Headers only: these are the log's own batches, already checked.
        let count = crate::batch::count_records(records);
        self.metrics.fetched(topic, count, records.len() as u64);
    }

    pub(crate) fn on_topic_deleted(&self, topic: &Topic) {
        if let Some(audit) = &self.audit {
            audit.on_topic_deleted(&topic.name);
        }
        self.metrics.forget_topic(&topic.name);
        if let Err(e) = self.groups.forget_topic(&topic.name) {
            warn!(topic = %topic.name, "cannot remove the committed offsets of the deleted topic: {e}");
        }
    }

    pub(crate) fn on_group_deleted(&self, group: &str) {
        if let Some(audit) = &self.audit {
            audit.on_group_deleted(group);
        }
    }

    /// Counts what changed and sends it, with every group's lag, to the agent.
    pub fn audit_tick(&self, now_ms: i64) {
        if let Some(audit) = &self.audit {
            audit.tick(now_ms, &self.topics, &self.groups);
        }
    }

    /// Takes the groups' latest commits into the audit books: called
    /// before a log start moves.
    pub(crate) fn audit_take_commits(&self) {
        if let Some(audit) = &self.audit {
            audit.take_commits(&self.groups);
        }
    }

    /// Rolls segments that are due and applies retention to every partition.
    pub fn maintain(&self, now_ms: i64) {
        self.audit_take_commits();
        for topic in self.topics.all() {
            for (p, part) in topic.partitions.iter().enumerate() {
                let mut log = part.log.lock();
                if let Err(e) = log.roll_if_due(now_ms) {
                    warn!(topic = %topic.name, partition = p, "cannot roll the segment: {e}");
                }
                match log.enforce_retention(now_ms) {
                    Ok(Some(start)) => {
                        part.producers.lock().forget_before(start);
                        info!(topic = %topic.name, partition = p, start, "retention moved the log start")
                    }
                    Ok(None) => {}
                    Err(e) => warn!(topic = %topic.name, partition = p, "retention failed: {e}"),
                }
            }
        }
    }
}
