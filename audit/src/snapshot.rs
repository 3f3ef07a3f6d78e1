//! The agent's evaluated view of the books, as served by its API.
//!
//! These types are the JSON shapes of `GET /api/v1/topics`, `/buckets`,
//! `/groups`, `/sources` and the `/api/v1/stream` feed. They live here, not in
//! the agent, because the dashboard and the alert rules read them too.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::wire::{GroupMetadata, TopicMetadata};

/// Where a (topic, tier, bucket) stands in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketStatus {
    /// The bucket is current, or within the grace period after it ended.
    Open,
    /// The tier counted exactly what the reference counted.
    Complete,
    /// A group that lost nothing but has not consumed everything yet: lag, not loss.
    Pending,
    /// Records are missing.
    Incomplete,
    /// The tier counted more than the reference: duplicates.
    Excess,
    /// Was pending or incomplete when grace ended, and complete later.
    Late,
}

impl BucketStatus {
    /// Every status, in a fixed order.
    pub const ALL: [BucketStatus; 6] = [
        BucketStatus::Open,
        BucketStatus::Complete,
        BucketStatus::Pending,
        BucketStatus::Incomplete,
        BucketStatus::Excess,
        BucketStatus::Late,
    ];

    /// The status as its lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            BucketStatus::Open => "open",
            BucketStatus::Complete => "complete",
            BucketStatus::Pending => "pending",
            BucketStatus::Incomplete => "incomplete",
            BucketStatus::Excess => "excess",
            BucketStatus::Late => "late",
        }
    }

    /// How bad the status is, for "worst of": complete and late are good.
    pub fn severity(self) -> u8 {
        match self {
            BucketStatus::Complete | BucketStatus::Late => 0,
            BucketStatus::Open => 1,
            BucketStatus::Pending => 2,
            BucketStatus::Excess => 3,
            BucketStatus::Incomplete => 4,
        }
    }
}

impl fmt::Display for BucketStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of one consumer group on one partition, after Burrow's model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionStatus {
    /// Consuming, or caught up.
    Ok,
    /// Consuming, but lag grew over the whole window.
    Warn,
    /// Stopped committing while lag is above zero.
    Stop,
    /// Committing, but the offset does not move while lag is above zero.
    Stall,
    /// The committed offset went backwards.
    Rewind,
}

impl PartitionStatus {
    /// Every status, in a fixed order.
    pub const ALL: [PartitionStatus; 5] = [
        PartitionStatus::Ok,
        PartitionStatus::Warn,
        PartitionStatus::Stop,
        PartitionStatus::Stall,
        PartitionStatus::Rewind,
    ];

    /// The status as its lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionStatus::Ok => "ok",
            PartitionStatus::Warn => "warn",
            PartitionStatus::Stop => "stop",
            PartitionStatus::Stall => "stall",
            PartitionStatus::Rewind => "rewind",
        }
    }
}

impl fmt::Display for PartitionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of a consumer group: the worst of its partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupStatus {
    /// Every partition is ok.
    Ok,
    /// At least one partition warns, none is in error.
    Warn,
    /// At least one partition is stopped, stalled or rewound.
    Err,
}

impl GroupStatus {
    /// Every status, in a fixed order.
    pub const ALL: [GroupStatus; 3] = [GroupStatus::Ok, GroupStatus::Warn, GroupStatus::Err];

    /// The status as its lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Ok => "ok",
            GroupStatus::Warn => "warn",
            GroupStatus::Err => "err",
        }
    }
}

impl From<PartitionStatus> for GroupStatus {
    fn from(p: PartitionStatus) -> Self {
        match p {
            PartitionStatus::Ok => GroupStatus::Ok,
            PartitionStatus::Warn => GroupStatus::Warn,
            PartitionStatus::Stop | PartitionStatus::Stall | PartitionStatus::Rewind => {
                GroupStatus::Err
            }
        }
    }
}

impl fmt::Display for GroupStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One commit of a group on a partition, as kept in its window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitPoint {
    /// The committed offset.
    pub offset: i64,
    /// The lag in records when the commit was seen.
    pub lag: u64,
    /// When the commit was made.
    pub at_ms: i64,
}

