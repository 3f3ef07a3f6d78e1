//! Consumer groups: the coordinator of Kafka's classic group protocol and
//! the durable committed offsets, with each partition's recent commit
//! history for the audit, and where each group started reading a partition
//! (its first tied fetch, [`Groups::start_of`]).
//!
//! Starts live in `<data-dir>/groups/starts.json` (see `starts`).
//!
//! Offsets live in `<data-dir>/groups/offsets.log`. A small log is read
//! before the broker serves; a large one is read in the background, and
//! until it is, group requests are answered with COORDINATOR_NOT_AVAILABLE
//! (FindCoordinator) or COORDINATOR_LOAD_IN_PROGRESS.

pub(crate) mod consumer;
mod coordinator;
mod cursor;
mod offsets;
mod starts;
mod ties;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::FetchRequest;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

pub(crate) use coordinator::{
    Coordinator, JoinOutcome, JoinRequest, LeavingMember, SyncOutcome, SyncRequest,
};
use offsets::{Compaction, OffsetStore, Record};
use starts::Starts;
use ties::Ties;
pub use ties::assigned_partitions;

use crate::Result;

/// Settings of the group coordinator and the offsets store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupsConfig {
    /// Shortest session timeout a member may ask for.
    pub min_session_timeout: Duration,
    /// Longest session timeout a member may ask for.
    pub max_session_timeout: Duration,
    /// How long a group that was empty waits for more members before its
    /// first generation (Kafka's `group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay: Duration,
    /// Most members (and pending member ids) per group.
    pub max_group_size: usize,
    /// Commits kept per (group, topic, partition) in memory.
    pub history_len: usize,
    /// Largest metadata string an OffsetCommit may carry, in bytes (at
    /// most 512 KiB).
    pub max_metadata_bytes: usize,
    /// The offsets log is never compacted below this size.
    pub compact_min_bytes: u64,
    /// The offsets log is compacted once it is this many times its live set.
    pub compact_ratio: u64,
    /// An offsets log larger than this is loaded in the background.
    pub background_load_bytes: u64,
    /// A group without members and without committed offsets is forgotten
    /// after this long.
    pub empty_group_retention: Duration,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            min_session_timeout: Duration::from_millis(500),
            max_session_timeout: Duration::from_secs(30 * 60),
            initial_rebalance_delay: Duration::ZERO,
            max_group_size: 1_000,
            history_len: 10,
            max_metadata_bytes: 4_096,
            compact_min_bytes: 1 << 20,
            compact_ratio: 4,
            background_load_bytes: 8 << 20,
            empty_group_retention: Duration::from_secs(10 * 60),
        }
    }
}

/// The state of a group, as Kafka names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupState {
    /// No members; committed offsets may remain.
    Empty,
    /// Members are (re)joining.
    PreparingRebalance,
    /// Members joined; the leader's assignment is awaited.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// The group does not exist (any more).
    Dead,
    /// KIP-848: members are moving to a new target assignment.
    Reconciling,
}

impl GroupState {
    /// Every state.
    pub const ALL: [GroupState; 6] = [
        GroupState::Empty,
        GroupState::PreparingRebalance,
        GroupState::CompletingRebalance,
        GroupState::Stable,
        GroupState::Dead,
        GroupState::Reconciling,
    ];

    /// The name Kafka's ListGroups and DescribeGroups use.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
            GroupState::Reconciling => "Reconciling",
        }
    }
}

impl std::fmt::Display for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One commit of a group's offset for a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group will consume.
    pub offset: i64,
    /// The leader epoch the client saw, -1 when unknown.
    pub leader_epoch: i32,
    /// The client's metadata string.
    pub metadata: Option<String>,
    /// When the broker accepted the commit, in epoch milliseconds.
    pub commit_time_ms: i64,
}

/// A group's latest commit for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupOffset {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The latest commit.
    pub committed: CommittedOffset,
}

