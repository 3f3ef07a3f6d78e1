//! The wire messages an emitter sends to the agent, and the agent's replies.
//!
//! Every message is a JSON object with `"v": 1` and a `"type"`. Decoding is
//! strict: [`decode`] refuses anything the agent must not accept, with a
//! [`Reason`] that names the kind of fault and a detail that names the value.

use serde::{Deserialize, Serialize};
use serde_json::Number;

use crate::topic::printable;
use crate::{
    Bucket, BucketWidth, Error, Reason, Result, Tier, TierKind, validate_group, validate_topic,
};

/// The wire version this build speaks.
pub const VERSION: u64 = 1;
/// The default limit on one message's size: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// The largest count accepted: 2^53 − 1, the largest integer every JSON
/// reader keeps exactly. Anything above it is an error, not a count.
pub const MAX_COUNT: u64 = (1 << 53) - 1;
/// The largest `seq` accepted: the agent stores it as a signed 64-bit
/// integer, so anything above `i64::MAX` is refused at decode.
pub const MAX_SEQ: u64 = i64::MAX as u64;
/// How far ahead of the agent's clock a bucket is accepted at least: an
/// hour, as Kafka accepts timestamps up to an hour ahead.
pub const MIN_AHEAD_MS: u64 = 3_600_000;
/// The highest partition number accepted.
pub const MAX_PARTITION: i32 = 1_000_000;
/// The longest source id accepted.
pub const MAX_SOURCE_LEN: usize = 255;
/// The default of [`Limits::max_list_entries`]: the most names one `forget`
/// may carry per list, and the most topics, partitions (over all topics) and
/// groups one `cluster` message may describe.
pub const DEFAULT_MAX_LIST_ENTRIES: usize = 100_000;
/// The most brokers a `cluster` message may report.
pub const MAX_BROKERS: u32 = 1_000_000;
/// The most replicas a partition may have (Kafka's replication factor is an int16).
pub const MAX_REPLICAS: u32 = 32_767;
/// The most members a consumer group may report.
pub const MAX_MEMBERS: u32 = 1_000_000;
/// The most buckets one latency histogram may have.
pub const MAX_LATENCY_BOUNDS: usize = 64;
/// The upper bounds, in milliseconds, at which emitters report latency
/// histograms: from 5 ms to an hour, so that both a healthy pipeline and a
/// consumer that is hours behind land in a bucket of their own.
pub const LATENCY_BOUNDS_MS: [u64; 18] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000,
    600_000, 1_800_000, 3_600_000,
];

/// A message from an emitter to the agent.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Message {
    /// Opens a session.
    Hello(Hello),
    /// Cumulative counts.
    Counts(Counts),
    /// Lag samples.
    Lag(Lag),
    /// Cumulative latency histograms.
    Latency(Latency),
    /// This source no longer reports these groups and topics.
    Forget(Forget),
    /// The cluster's metadata and its groups' state; the latest replaces the last.
    Cluster(Cluster),
}

impl Message {
    /// The message's sequence number (`hello` has none).
    pub fn seq(&self) -> Option<u64> {
        match self {
            Message::Hello(_) => None,
            Message::Counts(c) => Some(c.seq),
            Message::Lag(l) => Some(l.seq),
            Message::Latency(l) => Some(l.seq),
            Message::Forget(f) => Some(f.seq),
            Message::Cluster(c) => Some(c.seq),
        }
    }

    /// The message's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Counts(_) => "counts",
            Message::Lag(_) => "lag",
            Message::Latency(_) => "latency",
            Message::Forget(_) => "forget",
            Message::Cluster(_) => "cluster",
        }
    }

    /// The message as JSON text, with `"v": 1`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Envelope<'a> {
            v: u64,
            #[serde(flatten)]
            msg: &'a Message,
        }
        // Serializing these plain structs cannot fail.
        serde_json::to_string(&Envelope {
            v: VERSION,
            msg: self,
        })
        .unwrap_or_default()
    }
}

/// Opens a session: who is sending, for which cluster, and at which width.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// A stable id of the emitter, e.g. `broker-local-1`.
    pub source: String,
    /// The Kafka cluster the counts are about.
    pub cluster: String,
    /// The kinds of tier this source reports.
    pub tier_kinds: Vec<TierKind>,
    /// The emitter's bucket width; it must equal the agent's.
    pub bucket_width_ms: u64,
    /// When the emitter process started; orders sessions of one source.
    pub started_at_ms: i64,
}

/// Cumulative counts: each entry replaces the last value for its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Sequence number within the session, increasing.
    pub seq: u64,
    /// The counts.
    pub counts: Vec<CountEntry>,
}

/// The count values of one (tier, topic, partition, bucket) cell: the one type
/// that the books' wire entries, the emitter, the agent's ledger and its store
/// share. Which values a tier fills is its own: `records`, `bytes`,
/// `no_timestamp` and `aborted` for `broker`, `records`, `expired` and
/// `skipped` for `group:` tiers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct CellCounts {
    /// Records counted.
    pub records: u64,
    /// Bytes counted.
    pub bytes: u64,
    /// Records that had no timestamp (bucketed by append time, or read time
    /// for a collector).
    pub no_timestamp: u64,
    /// For `group:` tiers: records deleted by retention before the group consumed them.
    pub expired: u64,
    /// For `group:` tiers: records before the group's first commit.
    pub skipped: u64,
    /// For the `broker` tier: records of aborted transactions, which are not
    /// records of the tier and are counted apart.
    pub aborted: u64,
}

impl CellCounts {
    /// Every value with its wire name.
    pub fn named(&self) -> [(&'static str, u64); 6] {
        [
            ("records", self.records),
            ("bytes", self.bytes),
            ("no_timestamp", self.no_timestamp),
            ("expired", self.expired),
            ("skipped", self.skipped),
            ("aborted", self.aborted),
        ]
    }

    /// The wire's rule for the values: each a count from 0 to [`MAX_COUNT`].
    pub fn check(&self) -> Result<()> {
        match self.named().into_iter().find(|(_, v)| *v > MAX_COUNT) {
            None => Ok(()),
            Some((name, v)) => Err(Error::new(
                Reason::BadCount,
                format!("{name} \"{v}\" is not a count: expected an integer from 0 to {MAX_COUNT}"),
            )),
        }
    }

    /// Adds `other` to these (as sums do: wrapping).
    pub fn add(&mut self, other: &CellCounts) {
        self.swap(&CellCounts::default(), other);
    }

    /// Replaces `old` by `new` in these sums (wrapping: a sum that held
    /// `old` never wraps).
    pub fn swap(&mut self, old: &CellCounts, new: &CellCounts) {
        fn step(sum: &mut u64, old: u64, new: u64) {
            *sum = sum.wrapping_sub(old).wrapping_add(new);
        }
        step(&mut self.records, old.records, new.records);
        step(&mut self.bytes, old.bytes, new.bytes);
        step(&mut self.no_timestamp, old.no_timestamp, new.no_timestamp);
        step(&mut self.expired, old.expired, new.expired);
        step(&mut self.skipped, old.skipped, new.skipped);
        step(&mut self.aborted, old.aborted, new.aborted);
    }
}

/// The cumulative count of one (tier, topic, partition, bucket).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CountEntry {
    /// The tier that counted.
    pub tier: Tier,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The event-time bucket.
    pub bucket: Bucket,
    /// The values.
    #[serde(flatten)]
    pub counts: CellCounts,
}