/// The evaluated books and health, published once per tick.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When this snapshot was evaluated.
    pub at_ms: i64,
    /// The bucket width.
    pub width_ms: u64,
    /// The grace period after a bucket ends before it is judged.
    pub grace_ms: u64,
    /// How far back the window of gauges and buckets reaches.
    pub window_ms: u64,
    /// Per (cluster, topic): the books of every tier. Shared: an evaluation
    /// in which the topic did not change hands on the same books instead of
    /// a copy (serialised as plain objects; `Arc::make_mut` to change them).
    pub topics: Vec<std::sync::Arc<TopicBooks>>,
    /// Per (cluster, topic): the buckets of the window.
    pub buckets: Vec<TopicBuckets>,
    /// Per (cluster, group): lag and health.
    /// Shared: a group that did not change since the last evaluation is
    /// the same allocation (serialised as a plain object).
    pub groups: Vec<std::sync::Arc<GroupHealth>>,
    /// The emitters that have spoken to the agent.
    pub sources: Vec<SourceInfo>,
    /// Alerts pending or firing, and recently resolved.
    #[serde(default)]
    pub alerts: Vec<AlertInfo>,
    /// Per (cluster, topic, tier): end-to-end latency.
    #[serde(default)]
    pub latency: Vec<LatencyBooks>,
    /// Per (cluster, source): the cluster metadata and group states the
    /// source (a collector) last reported.
    #[serde(default)]
    pub clusters: Vec<ClusterInfo>,
    /// What changed since the evaluation before, as the evaluation knows it:
    /// a hint for the feed's delta ([`crate::feed::Delta::with_changes`]),
    /// not part of the snapshot's value, and never sent.
    #[serde(skip)]
    pub changes: crate::feed::Changes,
}

/// A cluster's metadata and its groups' state, as one source last reported
/// them in a `cluster` message (`GET /api/v1/clusters`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The cluster.
    pub cluster: String,
    /// The source that reported it.
    pub source: String,
    /// When the source read the metadata (its clock), epoch ms.
    pub at_ms: i64,
    /// When the agent received it (its clock), epoch ms.
    pub received_ms: i64,
    /// Live brokers.
    pub brokers: u32,
    /// Partitions over all topics.
    pub partitions: u64,
    /// Partitions without a leader.
    pub offline_partitions: u64,
    /// Partitions with fewer replicas in sync than assigned.
    pub under_replicated_partitions: u64,
    /// The topics, each with its partitions.
    pub topics: Vec<TopicMetadata>,
    /// The consumer groups, with their state and members.
    pub groups: Vec<GroupMetadata>,
}

/// The end-to-end latency of one (cluster, topic, tier), summed over its
/// sources: from a record's timestamp to when the tier counted it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyBooks {
    /// The cluster.
    pub cluster: String,
    /// The topic.
    pub topic: String,
    /// The tier (`broker`, `group:billing`, …).
    pub tier: String,
    /// Upper bounds in milliseconds, strictly ascending.
    pub bounds_ms: Vec<u64>,
    /// `counts[i]`: observations of at most `bounds_ms[i]` (cumulative).
    pub counts: Vec<u64>,
    /// All observations.
    pub count: u64,
    /// The sum of all observations, in milliseconds.
    pub sum_ms: u64,
}

/// The books of one topic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopicBooks {
    /// The cluster.
    pub cluster: String,
    /// The topic.
    pub topic: String,
    /// The tier every other tier is compared with (`broker` when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Per tier name (`broker`, `group:billing`, …).
    pub tiers: BTreeMap<String, TierBooks>,
}

/// The books of one tier of one topic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TierBooks {
    /// Records counted by this tier, summed over sources and partitions (cumulative).
    pub records: u64,
    /// Bytes counted by this tier (cumulative).
    pub bytes: u64,
    /// Records counted over the reference's, in closed buckets of the window (1.0 with nothing to compare).
    pub completeness: f64,
    /// Lost records in closed buckets of the window.
    pub missing: u64,
    /// Duplicate records in closed buckets of the window.
    pub excess: u64,
    /// For group tiers: reference records not yet consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// For group tiers: records deleted by retention before the group consumed them (cumulative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired: Option<u64>,
    /// For group tiers: records before the group's first commit (cumulative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
    /// Records without a timestamp (cumulative).
    pub no_timestamp: u64,
    /// For the `broker` tier: records of aborted transactions, counted apart
    /// from `records` (cumulative).
    #[serde(default)]
    pub aborted: u64,
    /// Buckets of the window per status.
    pub buckets: BTreeMap<BucketStatus, u64>,
    /// For mirror tiers: the mirror's lag (source records of closed buckets
    /// of the window not yet on the destination, and their age).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_lag: Option<MirrorLag>,
}