/// A member as DescribeGroups shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSummary {
    /// The member id the coordinator gave it.
    pub member_id: String,
    /// Its `group.instance.id`, for a static member.
    pub instance_id: Option<String>,
    /// The client id of its JoinGroup.
    pub client_id: String,
    /// Where it connected from, as `/address`.
    pub client_host: String,
    /// Its metadata for the group's protocol.
    pub metadata: Bytes,
    /// The assignment the leader gave it (empty until the group is stable).
    pub assignment: Bytes,
}

/// A group as DescribeGroups shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group id.
    pub group: String,
    /// Its state.
    pub state: GroupState,
    /// Its generation (0 before the first rebalance).
    pub generation: i32,
    /// The protocol type (`consumer` for consumers), empty if unknown.
    pub protocol_type: String,
    /// The chosen assignment protocol (`range`, …), empty if none.
    pub protocol: String,
    /// The leader's member id.
    pub leader: Option<String>,
    /// The members, longest-standing first.
    pub members: Vec<MemberSummary>,
    /// `classic`, or `consumer` for a KIP-848 group.
    pub group_type: &'static str,
}

/// A group as ListGroups shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    /// The group id.
    pub group: String,
    /// Its state.
    pub state: GroupState,
    /// The protocol type, empty if unknown.
    pub protocol_type: String,
    /// `classic`, or `consumer` for a KIP-848 group.
    pub group_type: &'static str,
}

struct Shared {
    config: GroupsConfig,
    coordinator: Mutex<Coordinator>,
    store: OnceLock<Arc<OffsetStore>>,
    /// Topics deleted while the offsets were loading: purged once loaded.
    purges: Mutex<Vec<String>>,
    load_failed: AtomicBool,
    loaded: watch::Sender<bool>,
    commits: watch::Sender<u64>,
    /// The coordinator's index of which group a fetch belongs to.
    ties: Arc<Ties>,
    /// Where groups started on partitions, from their first tied fetch.
    starts: Arc<Starts>,
}

impl Shared {
    fn install(&self, store: OffsetStore) {
        let groups: Vec<String> = store.read(|o| o.groups.keys().cloned().collect());
        {
            let mut c = self.coordinator.lock();
            for g in &groups {
                c.ensure_group(g);
            }
        }
        let mut purges = self.purges.lock();
        let store = self.store.get_or_init(|| Arc::new(store));
        for topic in purges.drain(..) {
            if let Err(e) = store.remove(|_, t, _| t == topic) {
                warn!(topic = %topic, "cannot remove the offsets of a deleted topic: {e}");
            }
        }
        drop(purges);
        self.loaded.send_replace(true);
    }
}

/// The consumer groups of the broker: membership and committed offsets.
pub struct Groups {
    shared: Arc<Shared>,
}

impl Groups {
    /// Opens the offsets store under `data_dir/groups`; a log larger than
    /// `background_load_bytes` is read on a thread of its own.
    pub fn open(data_dir: &Path, config: GroupsConfig) -> Result<Groups> {
        let path = OffsetStore::path_in(data_dir);
        let compaction = Compaction {
            min_bytes: config.compact_min_bytes,
            ratio: config.compact_ratio,
        };
        let history_len = config.history_len;
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let coordinator = Coordinator::new(config.clone());
        let ties = coordinator.ties();
        let shared = Arc::new(Shared {
            coordinator: Mutex::new(coordinator),
            ties,
            starts: Arc::new(Starts::load(Starts::path_in(data_dir))),
            config,
            store: OnceLock::new(),
            purges: Mutex::new(Vec::new()),
            load_failed: AtomicBool::new(false),
            loaded: watch::channel(false).0,
            commits: watch::channel(0).0,
        });
        if size <= shared.config.background_load_bytes {
            shared.install(OffsetStore::load(&path, history_len, compaction)?);
        } else {
            info!(bytes = size, "loading committed offsets in the background");
            let s = shared.clone();
            std::thread::Builder::new()
                .name("offsets-load".into())
                .spawn(
                    move || match OffsetStore::load(&path, history_len, compaction) {
                        Ok(store) => s.install(store),
                        Err(e) => {
                            error!(
                                "cannot load the committed offsets; group requests will fail: {e}"
                            );
                            s.load_failed.store(true, Ordering::Release);
                        }
                    },
                )
                .map_err(|e| {
                    crate::Error::Config(format!("cannot start the offsets loader: {e}"))
                })?;
        }
        Ok(Groups { shared })
    }