impl CountEntry {
    /// The agent's rules for one count entry, stated once: the decoder
    /// applies them to what arrives, and an emitter to what it is about to
    /// send, so that one bad entry is dropped there rather than a whole
    /// message refused here.
    pub fn check(&self, width: BucketWidth) -> Result<()> {
        validate_topic(&self.topic)?;
        if let Tier::Group(name) | Tier::Consumer(name) = &self.tier {
            validate_group(name).map_err(|e| {
                Error::new(e.reason, format!("tier \"{}\": {}", self.tier, e.detail))
            })?;
        }
        width.bucket_at(self.bucket.start_ms())?;
        if !(0..=MAX_PARTITION).contains(&self.partition) {
            return Err(Error::new(
                Reason::BadField,
                format!(
                    "partition \"{}\" is out of range: expected 0 to {MAX_PARTITION}",
                    self.partition
                ),
            ));
        }
        self.counts.check()
    }
}

/// Consumer lag samples.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lag {
    /// Sequence number within the session, increasing.
    pub seq: u64,
    /// When the samples were taken.
    pub at_ms: i64,
    /// One sample per (group, topic, partition).
    pub partitions: Vec<LagSample>,
}

/// The lag of one group on one partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LagSample {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed offset (-1 when none).
    pub committed: i64,
    /// The log end offset.
    pub end_offset: i64,
    /// The log start offset.
    pub start_offset: i64,
    /// Records between the committed offset and the end.
    pub lag_records: u64,
    /// Now minus the timestamp of the first unconsumed record; 0 when caught up.
    pub lag_seconds: f64,
    /// When the group last committed on this partition (-1 when never).
    pub commit_at_ms: i64,
    /// The partition's last stable offset, where the source knows it and it
    /// matters (`read_committed` readers of a transactional topic). On the
    /// wire only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_offset: Option<i64>,
    /// Whether `lag_seconds` is estimated from offsets and timestamps seen
    /// before, not read from the record at the committed offset (which was
    /// deleted, compacted away or not readable). On the wire only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

/// Cumulative latency histograms: each replaces the last one for its
/// (tier, topic).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Sequence number within the session, increasing.
    pub seq: u64,
    /// One histogram per (tier, topic).
    pub histograms: Vec<LatencyHistogram>,
}

/// The end-to-end latency of one (tier, topic) since the emitter started:
/// how long after its timestamp each record was counted by the tier.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// The tier that counted.
    pub tier: Tier,
    /// The topic.
    pub topic: String,
    /// Upper bounds in milliseconds, strictly ascending.
    pub bounds_ms: Vec<u64>,
    /// `counts[i]`: observations of at most `bounds_ms[i]` (cumulative, as
    /// Prometheus buckets are).
    pub counts: Vec<u64>,
    /// All observations, including those above the last bound.
    pub count: u64,
    /// The sum of all observations, in milliseconds.
    pub sum_ms: u64,
}

/// `{"v":1,"type":"forget","seq":N,"groups":[…],"topics":[…]}`: the source
/// no longer reports these consumer groups and topics (they were deleted, or
/// a group stayed empty too long). The agent drops what this source reported
/// for them, with no alarm. Either list may be empty or absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Forget {
    /// Sequence number within the session, increasing.
    pub seq: u64,
    /// Consumer groups: their lag and status on every topic.
    pub groups: Vec<String>,
    /// Topics: every group's lag on them, and the topic's cluster metadata.
    pub topics: Vec<String>,
}

impl Forget {
    /// Checks the names as the agent does: every group by
    /// [`validate_group`], every topic by [`validate_topic`], and each list
    /// at most `max_list_entries` long.
    pub fn check(&self, max_list_entries: usize) -> Result<()> {
        check_list("groups", self.groups.len(), max_list_entries)?;
        check_list("topics", self.topics.len(), max_list_entries)?;
        self.groups.iter().try_for_each(|g| validate_group(g))?;
        self.topics.iter().try_for_each(|t| validate_topic(t))
    }
}

/// A `cluster` message: the [`ClusterState`] with its `seq`.
///
/// ```text
/// {"v":1,"type":"cluster","seq":N,"at_ms":T,"brokers":3,
///  "topics":[{"topic":"orders","partitions":[
///      {"partition":0,"leader":1,"replicas":3,"in_sync_replicas":3}]}],
///  "groups":[{"group":"billing","state":"Stable","members":2}]}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// Sequence number within the session, increasing.
    pub seq: u64,
    /// The state.
    #[serde(flatten)]
    pub state: ClusterState,
}

/// What a collector sees of a cluster at one moment: its brokers, every
/// audited topic's partitions with their leader and replicas, and every
/// watched consumer group's state and members. The latest one a source sends
/// replaces the last one whole: a topic or group absent from it is gone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterState {
    /// When the metadata was read, epoch ms.
    pub at_ms: i64,
    /// Live brokers in the cluster (Metadata's broker list).
    pub brokers: u32,
    /// The topics, each with its partitions.
    pub topics: Vec<TopicMetadata>,
    /// The consumer groups.
    pub groups: Vec<GroupMetadata>,
}

/// One topic of a [`ClusterState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetadata {
    /// The topic.
    pub topic: String,
    /// Its partitions, each once.
    pub partitions: Vec<PartitionMetadata>,
}

/// One partition of a [`TopicMetadata`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMetadata {
    /// The partition.
    pub partition: i32,
    /// The leader's broker id; -1 when the partition has no leader (offline).
    pub leader: i32,
    /// Replicas assigned (the replication factor).
    pub replicas: u32,
    /// Replicas in sync; fewer than `replicas` is under-replicated.
    pub in_sync_replicas: u32,
}

impl PartitionMetadata {
    /// Whether the partition has no leader.
    pub fn is_offline(&self) -> bool {
        self.leader < 0
    }

    /// Whether fewer replicas are in sync than are assigned.
    pub fn is_under_replicated(&self) -> bool {
        self.in_sync_replicas < self.replicas
    }
}

/// One consumer group of a [`ClusterState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMetadata {
    /// The group.
    pub group: String,
    /// Its state, as Kafka names it.
    pub state: GroupState,
    /// Members now in the group.
    pub members: u32,
}

/// A consumer group's state, as Kafka's ListGroups and DescribeGroups name
/// it (classic and KIP-848 groups). A name Kafka may add later reads as
/// [`GroupState::Unknown`], so that a newer cluster never gets a message refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String")]
pub enum GroupState {
    /// A state tally does not know, or none reported.
    Unknown,
    /// Members are joining (classic protocol).
    PreparingRebalance,
    /// Waiting for the leader's assignment (classic; `AwaitingSync` before Kafka 2.4).
    CompletingRebalance,
    /// Members consume.
    Stable,
    /// The group is being removed.
    Dead,
    /// No members; offsets may remain.
    Empty,
    /// KIP-848: a new assignment is being computed.
    Assigning,
    /// KIP-848: members move to a new assignment.
    Reconciling,
}

impl GroupState {
    /// Every state, in a fixed order (the one-hot series of `tally_consumer_group_state`).
    pub const ALL: [GroupState; 8] = [
        GroupState::Unknown,
        GroupState::PreparingRebalance,
        GroupState::CompletingRebalance,
        GroupState::Stable,
        GroupState::Dead,
        GroupState::Empty,
        GroupState::Assigning,
        GroupState::Reconciling,
    ];

    /// The state as Kafka names it, e.g. `"PreparingRebalance"`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Unknown => "Unknown",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
            GroupState::Empty => "Empty",
            GroupState::Assigning => "Assigning",
            GroupState::Reconciling => "Reconciling",
        }
    }

    /// Reads a state name as Kafka sends it (any case; `AwaitingSync` is
    /// the old name of `CompletingRebalance`); anything else is `Unknown`.
    pub fn from_kafka(name: &str) -> GroupState {
        if name.eq_ignore_ascii_case("AwaitingSync") {
            return GroupState::CompletingRebalance;
        }
        GroupState::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
            .unwrap_or(GroupState::Unknown)
    }
}