/// How far a mirror is behind its source topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MirrorLag {
    /// Source records of closed buckets of the window that the copy does
    /// not hold yet (pending or lost).
    pub records: u64,
    /// How old the oldest of them is: now minus the start of the oldest
    /// closed bucket the copy is short in (0 when none is).
    pub seconds: f64,
}

/// The buckets of one topic in the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopicBuckets {
    /// The cluster.
    pub cluster: String,
    /// The topic.
    pub topic: String,
    /// The bucket width.
    pub width_ms: u64,
    /// Oldest first. Shared: an evaluation in which the topic did not
    /// change hands on the same buckets instead of a copy (serialised as a
    /// plain array; `Arc::make_mut` to change them).
    pub buckets: std::sync::Arc<Vec<BucketBooks>>,
}

/// One bucket of one topic, per tier.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketBooks {
    /// The bucket's start, epoch ms.
    pub bucket: i64,
    /// Per tier name.
    pub tiers: BTreeMap<String, BucketTier>,
}

/// One tier's counts in one bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketTier {
    /// Records counted.
    pub records: u64,
    /// The bucket's status for this tier.
    pub status: BucketStatus,
    /// Lost records.
    pub missing: u64,
    /// Duplicate records.
    pub excess: u64,
    /// For group tiers: reference records not yet consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// For group tiers: records that expired before being consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired: Option<u64>,
    /// For group tiers: records before the group's first commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
    /// Records of aborted transactions in this bucket, counted apart from
    /// `records` (shown where there are any).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub aborted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Lag and health of one consumer group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupHealth {
    /// The cluster.
    pub cluster: String,
    /// The group.
    pub group: String,
    /// The worst partition's status.
    pub status: GroupStatus,
    /// Lag in records over all partitions.
    pub lag_records: u64,
    /// The largest lag in seconds of any partition.
    pub max_lag_seconds: f64,
    /// Per (topic, partition).
    /// Shared: an evaluation in which the group did not change hands on the
    /// same partitions (serialised as a plain array).
    pub partitions: std::sync::Arc<Vec<PartitionLag>>,
    /// Whether every partition's lag is stale; `lag_records` and
    /// `max_lag_seconds` count only partitions whose lag is not.
    #[serde(default)]
    pub stale: bool,
}

/// Lag and health of one group on one partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The committed offset (-1 when none).
    pub committed: i64,
    /// The log end offset.
    pub end_offset: i64,
    /// The log start offset.
    pub start_offset: i64,
    /// Lag in records.
    pub lag_records: u64,
    /// Lag in seconds: now minus the timestamp of the first unconsumed record.
    pub lag_seconds: f64,
    /// Burrow-style status.
    pub status: PartitionStatus,
    /// When the group last committed here (-1 when never).
    pub commit_at_ms: i64,
    /// The commit window, oldest first.
    #[serde(default)]
    pub commits: Vec<CommitPoint>,
    /// The last stable offset, where the source reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_offset: Option<i64>,
    /// Whether `lag_seconds` is estimated rather than read from the record
    /// at the committed offset.
    #[serde(default)]
    pub estimated: bool,
    /// Whether the lag was not refreshed for 3 lag intervals of its source
    /// (the source is down, or the cluster unreachable): the values are the
    /// last known ones, not current, and the status is judged as of then.
    #[serde(default)]
    pub stale: bool,
}

/// An emitter, as the agent knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The source id from its hello.
    pub source: String,
    /// The cluster it reports on.
    pub cluster: String,
    /// The tier kinds it reports.
    pub tier_kinds: Vec<String>,
    /// When it last sent a message.
    pub last_seen_ms: i64,
    /// Messages accepted from it, per type.
    pub messages: BTreeMap<String, u64>,
    /// Messages refused from it.
    pub errors: u64,
    /// Whether it has a session open now.
    pub connected: bool,
    /// Its `broker` and `group:` count entries refused because another source
    /// reports those tiers of the topic (`duplicate_source`, since the agent started).
    #[serde(default)]
    pub duplicate_entries: u64,
}

/// An alert as the agent shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertInfo {
    /// The rule's name.
    pub alertname: String,
    /// `pending`, `firing` or `resolved`.
    pub state: String,
    /// The rule's severity.
    pub severity: String,
    /// The alert's labels.
    pub labels: BTreeMap<String, String>,
    /// The alert's annotations, labels substituted.
    pub annotations: BTreeMap<String, String>,
    /// When it entered its current state.
    pub since_ms: i64,
    /// The value that triggered it.
    pub value: f64,
}