    /// The settings in force.
    pub fn config(&self) -> &GroupsConfig {
        &self.shared.config
    }

    /// Whether the committed offsets are loaded (group requests are served).
    pub fn is_loaded(&self) -> bool {
        self.shared.store.get().is_some() && *self.shared.loaded.borrow()
    }

    /// Whether loading the committed offsets failed for good.
    pub fn load_failed(&self) -> bool {
        self.shared.load_failed.load(Ordering::Acquire)
    }

    /// The error group requests get while the offsets are not loaded.
    pub(crate) fn unavailable(&self) -> Option<ResponseError> {
        if self.is_loaded() {
            None
        } else if self.load_failed() {
            Some(ResponseError::CoordinatorNotAvailable)
        } else {
            Some(ResponseError::CoordinatorLoadInProgress)
        }
    }

    /// Returns once the committed offsets are loaded.
    pub async fn wait_loaded(&self) {
        let mut rx = self.shared.loaded.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    fn store(&self) -> Option<&Arc<OffsetStore>> {
        self.shared.store.get()
    }

    /// The latest commit of `group` for a partition.
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<CommittedOffset> {
        self.store()?.read(|o| {
            o.groups
                .get(group)?
                .get(&(topic.to_owned(), partition))?
                .back()
                .cloned()
        })
    }

    /// The last commits of `group` for a partition (at most
    /// `history_len`), oldest first. After a restart, what the log still
    /// held; after a compaction, the latest only.
    pub fn history(&self, group: &str, topic: &str, partition: i32) -> Vec<CommittedOffset> {
        self.store().map_or_else(Vec::new, |s| {
            s.read(|o| {
                o.groups
                    .get(group)
                    .and_then(|g| g.get(&(topic.to_owned(), partition)))
                    .map(|h| h.iter().cloned().collect())
                    .unwrap_or_default()
            })
        })
    }

    /// The latest commit of every partition of `group`, by topic and partition.
    pub fn group_committed(&self, group: &str) -> Vec<GroupOffset> {
        self.collect(Some(group))
    }

    /// The latest commit of every (group, topic, partition).
    pub fn all_committed(&self) -> Vec<GroupOffset> {
        self.collect(None)
    }

    fn collect(&self, only: Option<&str>) -> Vec<GroupOffset> {
        let Some(store) = self.store() else {
            return Vec::new();
        };
        store.read(|o| {
            o.groups
                .iter()
                .filter(|(g, _)| only.is_none_or(|only| only == g.as_str()))
                .flat_map(|(g, parts)| {
                    parts.iter().filter_map(move |((t, p), h)| {
                        h.back().map(|c| GroupOffset {
                            group: g.clone(),
                            topic: t.clone(),
                            partition: *p,
                            committed: c.clone(),
                        })
                    })
                })
                .collect()
        })
    }

    /// Where `group` started reading a partition it had not committed on:
    /// the offset of its first fetch there that was tied to it (DESIGN §2),
    /// if any was.
    pub fn start_of(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        self.shared.starts.get(group, topic, partition)
    }

    /// Ties a Fetch from `client_id` at `host` to the groups whose members
    /// were assigned its partitions, and records the fetch offset as the
    /// group's start where the group has neither a start nor a commit
    /// there yet. A new start is on disk before this returns, so before
    /// the fetch is answered. Where every tie is settled it costs one
    /// lookup per partition.
    pub(crate) async fn tie_fetch(&self, client_id: &str, host: IpAddr, request: &FetchRequest) {
        let Some(store) = self.store() else {
            return;
        };
        let starts = &self.shared.starts;
        let mut recorded = false;
        let fetched = request.topics.iter().flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (&*t.topic.0, p.partition, p.fetch_offset))
        });
        let read_committed = request.isolation_level == 1;
        self.shared
            .ties
            .open_ties(client_id, host, read_committed, fetched, |tie| {
            let key = (tie.topic.clone(), tie.partition);
            let committed = store.read(|o| {
                o.groups
                    .get(&*tie.group)
                    .is_some_and(|parts| parts.contains_key(&key))
            });
            if !committed && starts.record(&tie.group, &tie.topic, tie.partition, tie.offset) {
                debug!(group = %tie.group, topic = %tie.topic, partition = tie.partition, offset = tie.offset, "the group starts where its first fetch did");
                recorded = true;
            }
            true
        });
        if recorded {
            let starts = starts.clone();
            match tokio::task::spawn_blocking(move || starts.persist()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("cannot store the groups' start offsets: {e}"),
                Err(e) => warn!("the start offsets writer failed: {e}"),
            }
        }
    }

    /// Whether the group reads committed records only (its latest fetch
    /// tied to it was `read_committed`).
    pub fn is_read_committed(&self, group: &str) -> bool {
        self.shared.ties.is_read_committed(group)
    }

    /// A counter that moves on every accepted commit: the audit waits on it.
    pub fn subscribe_commits(&self) -> watch::Receiver<u64> {
        self.shared.commits.subscribe()
    }

    /// A ConsumerGroupHeartbeat of the KIP-848 protocol.
    pub(crate) fn consumer_heartbeat(
        &self,
        hb: consumer::Heartbeat,
        catalog: &dyn consumer::Catalog,
    ) -> consumer::Beat {
        self.shared
            .coordinator
            .lock()
            .consumer_heartbeat(hb, catalog, Instant::now())
    }

    /// A consumer-protocol group as ConsumerGroupDescribe shows it.
    pub(crate) fn describe_consumer(
        &self,
        group: &str,
    ) -> Option<consumer::DescribedConsumerGroup> {
        self.shared.coordinator.lock().describe_consumer(group)
    }

    /// The group's members and state; `None` when there is no such group.
    pub fn describe(&self, group: &str) -> Option<GroupSummary> {
        self.shared.coordinator.lock().describe(group)
    }

    /// Every group, by name.
    pub fn list(&self) -> Vec<GroupListing> {
        self.shared.coordinator.lock().list()
    }

    /// Stores commits of `group` (checked by the caller) durably; returns
    /// once they are fsynced.
    pub async fn commit(
        &self,
        group: &str,
        commits: Vec<(String, i32, CommittedOffset)>,
    ) -> std::result::Result<(), ResponseError> {
        let store = self
            .store()
            .ok_or(ResponseError::CoordinatorLoadInProgress)?
            .clone();
        // The log's record format bounds every string.
        if group.is_empty() || group.len() > usize::from(i16::MAX as u16) {
            return Err(ResponseError::InvalidGroupId);
        }
        for (topic, _, c) in &commits {
            if topic.len() > 249 {
                return Err(ResponseError::InvalidTopicException);
            }
            let limit = self
                .shared
                .config
                .max_metadata_bytes
                .min(offsets::MAX_METADATA);
            if c.metadata.as_ref().is_some_and(|m| m.len() > limit) {
                return Err(ResponseError::OffsetMetadataTooLarge);
            }
        }
        let records: Vec<Record> = commits
            .into_iter()
            .map(|(topic, partition, c)| Record {
                group: group.to_owned(),
                topic,
                partition,
                commit: Some(c),
            })
            .collect();
        let written = tokio::task::spawn_blocking(move || store.append(records))
            .await
            .unwrap_or_else(|e| {
                Err(crate::Error::Config(format!(
                    "the offsets writer failed: {e}"
                )))
            });
        match written {
            Ok(()) => {
                self.shared.coordinator.lock().ensure_group(group);
                self.shared.commits.send_modify(|n| *n += 1);
                Ok(())
            }
            Err(e) => {
                warn!(group, "cannot store committed offsets: {e}");
                Err(ResponseError::KafkaStorageError)
            }
        }
    }

    /// Removes every group's offsets of a deleted topic (fsynced).
    pub fn forget_topic(&self, topic: &str) -> Result<()> {
        if self.shared.starts.remove(|_, t| t == topic) {
            self.shared.starts.persist()?;
        }
        let purges = self.shared.purges.lock();
        let Some(store) = self.store() else {
            let mut purges = purges;
            purges.push(topic.to_owned());
            return Ok(());
        };
        drop(purges);
        let n = store.remove(|_, t, _| t == topic)?;
        if n > 0 {
            info!(
                topic,
                partitions = n,
                "offsets of the deleted topic removed"
            );
            self.shared.commits.send_modify(|c| *c += 1);
        }
        Ok(())
    }

    /// Deletes an empty group and its offsets: GROUP_ID_NOT_FOUND when
    /// there is no such group, NON_EMPTY_GROUP when it has members.
    pub async fn delete_group(&self, group: &str) -> std::result::Result<(), ResponseError> {
        let store = self
            .store()
            .ok_or(ResponseError::CoordinatorLoadInProgress)?
            .clone();
        if group.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let has_offsets = store.read(|o| o.groups.contains_key(group));
        match self.shared.coordinator.lock().delete(group) {
            Ok(()) => {}
            Err(ResponseError::GroupIdNotFound) if has_offsets => {}
            Err(e) => return Err(e),
        }
        let name = group.to_owned();
        let starts = self.shared.starts.clone();
        let removed = tokio::task::spawn_blocking(move || {
            if starts.remove(|g, _| g == name) {
                starts.persist()?;
            }
            store.remove(|g, _, _| g == name)
        })
        .await
        .unwrap_or_else(|e| {
            Err(crate::Error::Config(format!(
                "the offsets writer failed: {e}"
            )))
        });
        match removed {
            Ok(_) => {
                info!(group, "group deleted");
                self.shared.commits.send_modify(|c| *c += 1);
                Ok(())
            }
            Err(e) => {
                warn!(group, "cannot remove the group's offsets: {e}");
                Err(ResponseError::KafkaStorageError)
            }
        }
    }

    /// Deletes `group`'s committed offsets of the `asked` partitions
    /// (OffsetDelete). A consumer group with members keeps the offsets of
    /// the topics its members subscribe to (GROUP_SUBSCRIBED_TO_TOPIC for
    /// those partitions); a group of another protocol with members is
    /// refused whole (NON_EMPTY_GROUP), an unknown one is GROUP_ID_NOT_FOUND.
    /// Returns each asked partition with its error (None: deleted, or had
    /// no offset).
    pub async fn delete_offsets(
        &self,
        group: &str,
        asked: Vec<(String, i32)>,
    ) -> std::result::Result<Vec<(String, i32, Option<ResponseError>)>, ResponseError> {
        let store = self
            .store()
            .ok_or(ResponseError::CoordinatorLoadInProgress)?
            .clone();
        if group.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let summary = self.describe(group);
        let has_offsets = store.read(|o| o.groups.contains_key(group));
        let members = summary.as_ref().map_or(&[][..], |g| &g.members[..]);
        if summary.is_none() && !has_offsets {
            return Err(ResponseError::GroupIdNotFound);
        }
        // What the members subscribe to; None: everything (a member whose
        // subscription cannot be read keeps every offset).
        let subscribed: Option<HashSet<String>> = if members.is_empty() {
            Some(HashSet::new())
        } else if summary
            .as_ref()
            .is_some_and(|g| g.protocol_type != "consumer")
        {
            return Err(ResponseError::NonEmptyGroup);
        } else {
            members
                .iter()
                .map(|m| subscribed_topics(&m.metadata))
                .collect::<Option<Vec<_>>>()
                .map(|all| all.into_iter().flatten().collect())
        };
        let mut answers = Vec::with_capacity(asked.len());
        let mut doomed: HashSet<(String, i32)> = HashSet::new();
        for (topic, partition) in asked {
            let kept = subscribed.as_ref().is_none_or(|s| s.contains(&topic));
            if kept {
                answers.push((
                    topic,
                    partition,
                    Some(ResponseError::GroupSubscribedToTopic),
                ));
            } else {
                doomed.insert((topic.clone(), partition));
                answers.push((topic, partition, None));
            }
        }
        if doomed.is_empty() {
            return Ok(answers);
        }
        let name = group.to_owned();
        let removed = tokio::task::spawn_blocking(move || {
            store.remove(|g, t, p| g == name && doomed.contains(&(t.to_owned(), p)))
        })
        .await
        .unwrap_or_else(|e| {
            Err(crate::Error::Config(format!(
                "the offsets writer failed: {e}"
            )))
        });
        match removed {
            Ok(n) => {
                info!(group, partitions = n, "committed offsets deleted");
                if n > 0 {
                    self.shared.commits.send_modify(|c| *c += 1);
                }
                Ok(answers)
            }
            Err(e) => {
                warn!(group, "cannot delete committed offsets: {e}");
                Err(ResponseError::KafkaStorageError)
            }
        }
    }

    /// Expires members whose session ended and ends overdue rebalances;
    /// the broker calls it every 100 ms or so.
    pub fn tick(&self, now: Instant) {
        let mut c = self.shared.coordinator.lock();
        c.tick(now);
        if let Some(store) = self.store() {
            let gone = c.sweep(now, |g| store.read(|o| o.groups.contains_key(g)));
            if !gone.is_empty() {
                // Written with the next start; a group without offsets that
                // comes back later is a new group.
                self.shared
                    .starts
                    .remove(|g, _| gone.iter().any(|x| x == g));
            }
        }
    }

    /// The size of the offsets log in bytes (0 while loading).
    pub fn offsets_log_bytes(&self) -> u64 {
        self.store().map_or(0, |s| s.log_bytes())
    }

    pub(crate) fn coordinator(&self) -> MutexGuard<'_, Coordinator> {
        self.shared.coordinator.lock()
    }
}