impl From<String> for GroupState {
    fn from(name: String) -> Self {
        GroupState::from_kafka(&name)
    }
}

impl std::fmt::Display for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ClusterState {
    /// Every partition over all topics.
    pub fn partition_count(&self) -> usize {
        self.topics.iter().map(|t| t.partitions.len()).sum()
    }

    /// Checks the state as the agent does: names by Kafka's rules, each topic,
    /// partition of a topic and group at most once, numbers in range, and at
    /// most `max_list_entries` topics, partitions (over all topics) and groups.
    pub fn check(&self, max_list_entries: usize) -> Result<()> {
        if self.at_ms < 0 {
            return Err(Error::new(
                Reason::BadField,
                format!(
                    "at_ms \"{}\" is not accepted: expected epoch milliseconds, 0 or more",
                    self.at_ms
                ),
            ));
        }
        if self.brokers > MAX_BROKERS {
            return Err(Error::new(
                Reason::BadField,
                format!(
                    "brokers \"{}\" is out of range: expected 0 to {MAX_BROKERS}",
                    self.brokers
                ),
            ));
        }
        check_list("topics", self.topics.len(), max_list_entries)?;
        check_list("partitions", self.partition_count(), max_list_entries)?;
        check_list("groups", self.groups.len(), max_list_entries)?;
        let mut topics = std::collections::HashSet::with_capacity(self.topics.len());
        for t in &self.topics {
            validate_topic(&t.topic)?;
            if !topics.insert(t.topic.as_str()) {
                return Err(Error::new(
                    Reason::BadField,
                    format!(
                        "topic \"{}\" is listed twice: expected each topic once",
                        t.topic
                    ),
                ));
            }
            let mut seen = std::collections::HashSet::with_capacity(t.partitions.len());
            for p in &t.partitions {
                let at = |what: String| {
                    Error::new(
                        Reason::BadField,
                        format!("partition {} of \"{}\": {what}", p.partition, t.topic),
                    )
                };
                if !(0..=MAX_PARTITION).contains(&p.partition) {
                    return Err(Error::new(
                        Reason::BadField,
                        format!(
                            "partition \"{}\" of \"{}\" is out of range: expected 0 to {MAX_PARTITION}",
                            p.partition, t.topic
                        ),
                    ));
                }
                if !seen.insert(p.partition) {
                    return Err(at("listed twice: expected each partition once".into()));
                }
                if p.leader < -1 {
                    return Err(at(format!(
                        "leader \"{}\" is not accepted: expected a broker id, or -1 for none",
                        p.leader
                    )));
                }
                if p.replicas > MAX_REPLICAS {
                    return Err(at(format!(
                        "replicas \"{}\" is out of range: expected 0 to {MAX_REPLICAS}",
                        p.replicas
                    )));
                }
                if p.in_sync_replicas > p.replicas {
                    return Err(at(format!(
                        "in_sync_replicas \"{}\" is over replicas \"{}\": expected at most the replicas",
                        p.in_sync_replicas, p.replicas
                    )));
                }
            }
        }
        let mut groups = std::collections::HashSet::with_capacity(self.groups.len());
        for g in &self.groups {
            validate_group(&g.group)?;
            if !groups.insert(g.group.as_str()) {
                return Err(Error::new(
                    Reason::BadField,
                    format!(
                        "group \"{}\" is listed twice: expected each group once",
                        printable(&g.group)
                    ),
                ));
            }
            if g.members > MAX_MEMBERS {
                return Err(Error::new(
                    Reason::BadField,
                    format!(
                        "members \"{}\" of group \"{}\" is out of range: expected 0 to {MAX_MEMBERS}",
                        g.members,
                        printable(&g.group)
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn check_list(what: &str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::new(
            Reason::BadField,
            format!("\"{len}\" {what} are too many: expected at most {max} in one message"),
        ));
    }
    Ok(())
}

/// The agent's answer to one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Reply {
    /// The answer to a `hello`.
    Welcome {
        /// The agent's bucket width.
        bucket_width_ms: u64,
        /// The oldest bucket start the agent accepts now (absent from agents
        /// that do not say: then every bucket is sent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accept_from_ms: Option<i64>,
        /// The newest bucket start the agent accepts now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accept_to_ms: Option<i64>,
    },
    /// The message with this `seq` was applied (and stored).
    Ack {
        /// The acknowledged sequence number.
        seq: u64,
    },
    /// The message was refused.
    Error {
        /// The refused message's `seq`, where it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// What was wrong, for a person.
        error: String,
        /// The category (see [`Reason`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl Reply {
    /// An error reply for `err`, about the message with `seq`.
    pub fn error(seq: Option<u64>, err: &Error) -> Reply {
        Reply::Error {
            seq,
            error: err.detail.clone(),
            reason: Some(err.reason.as_str().to_owned()),
        }
    }

    /// The reply as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The buckets the agent accepts at one moment: from now − retention (the
/// oldest bucket it keeps) to now + max(grace, 1 h). An entry outside it is
/// dropped on its own, as `bucket_out_of_range`; emitters filter by it before
/// sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptRange {
    /// The oldest bucket start accepted.
    pub from_ms: i64,
    /// The newest bucket start accepted.
    pub to_ms: i64,
}

impl AcceptRange {
    /// The range at `now_ms` for an agent keeping `retention_ms` with a grace
    /// period of `grace_ms`.
    pub fn at(now_ms: i64, width: BucketWidth, retention_ms: u64, grace_ms: u64) -> Self {
        let back = i64::try_from(retention_ms).unwrap_or(i64::MAX);
        let ahead = i64::try_from(grace_ms.max(MIN_AHEAD_MS)).unwrap_or(i64::MAX);
        AcceptRange {
            from_ms: width.bucket_of(now_ms.saturating_sub(back)).start_ms(),
            to_ms: now_ms.saturating_add(ahead),
        }
    }

    /// Whether `bucket` is accepted.
    pub fn contains(&self, bucket: Bucket) -> bool {
        (self.from_ms..=self.to_ms).contains(&bucket.start_ms())
    }

    /// The same range `by_ms` later (an emitter moves the range it was given
    /// along its own clock).
    pub fn shifted(&self, by_ms: i64) -> Self {
        AcceptRange {
            from_ms: self.from_ms.saturating_add(by_ms),
            to_ms: self.to_ms.saturating_add(by_ms),
        }
    }

    /// The range a `welcome` carries, where it carries one.
    pub fn of_welcome(reply: &Reply) -> Option<Self> {
        match reply {
            Reply::Welcome {
                accept_from_ms: Some(from_ms),
                accept_to_ms: Some(to_ms),
                ..
            } if from_ms <= to_ms => Some(AcceptRange {
                from_ms: *from_ms,
                to_ms: *to_ms,
            }),
            _ => None,
        }
    }
}

/// What [`decode`] checks a message against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The agent's bucket width.
    pub width: BucketWidth,
    /// The largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// The most entries of the lists of `forget` (groups, topics) and
    /// `cluster` messages (topics, partitions over all topics, groups).
    pub max_list_entries: usize,
}

impl Limits {
    /// Limits with the given width and the default size and list limits.
    pub fn new(width: BucketWidth) -> Self {
        Limits {
            width,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_list_entries: DEFAULT_MAX_LIST_ENTRIES,
        }
    }
}

/// A refused message: the error and, where it could be read, its `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The refused message's `seq`, where it could be read.
    pub seq: Option<u64>,
    /// Why it was refused.
    pub error: Error,
}

impl Refused {
    /// The reply that tells the emitter about this refusal.
    pub fn reply(&self) -> Reply {
        Reply::error(self.seq, &self.error)
    }
}

#[derive(Deserialize)]
struct Head {
    v: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    seq: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawCounts {
    seq: u64,
    counts: Vec<RawCountEntry>,
}

#[derive(Deserialize)]
struct RawCountEntry {
    tier: String,
    topic: String,
    partition: i64,
    bucket: i64,
    records: Number,
    #[serde(default)]
    bytes: Option<Number>,
    #[serde(default)]
    no_timestamp: Option<Number>,
    #[serde(default)]
    expired: Option<Number>,
    #[serde(default)]
    skipped: Option<Number>,
    #[serde(default)]
    aborted: Option<Number>,
}

#[derive(Deserialize)]
struct RawLag {
    seq: u64,
    at_ms: i64,
    partitions: Vec<RawLagSample>,
}

#[derive(Deserialize)]
struct RawLagSample {
    group: String,
    topic: String,
    partition: i64,
    committed: i64,
    end_offset: i64,
    start_offset: i64,
    lag_records: Number,
    lag_seconds: f64,
    #[serde(default = "minus_one")]
    commit_at_ms: i64,
    #[serde(default)]
    stable_offset: Option<i64>,
    #[serde(default)]
    estimated: Option<bool>,
}

#[derive(Deserialize)]
struct RawForget {
    seq: u64,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    topics: Vec<String>,
}

#[derive(Deserialize)]
struct RawCluster {
    seq: u64,
    at_ms: i64,
    brokers: i64,
    #[serde(default)]
    topics: Vec<RawTopicMetadata>,
    #[serde(default)]
    groups: Vec<RawGroupMetadata>,
}

#[derive(Deserialize)]
struct RawTopicMetadata {
    topic: String,
    partitions: Vec<RawPartitionMetadata>,
}

#[derive(Deserialize)]
struct RawPartitionMetadata {
    partition: i64,
    leader: i64,
    replicas: i64,
    in_sync_replicas: i64,
}

#[derive(Deserialize)]
struct RawGroupMetadata {
    group: String,
    #[serde(default)]
    state: Option<GroupState>,
    members: i64,
}

#[derive(Deserialize)]
struct RawLatency {
    seq: u64,
    histograms: Vec<RawLatencyHistogram>,
}

#[derive(Deserialize)]
struct RawLatencyHistogram {
    tier: String,
    topic: String,
    bounds_ms: Vec<Number>,
    counts: Vec<Number>,
    count: Number,
    sum_ms: Number,
}

fn minus_one() -> i64 {
    -1
}

fn malformed(e: serde_json::Error) -> Error {
    Error::new(Reason::Malformed, format!("malformed message: {e}"))
}

/// Decodes and checks one message.
///
/// A `hello` whose width differs from `limits.width` is refused with
/// [`Reason::WidthMismatch`]; every bucket must be aligned to the width.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, Refused> {
    if bytes.len() > limits.max_message_bytes {
        return Err(Refused {
            seq: None,
            error: Error::new(
                Reason::Oversize,
                format!(
                    "message of {} bytes is over the limit of {} bytes",
                    bytes.len(),
                    limits.max_message_bytes
                ),
            ),
        });
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|e| Refused {
        seq: None,
        error: malformed(e),
    })?;
    let seq = head.seq.as_ref().and_then(serde_json::Value::as_u64);
    let refuse = |error: Error| Refused { seq, error };
    match &head.v {
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => {
            return Err(refuse(Error::new(
                Reason::Version,
                format!("wire version \"{v}\" is not supported: expected {VERSION}"),
            )));
        }
        None => {
            return Err(refuse(Error::new(
                Reason::Version,
                format!("message has no \"v\": expected \"v\": {VERSION}"),
            )));
        }
    }
    let kind = head.kind.as_deref().unwrap_or("");
    match kind {
        "hello" => {
            let hello: Hello = serde_json::from_slice(bytes).map_err(|e| refuse(malformed(e)))?;
            check_hello(&hello, limits.width).map_err(refuse)?;
            Ok(Message::Hello(hello))
        }
        "counts" => {
            let raw: RawCounts = serde_json::from_slice(bytes).map_err(|e| refuse(malformed(e)))?;
            check_seq(raw.seq).map_err(refuse)?;
            let counts = raw
                .counts
                .into_iter()
                .map(|e| check_count(e, limits.width))
                .collect::<Result<Vec<_>>>()
                .map_err(refuse)?;
            Ok(Message::Counts(Counts {
                seq: raw.seq,
                counts,
            }))
        }
        "lag" => {
            let raw: RawLag = serde_json::from_slice(bytes).map_err(|e| refuse(malformed(e)))?;
            check_seq(raw.seq).map_err(refuse)?;
            let partitions = raw
                .partitions
                .into_iter()
                .map(check_lag)
                .collect::<Result<Vec<_>>>()
                .map_err(refuse)?;
            Ok(Message::Lag(Lag {
                seq: raw.seq,
                at_ms: raw.at_ms,
                partitions,
            }))
        }
        "latency" => {
            let raw: RawLatency =
                serde_json::from_slice(bytes).map_err(|e| refuse(malformed(e)))?;
            check_seq(raw.seq).map_err(refuse)?;
            let histograms = raw
                .histograms
                .into_iter()
                .map(check_latency)
                .collect::<Result<Vec<_>>>()
                .map_err(refuse)?;
            Ok(Message::Latency(Latency {
                seq: raw.seq,
                histograms,
            }))
        }
        "forget" => {
            let raw: RawForget = serde_json::from_slice(bytes).map_err(|e| refuse(malformed(e)))?;
            check_seq(raw.seq).map_err(refuse)?;
            let forget = Forget {
                seq: raw.seq,
                groups: raw.groups,
                topics: raw.topics,
            };
            forget.check(limits.max_list_entries).map_err(refuse)?;
            Ok(Message::Forget(forget))
        }
        "cluster" => {
            let raw: RawCluster =
                serde_json::from_slice(bytes).map_err(|e| refuse(malformed(e)))?;
            check_seq(raw.seq).map_err(refuse)?;
            let state =
                cluster_state(raw.at_ms, raw.brokers, raw.topics, raw.groups).map_err(refuse)?;
            state.check(limits.max_list_entries).map_err(refuse)?;
            Ok(Message::Cluster(Cluster {
                seq: raw.seq,
                state,
            }))
        }
        other => Err(refuse(Error::new(
            Reason::UnknownType,
            format!(
                "message type \"{}\" is not known: expected hello, counts, lag, latency, forget or cluster",
                printable(other)
            ),
        ))),
    }
}

/// A `seq` the agent can store: SQLite integers are signed 64-bit.
fn check_seq(seq: u64) -> Result<()> {
    if seq > MAX_SEQ {
        return Err(Error::new(
            Reason::BadField,
            format!("seq \"{seq}\" is out of range: expected an integer from 0 to {MAX_SEQ}"),
        ));
    }
    Ok(())
}

fn check_hello(h: &Hello, width: BucketWidth) -> Result<()> {
    if h.source.is_empty()
        || h.source.len() > MAX_SOURCE_LEN
        || h.source.chars().any(char::is_control)
    {
        return Err(Error::new(
            Reason::BadField,
            format!(
                "source \"{}\" is not accepted: expected 1 to {MAX_SOURCE_LEN} bytes and no control characters",
                printable(&h.source)
            ),
        ));
    }
    validate_topic(&h.cluster).map_err(|_| {
        Error::new(
            Reason::BadField,
            format!(
                "cluster \"{}\" is not accepted: expected 1 to 249 characters of [a-zA-Z0-9._-]",
                printable(&h.cluster)
            ),
        )
    })?;
    if h.tier_kinds.contains(&TierKind::Mirror) {
        return Err(Error::new(
            Reason::BadField,
            "tier kind \"mirror\" is not reported by sources: the agent derives mirror tiers from its --mirror rules".to_owned(),
        ));
    }
    if h.bucket_width_ms != width.ms() {
        return Err(Error::new(
            Reason::WidthMismatch,
            format!(
                "bucket width \"{}\" ms differs from the agent's {} ms: every emitter and the agent must use one width",
                h.bucket_width_ms,
                width.ms()
            ),
        ));
    }
    Ok(())
}

/// A count as sent: an integer from 0 to [`MAX_COUNT`].
fn count(field: &str, n: Option<&Number>) -> Result<u64> {
    let Some(n) = n else { return Ok(0) };
    match n.as_u64() {
        Some(v) if v <= MAX_COUNT => Ok(v),
        _ => Err(Error::new(
            Reason::BadCount,
            format!("{field} \"{n}\" is not a count: expected an integer from 0 to {MAX_COUNT}"),
        )),
    }
}

fn partition(p: i64) -> Result<i32> {
    if (0..=i64::from(MAX_PARTITION)).contains(&p) {
        Ok(p as i32)
    } else {
        Err(Error::new(
            Reason::BadField,
            format!("partition \"{p}\" is out of range: expected 0 to {MAX_PARTITION}"),
        ))
    }
}

fn check_count(e: RawCountEntry, width: BucketWidth) -> Result<CountEntry> {
    let tier: Tier = e.tier.parse()?;
    validate_topic(&e.topic)?;
    let entry = CountEntry {
        partition: partition(e.partition)?,
        bucket: width.bucket_at(e.bucket)?,
        counts: CellCounts {
            records: count("records", Some(&e.records))?,
            bytes: count("bytes", e.bytes.as_ref())?,
            no_timestamp: count("no_timestamp", e.no_timestamp.as_ref())?,
            expired: count("expired", e.expired.as_ref())?,
            skipped: count("skipped", e.skipped.as_ref())?,
            aborted: count("aborted", e.aborted.as_ref())?,
        },
        tier,
        topic: e.topic,
    };
    entry.check(width)?;
    Ok(entry)
}

fn check_lag(s: RawLagSample) -> Result<LagSample> {
    validate_group(&s.group)?;
    validate_topic(&s.topic)?;
    for (name, v) in [
        ("committed", s.committed),
        ("end_offset", s.end_offset),
        ("start_offset", s.start_offset),
    ] {
        if v < -1 {
            return Err(Error::new(
                Reason::BadField,
                format!("{name} \"{v}\" is not an offset: expected -1 or more"),
            ));
        }
    }
    if !s.lag_seconds.is_finite() || s.lag_seconds < 0.0 || s.lag_seconds > 1e12 {
        return Err(Error::new(
            Reason::BadField,
            format!(
                "lag_seconds \"{}\" is not accepted: expected a finite number of seconds, 0 or more",
                s.lag_seconds
            ),
        ));
    }
    if let Some(v) = s.stable_offset.filter(|v| *v < -1) {
        return Err(Error::new(
            Reason::BadField,
            format!("stable_offset \"{v}\" is not an offset: expected -1 or more, or no field"),
        ));
    }
    Ok(LagSample {
        partition: partition(s.partition)?,
        stable_offset: s.stable_offset,
        estimated: s.estimated.unwrap_or(false),
        lag_records: count("lag_records", Some(&s.lag_records))?,
        group: s.group,
        topic: s.topic,
        committed: s.committed,
        end_offset: s.end_offset,
        start_offset: s.start_offset,
        lag_seconds: s.lag_seconds,
        commit_at_ms: s.commit_at_ms,
    })
}

/// An integer field that must fit `u32` in `0..=max`.
fn bounded(field: &str, v: i64, max: u32) -> Result<u32> {
    match u32::try_from(v) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(Error::new(
            Reason::BadField,
            format!("{field} \"{v}\" is out of range: expected 0 to {max}"),
        )),
    }
}

fn cluster_state(
    at_ms: i64,
    brokers: i64,
    topics: Vec<RawTopicMetadata>,
    groups: Vec<RawGroupMetadata>,
) -> Result<ClusterState> {
    let topics = topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let leader = i32::try_from(p.leader)
                        .ok()
                        .filter(|l| *l >= -1)
                        .ok_or_else(|| {
                            Error::new(
                                Reason::BadField,
                                format!(
                                    "leader \"{}\" of \"{}\" is not accepted: expected a broker id, or -1 for none",
                                    p.leader, t.topic
                                ),
                            )
                        })?;
                    Ok(PartitionMetadata {
                        partition: partition(p.partition)?,
                        leader,
                        replicas: bounded("replicas", p.replicas, MAX_REPLICAS)?,
                        in_sync_replicas: bounded(
                            "in_sync_replicas",
                            p.in_sync_replicas,
                            MAX_REPLICAS,
                        )?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(TopicMetadata {
                topic: t.topic,
                partitions,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let groups = groups
        .into_iter()
        .map(|g| {
            Ok(GroupMetadata {
                members: bounded("members", g.members, MAX_MEMBERS)?,
                state: g.state.unwrap_or(GroupState::Unknown),
                group: g.group,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ClusterState {
        at_ms,
        brokers: bounded("brokers", brokers, MAX_BROKERS)?,
        topics,
        groups,
    })
}

fn check_latency(h: RawLatencyHistogram) -> Result<LatencyHistogram> {
    let tier: Tier = h.tier.parse()?;
    validate_topic(&h.topic)?;
    let at = |what: &str| format!("latency of \"{}\" on \"{}\": {what}", tier, h.topic);
    if h.bounds_ms.len() != h.counts.len() || h.bounds_ms.len() > MAX_LATENCY_BOUNDS {
        return Err(Error::new(
            Reason::BadField,
            at(&format!(
                "\"{}\" bounds and \"{}\" counts are not accepted: expected as many counts as bounds, at most {MAX_LATENCY_BOUNDS}",
                h.bounds_ms.len(),
                h.counts.len()
            )),
        ));
    }
    let bounds_ms = h
        .bounds_ms
        .iter()
        .map(|b| count("bounds_ms", Some(b)))
        .collect::<Result<Vec<_>>>()?;
    if let Some(w) = bounds_ms.windows(2).find(|w| w[0] >= w[1]) {
        return Err(Error::new(
            Reason::BadField,
            at(&format!(
                "bound \"{}\" after \"{}\" is not accepted: expected bounds_ms strictly ascending",
                w[1], w[0]
            )),
        ));
    }
    let counts = h
        .counts
        .iter()
        .map(|c| count("counts", Some(c)))
        .collect::<Result<Vec<_>>>()?;
    let total = count("count", Some(&h.count))?;
    let sum_ms = count("sum_ms", Some(&h.sum_ms))?;
    if let Some(w) = counts.windows(2).find(|w| w[0] > w[1]) {
        return Err(Error::new(
            Reason::BadCount,
            at(&format!(
                "count \"{}\" after \"{}\" is not accepted: expected cumulative counts, never decreasing",
                w[1], w[0]
            )),
        ));
    }
    if let Some(c) = counts.last().filter(|&&c| c > total) {
        return Err(Error::new(
            Reason::BadCount,
            at(&format!(
                "bucket count \"{c}\" is over the total count \"{total}\": expected at most the total"
            )),
        ));
    }
    Ok(LatencyHistogram {
        tier,
        topic: h.topic,
        bounds_ms,
        counts,
        count: total,
        sum_ms,
    })
}

/// Splits a `POST /api/v1/ingest` body, a JSON array of messages, into the
/// raw text of each element (borrowed from the body, not copied).
pub fn split_batch<'a>(
    body: &'a [u8],
    limits: &Limits,
) -> Result<Vec<&'a serde_json::value::RawValue>> {
    serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body).map_err(|e| {
        Error::new(
            Reason::Malformed,
            format!("malformed batch: expected a JSON array of messages whose first is a hello ({e})"),
        )
    })
    .and_then(|items| {
        if body.len() > limits.max_message_bytes.saturating_mul(16) {
            Err(Error::new(
                Reason::Oversize,
                format!("batch of {} bytes is over the limit", body.len()),
            ))
        } else {
            Ok(items)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits::new(BucketWidth::DEFAULT)
    }

    #[test]
    fn lag_samples_carry_stable_offset_and_estimated_only_when_set() {
        let plain = json!({"v":1,"type":"lag","seq":3,"at_ms":10,"partitions":[
            {"group":"g","topic":"t","partition":0,"committed":1,"end_offset":2,
             "start_offset":0,"lag_records":1,"lag_seconds":0.5,"commit_at_ms":1}]});
        let msg = dec(plain).unwrap();
        let Message::Lag(l) = &msg else { panic!() };
        assert_eq!(
            (l.partitions[0].stable_offset, l.partitions[0].estimated),
            (None, false)
        );
        let text = msg.to_json();
        assert!(
            !text.contains("stable_offset") && !text.contains("estimated"),
            "{text}"
        );

        let flagged = json!({"v":1,"type":"lag","seq":4,"at_ms":10,"partitions":[
            {"group":"g","topic":"t","partition":0,"committed":1,"end_offset":9,
             "start_offset":0,"lag_records":1,"lag_seconds":0.5,"commit_at_ms":1,
             "stable_offset":2,"estimated":true}]});
        let msg = dec(flagged).unwrap();
        let Message::Lag(l) = &msg else { panic!() };
        assert_eq!(
            (l.partitions[0].stable_offset, l.partitions[0].estimated),
            (Some(2), true)
        );
        assert_eq!(decode(msg.to_json().as_bytes(), &limits()).unwrap(), msg);

        let mut bad = json!({"v":1,"type":"lag","seq":5,"at_ms":10,"partitions":[
            {"group":"g","topic":"t","partition":0,"committed":1,"end_offset":9,
             "start_offset":0,"lag_records":1,"lag_seconds":0.5,"stable_offset":-4}]});
        let e = dec(bad.clone()).unwrap_err().error;
        assert_eq!(e.reason, Reason::BadField);
        assert!(e.detail.contains("stable_offset \"-4\""), "{}", e.detail);
        bad["partitions"][0]["stable_offset"] = json!(3);
        bad["partitions"][0]["estimated"] = json!("yes");
        assert_eq!(reason(bad), Reason::Malformed);
    }

    #[test]
    fn forget_decodes_round_trips_and_checks_its_names() {
        let msg = dec(json!({"v":1,"type":"forget","seq":11,"groups":["billing"],"topics":["orders","old.topic"]})).unwrap();
        let Message::Forget(f) = &msg else { panic!() };
        assert_eq!((f.seq, msg.kind()), (11, "forget"));
        assert_eq!(f.groups, ["billing"]);
        assert_eq!(f.topics, ["orders", "old.topic"]);
        assert_eq!(decode(msg.to_json().as_bytes(), &limits()).unwrap(), msg);
        // Either list may be absent.
        let Message::Forget(f) =
            dec(json!({"v":1,"type":"forget","seq":12,"topics":["t"]})).unwrap()
        else {
            panic!()
        };
        assert!(f.groups.is_empty());

        let e = dec(json!({"v":1,"type":"forget","seq":13,"topics":["bad topic"]})).unwrap_err();
        assert_eq!((e.seq, e.error.reason), (Some(13), Reason::BadTopic));
        assert!(
            e.error.detail.contains("\"bad topic\""),
            "{}",
            e.error.detail
        );
        let e = dec(json!({"v":1,"type":"forget","seq":13,"groups":["a\nb"]})).unwrap_err();
        assert_eq!(e.error.reason, Reason::BadField);
        assert_eq!(
            reason(json!({"v":1,"type":"forget","seq":13,"groups":"billing"})),
            Reason::Malformed
        );
        let small = Limits {
            max_list_entries: 2,
            ..limits()
        };
        let many = json!({"v":1,"type":"forget","seq":14,"groups":["a","b","c"]});
        let e = decode(many.to_string().as_bytes(), &small)
            .unwrap_err()
            .error;
        assert_eq!(e.reason, Reason::BadField);
        assert!(e.detail.contains("\"3\" groups"), "{}", e.detail);
    }

    fn cluster() -> serde_json::Value {
        json!({"v":1,"type":"cluster","seq":21,"at_ms":1_732_800_000_000_i64,"brokers":3,
            "topics":[{"topic":"orders","partitions":[
                {"partition":0,"leader":1,"replicas":3,"in_sync_replicas":3},
                {"partition":1,"leader":-1,"replicas":3,"in_sync_replicas":1}]}],
            "groups":[{"group":"billing","state":"Stable","members":2},
                      {"group":"audit","state":"SomethingNew","members":0}]})
    }

    #[test]
    fn cluster_decodes_and_round_trips() {
        let msg = dec(cluster()).unwrap();
        let Message::Cluster(c) = &msg else { panic!() };
        assert_eq!((c.seq, msg.kind(), msg.seq()), (21, "cluster", Some(21)));
        assert_eq!(c.state.brokers, 3);
        assert_eq!(c.state.partition_count(), 2);
        let p = c.state.topics[0].partitions[1];
        assert!(p.is_offline() && p.is_under_replicated());
        assert!(!c.state.topics[0].partitions[0].is_under_replicated());
        assert_eq!(c.state.groups[0].state, GroupState::Stable);
        assert_eq!(
            c.state.groups[1].state,
            GroupState::Unknown,
            "unknown names read as Unknown"
        );
        assert_eq!(decode(msg.to_json().as_bytes(), &limits()).unwrap(), msg);
        assert!(msg.to_json().contains(r#""state":"Stable""#));
    }

    #[test]
    fn group_states_read_as_kafka_names_them() {
        for s in GroupState::ALL {
            assert_eq!(GroupState::from_kafka(s.as_str()), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(GroupState::from_kafka("stable"), GroupState::Stable);
        assert_eq!(
            GroupState::from_kafka("AwaitingSync"),
            GroupState::CompletingRebalance
        );
        assert_eq!(GroupState::from_kafka(""), GroupState::Unknown);
    }

    #[test]
    fn bad_cluster_messages_are_refused_naming_the_value() {
        let refused = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut m = cluster();
            edit(&mut m);
            dec(m).unwrap_err().error
        };
        let e = refused(&|m| m["brokers"] = json!(-1));
        assert!(e.detail.contains("brokers \"-1\""), "{}", e.detail);
        let e = refused(&|m| m["at_ms"] = json!(-5));
        assert!(e.detail.contains("\"-5\""), "{}", e.detail);
        let e = refused(&|m| m["topics"][0]["topic"] = json!("no spaces"));
        assert_eq!(e.reason, Reason::BadTopic);
        let e = refused(&|m| m["topics"][0]["partitions"][0]["leader"] = json!(-2));
        assert!(e.detail.contains("leader \"-2\""), "{}", e.detail);
        let e = refused(&|m| m["topics"][0]["partitions"][0]["in_sync_replicas"] = json!(4));
        assert!(e.detail.contains("in_sync_replicas \"4\""), "{}", e.detail);
        let e = refused(&|m| m["topics"][0]["partitions"][0]["replicas"] = json!(40_000));
        assert!(e.detail.contains("replicas \"40000\""), "{}", e.detail);
        let e = refused(&|m| m["topics"][0]["partitions"][1]["partition"] = json!(0));
        assert!(e.detail.contains("twice"), "{}", e.detail);
        let e = refused(&|m| m["topics"][0]["partitions"][1]["partition"] = json!(-3));
        assert!(e.detail.contains("partition \"-3\""), "{}", e.detail);
        let e = refused(&|m| {
            let t = m["topics"][0].clone();
            m["topics"].as_array_mut().unwrap().push(t);
        });
        assert!(
            e.detail.contains("\"orders\" is listed twice"),
            "{}",
            e.detail
        );
        let e = refused(&|m| m["groups"][1]["group"] = json!("billing"));
        assert!(
            e.detail.contains("\"billing\" is listed twice"),
            "{}",
            e.detail
        );
        let e = refused(&|m| m["groups"][0]["members"] = json!(1e9));
        assert_eq!(e.reason, Reason::Malformed);
        let e = refused(&|m| m["groups"][0]["members"] = json!(-1));
        assert!(e.detail.contains("members \"-1\""), "{}", e.detail);
        let small = Limits {
            max_list_entries: 1,
            ..limits()
        };
        let e = decode(cluster().to_string().as_bytes(), &small)
            .unwrap_err()
            .error;
        assert!(e.detail.contains("\"2\" partitions"), "{}", e.detail);
    }

    fn dec(v: serde_json::Value) -> Result<Message, Refused> {
        decode(v.to_string().as_bytes(), &limits())
    }

    fn reason(v: serde_json::Value) -> Reason {
        dec(v).unwrap_err().error.reason
    }

    fn counts_with(entry: serde_json::Value) -> serde_json::Value {
        json!({"v": 1, "type": "counts", "seq": 7, "counts": [entry]})
    }

    fn entry() -> serde_json::Value {
        json!({"tier": "group:billing", "topic": "orders", "partition": 2,
               "bucket": 1_732_800_000_000_i64, "records": 400, "bytes": 40000,
               "no_timestamp": 0, "expired": 3, "skipped": 1})
    }

    /// `aborted` is the newest count: absent (an older emitter) it is 0;
    /// present it is checked like every other count, by the one rule the
    /// emitter applies too, and the error names it.
    #[test]
    fn aborted_counts_decode_and_are_checked_by_the_shared_rule() {
        let Message::Counts(c) = dec(counts_with(entry())).unwrap() else {
            panic!()
        };
        assert_eq!(c.counts[0].counts.aborted, 0);
        let mut e = entry();
        e["tier"] = json!("broker");
        e["aborted"] = json!(12);
        let Message::Counts(c) = dec(counts_with(e.clone())).unwrap() else {
            panic!()
        };
        assert_eq!(c.counts[0].counts.aborted, 12);
        // What is sent is what was decoded.
        let again: serde_json::Value =
            serde_json::from_str(&Message::Counts(c.clone()).to_json()).unwrap();
        assert_eq!(again["counts"][0]["aborted"], 12);
        assert_eq!(again["counts"][0]["records"], 400);
        e["aborted"] = json!(MAX_COUNT + 1);
        let refused = dec(counts_with(e)).unwrap_err().error;
        assert_eq!(refused.reason, Reason::BadCount);
        assert!(
            refused.detail.starts_with("aborted \""),
            "{}",
            refused.detail
        );
        let mut entry = c.counts[0].clone();
        entry.counts.aborted = MAX_COUNT + 1;
        let refused = entry.check(BucketWidth::DEFAULT).unwrap_err();
        assert_eq!(refused.reason, Reason::BadCount);
        assert!(
            refused.detail.starts_with("aborted \""),
            "{}",
            refused.detail
        );
    }

    #[test]
    fn hello_counts_and_lag_decode() {
        let hello = dec(json!({"v":1,"type":"hello","source":"b1","cluster":"local",
            "tier_kinds":["broker","group"],"bucket_width_ms":60000,"started_at_ms":5}))
        .unwrap();
        assert_eq!(hello.kind(), "hello");
        let Message::Counts(c) = dec(counts_with(entry())).unwrap() else {
            panic!()
        };
        assert_eq!(c.seq, 7);
        assert_eq!(c.counts[0].tier, Tier::Group("billing".into()));
        assert_eq!(
            (
                c.counts[0].counts.records,
                c.counts[0].counts.expired,
                c.counts[0].counts.skipped
            ),
            (400, 3, 1)
        );
        let Message::Lag(l) = dec(json!({"v":1,"type":"lag","seq":8,"at_ms":10,"partitions":[
            {"group":"billing","topic":"orders","partition":0,"committed":100,"end_offset":150,
             "start_offset":0,"lag_records":50,"lag_seconds":3.2,"commit_at_ms":9}]}))
        .unwrap() else {
            panic!()
        };
        assert_eq!(l.partitions[0].lag_records, 50);
    }

    #[test]
    fn encoded_messages_decode_to_themselves() {
        let msg = dec(counts_with(entry())).unwrap();
        assert_eq!(decode(msg.to_json().as_bytes(), &limits()).unwrap(), msg);
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        assert_eq!(
            decode(b"{not json", &limits()).unwrap_err().error.reason,
            Reason::Malformed
        );
        assert_eq!(
            decode(b"[1,2]", &limits()).unwrap_err().error.reason,
            Reason::Malformed
        );
        assert_eq!(
            reason(json!({"v":2,"type":"counts","seq":1,"counts":[]})),
            Reason::Version
        );
        assert_eq!(
            reason(json!({"type":"counts","seq":1,"counts":[]})),
            Reason::Version
        );
        assert_eq!(reason(json!({"v":1,"type":"gossip"})), Reason::UnknownType);
        assert_eq!(
            reason(json!({"v":1,"type":"hello","source":"b","cluster":"local",
            "tier_kinds":[],"bucket_width_ms":1000,"started_at_ms":0})),
            Reason::WidthMismatch
        );
        let mut e = entry();
        e["bucket"] = json!(1_732_800_000_001_i64);
        assert_eq!(reason(counts_with(e)), Reason::UnalignedBucket);
        let mut e = entry();
        e["topic"] = json!("no spaces");
        assert_eq!(reason(counts_with(e)), Reason::BadTopic);
        let mut e = entry();
        e["records"] = json!(-5);
        assert_eq!(reason(counts_with(e)), Reason::BadCount);
        let mut e = entry();
        e["records"] = json!(1e30);
        assert_eq!(reason(counts_with(e)), Reason::BadCount);
        let mut e = entry();
        e["records"] = json!(MAX_COUNT + 1);
        assert_eq!(reason(counts_with(e)), Reason::BadCount);
        let mut e = entry();
        e["tier"] = json!("middle");
        assert_eq!(reason(counts_with(e)), Reason::BadField);
        let mut e = entry();
        e["partition"] = json!(-1);
        assert_eq!(reason(counts_with(e)), Reason::BadField);
    }

    #[test]
    fn refusals_keep_the_seq_and_name_the_value() {
        let mut e = entry();
        e["records"] = json!(-5);
        let refused = dec(counts_with(e)).unwrap_err();
        assert_eq!(refused.seq, Some(7));
        assert!(
            refused.error.detail.contains("\"-5\""),
            "{}",
            refused.error.detail
        );
        let Reply::Error { seq, reason, .. } = refused.reply() else {
            panic!()
        };
        assert_eq!((seq, reason.as_deref()), (Some(7), Some("bad_count")));
    }

    #[test]
    fn oversize_is_refused_before_parsing() {
        let limits = Limits {
            max_message_bytes: 64,
            ..Limits::new(BucketWidth::DEFAULT)
        };
        let big = counts_with(entry()).to_string();
        assert_eq!(
            decode(big.as_bytes(), &limits).unwrap_err().error.reason,
            Reason::Oversize
        );
    }

    #[test]
    fn bad_lag_samples_are_refused() {
        let lag =
            |s: serde_json::Value| json!({"v":1,"type":"lag","seq":1,"at_ms":0,"partitions":[s]});
        let good = json!({"group":"g","topic":"t","partition":0,"committed":1,"end_offset":2,
            "start_offset":0,"lag_records":1,"lag_seconds":0.5,"commit_at_ms":1});
        assert!(dec(lag(good.clone())).is_ok());
        let mut s = good.clone();
        s["lag_seconds"] = json!(-1.0);
        assert_eq!(reason(lag(s)), Reason::BadField);
        let mut s = good.clone();
        s["committed"] = json!(-7);
        assert_eq!(reason(lag(s)), Reason::BadField);
        let mut s = good;
        s["group"] = json!("");
        assert_eq!(reason(lag(s)), Reason::BadField);
    }

    fn latency_with(h: serde_json::Value) -> serde_json::Value {
        json!({"v": 1, "type": "latency", "seq": 9, "histograms": [h]})
    }

    fn histogram() -> serde_json::Value {
        json!({"tier": "group:billing", "topic": "orders", "bounds_ms": [5, 10, 25],
               "counts": [1, 4, 4], "count": 6, "sum_ms": 300})
    }

    #[test]
    fn latency_decodes_and_round_trips() {
        let msg = dec(latency_with(histogram())).unwrap();
        let Message::Latency(l) = &msg else { panic!() };
        assert_eq!((l.seq, msg.kind()), (9, "latency"));
        let h = &l.histograms[0];
        assert_eq!(h.tier, Tier::Group("billing".into()));
        assert_eq!(
            (
                h.bounds_ms.as_slice(),
                h.counts.as_slice(),
                h.count,
                h.sum_ms
            ),
            (&[5, 10, 25][..], &[1, 4, 4][..], 6, 300)
        );
        assert_eq!(decode(msg.to_json().as_bytes(), &limits()).unwrap(), msg);
    }

    #[test]
    fn the_emitters_bounds_are_accepted() {
        let n = LATENCY_BOUNDS_MS.len();
        let mut h = histogram();
        h["bounds_ms"] = json!(LATENCY_BOUNDS_MS);
        h["counts"] = json!(vec![0; n]);
        assert!(dec(latency_with(h)).is_ok());
        assert!(n <= MAX_LATENCY_BOUNDS);
    }

    #[test]
    fn bad_latency_histograms_are_refused_naming_the_value() {
        let refused = |field: &str, v: serde_json::Value| {
            let mut h = histogram();
            h[field] = v;
            dec(latency_with(h)).unwrap_err().error
        };
        let e = refused("topic", json!("no spaces"));
        assert_eq!(e.reason, Reason::BadTopic);
        assert_eq!(refused("tier", json!("middle")).reason, Reason::BadField);
        let e = refused("bounds_ms", json!([5, 25, 10]));
        assert_eq!(e.reason, Reason::BadField);
        assert!(e.detail.contains("\"10\" after \"25\""), "{}", e.detail);
        assert_eq!(
            refused("bounds_ms", json!([5, 5, 10])).reason,
            Reason::BadField
        );
        let e = refused("counts", json!([1, 4]));
        assert_eq!(e.reason, Reason::BadField);
        assert!(e.detail.contains("\"2\" counts"), "{}", e.detail);
        let e = refused("counts", json!([3, 2, 4]));
        assert_eq!(e.reason, Reason::BadCount);
        assert!(e.detail.contains("\"2\" after \"3\""), "{}", e.detail);
        let e = refused("counts", json!([1, 4, 7]));
        assert_eq!(e.reason, Reason::BadCount);
        assert!(e.detail.contains("\"7\""), "{}", e.detail);
        let e = refused("sum_ms", json!(MAX_COUNT + 1));
        assert_eq!(e.reason, Reason::BadCount);
        assert!(e.detail.contains(&format!("\"{}\"", MAX_COUNT + 1)));
        assert_eq!(refused("count", json!(-1)).reason, Reason::BadCount);
        let many: Vec<u64> = (1..=65).collect();
        let mut h = histogram();
        h["bounds_ms"] = json!(many);
        h["counts"] = json!(vec![0; 65]);
        assert_eq!(reason(latency_with(h)), Reason::BadField);
    }

    #[test]
    fn replies_have_the_documented_shape() {
        assert_eq!(
            Reply::Welcome {
                bucket_width_ms: 60000,
                accept_from_ms: None,
                accept_to_ms: None,
            }
            .to_json(),
            r#"{"type":"welcome","bucket_width_ms":60000}"#
        );
        let welcome = Reply::Welcome {
            bucket_width_ms: 60000,
            accept_from_ms: Some(1),
            accept_to_ms: Some(2),
        };
        assert_eq!(
            welcome.to_json(),
            r#"{"type":"welcome","bucket_width_ms":60000,"accept_from_ms":1,"accept_to_ms":2}"#
        );
        assert_eq!(
            AcceptRange::of_welcome(&welcome),
            Some(AcceptRange {
                from_ms: 1,
                to_ms: 2
            })
        );
        assert_eq!(Reply::Ack { seq: 3 }.to_json(), r#"{"type":"ack","seq":3}"#);
    }

    #[test]
    fn an_old_welcome_without_a_range_still_decodes() {
        let old: Reply =
            serde_json::from_str(r#"{"type":"welcome","bucket_width_ms":60000}"#).unwrap();
        assert_eq!(AcceptRange::of_welcome(&old), None);
    }

    #[test]
    fn a_seq_storage_cannot_hold_is_refused_naming_it() {
        for kind in ["counts", "lag", "latency", "forget", "cluster"] {
            let mut msg = match kind {
                "counts" => counts_with(entry()),
                "lag" => json!({"v":1,"type":"lag","seq":1,"at_ms":0,"partitions":[]}),
                "forget" => json!({"v":1,"type":"forget","seq":1,"groups":["g"]}),
                "cluster" => cluster(),
                _ => latency_with(histogram()),
            };
            msg["seq"] = json!(u64::MAX);
            let refused = dec(msg.clone()).unwrap_err();
            assert_eq!(refused.error.reason, Reason::BadField, "{kind}");
            assert!(
                refused.error.detail.contains(&format!("\"{}\"", u64::MAX)),
                "{}",
                refused.error.detail
            );
            assert_eq!(refused.seq, Some(u64::MAX));
            msg["seq"] = json!(MAX_SEQ);
            assert!(dec(msg).is_ok(), "{kind}");
        }
    }

    #[test]
    fn the_accept_range_reaches_back_the_retention_and_an_hour_ahead() {
        let w = BucketWidth::DEFAULT;
        let now = 1_732_800_030_000;
        let r = AcceptRange::at(now, w, 86_400_000, 120_000);
        assert_eq!(r.from_ms, 1_732_713_600_000);
        assert_eq!(r.to_ms, now + 3_600_000);
        assert!(r.contains(w.bucket_of(now - 86_400_000)));
        assert!(!r.contains(w.bucket_of(now - 86_400_000 - 60_000)));
        assert!(r.contains(w.bucket_of(now + 3_540_000)));
        assert!(!r.contains(w.bucket_of(now + 3_600_000 + 60_000)));
        let long_grace = AcceptRange::at(now, w, 86_400_000, 7_200_000);
        assert_eq!(long_grace.to_ms, now + 7_200_000);
        assert_eq!(r.shifted(60_000).from_ms, r.from_ms + 60_000);
    }

    #[test]
    fn batches_split_into_elements() {
        let items = split_batch(br#"[{"v":1},{"v":1,"type":"x"}]"#, &limits()).unwrap();
        assert_eq!(items.len(), 2);
        assert!(split_batch(b"{}", &limits()).is_err());
    }
}