/// The topics of a consumer's subscription, read from its JoinGroup
/// metadata (ConsumerProtocolSubscription, every version: a version, then
/// the topic names; what follows is ignored); `None` when it is not that.
/// Bounds are checked at each step: the bytes came from a client.
fn subscribed_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut at = 2usize; // the version
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let end = at.checked_add(n)?;
        let out = metadata.get(*at..end)?;
        *at = end;
        Some(out)
    };
    let count = i32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?);
    let count = usize::try_from(count).ok()?;
    let mut topics = Vec::new();
    for _ in 0..count {
        let len = i16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?);
        let name = take(&mut at, usize::try_from(len).ok()?)?;
        topics.push(String::from_utf8(name.to_vec()).ok()?);
    }
    Some(topics)
}

#[cfg(test)]
mod subscription_tests {
    use super::subscribed_topics;

    #[test]
    fn a_subscription_is_read_and_lying_lengths_are_not() {
        // Version 1, topics "a" and "orders", then user data.
        let mut m = vec![0, 1, 0, 0, 0, 2, 0, 1, b'a', 0, 6];
        m.extend_from_slice(b"orders");
        m.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            subscribed_topics(&m),
            Some(vec!["a".to_owned(), "orders".to_owned()])
        );
        // A count or a length past the end, negative ones, and nothing.
        assert_eq!(subscribed_topics(&[0, 1, 0x7f, 0xff, 0xff, 0xff]), None);
        assert_eq!(
            subscribed_topics(&[0, 1, 0, 0, 0, 1, 0x7f, 0xff, b'a']),
            None
        );
        assert_eq!(subscribed_topics(&[0, 1, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subscribed_topics(&[]), None);
    }
}
