//! The dashboard feed of `GET /api/v1/stream`: a full [`Snapshot`] on
//! connect, then one [`Delta`] per evaluation tick.
//!
//! # Message format
//!
//! Every WebSocket text frame is one JSON object with a `"type"`:
//!
//! ```text
//! {"type":"snapshot","snapshot":{…the whole Snapshot…}}          first frame only
//! {"type":"update","at_ms":N, …changed sections…}                  every tick after
//! ```
//!
//! An update carries `at_ms` always (so a quiet agent still shows it is
//! alive), `width_ms`, `grace_ms` and `window_ms` only when they changed, and
//! a section only when something in it changed. A section is
//! `{"upsert":[item…],"remove":[key…],"order":[key…]}`, each part left out
//! when empty:
//!
//! | section   | item               | key (identity)                       |
//! |-----------|--------------------|--------------------------------------|
//! | `topics`  | `TopicBooks`       | `{"cluster","topic"}`                |
//! | `buckets` | see below          | `{"cluster","topic"}`                |
//! | `groups`  | `GroupHealth`      | `{"cluster","group"}`                |
//! | `sources` | `SourceInfo`       | `"source"` (a string)                |
//! | `alerts`  | `AlertInfo`        | `{"alertname","labels"}`             |
//! | `latency` | `LatencyBooks`     | `{"cluster","topic","tier"}`         |
//! | `clusters`| `ClusterInfo`      | `{"cluster","source"}`               |
//!
//! `upsert` holds only items that are new or differ from the previous
//! snapshot, whole; an upserted item replaces the one with its key in place,
//! or is appended. `remove` names the keys that are gone. `order`, present
//! only when the items' order after the upserts and removals would differ
//! from the agent's, lists every key of the section in the agent's order.
//!
//! `buckets` is finer: an upserted entry is
//! `{"cluster","topic","width_ms","buckets":{"upsert":[BucketBooks…],"remove":[bucket…],"order":[bucket…]}}`,
//! a section of its own keyed by the bucket's start (epoch ms), so that a
//! tick that moves the open bucket sends that bucket alone.
//!
//! Applying each update in turn to the first snapshot ([`Delta::apply`])
//! reproduces the agent's snapshot of that tick exactly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::Snapshot;
use crate::snapshot::{
    AlertInfo, BucketBooks, ClusterInfo, GroupHealth, LatencyBooks, SourceInfo, TopicBooks,
    TopicBuckets,
};

/// One frame of the stream feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FeedMessage {
    /// The whole snapshot, sent once on connect.
    Snapshot {
        /// The agent's latest snapshot.
        snapshot: Box<Snapshot>,
    },
    /// What changed since the previous frame.
    Update(Box<Delta>),
}

/// Something with an identity inside its section.
pub trait Keyed {
    /// The identity.
    type Key: Clone + Eq + Hash;
    /// This item's identity.
    fn key(&self) -> Self::Key;
    /// Whether `other` has the same identity (without building keys).
    fn same_key(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

/// Identity of a topic: (cluster, topic).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicKey {
    /// The cluster.
    pub cluster: String,
    /// The topic.
    pub topic: String,
}

/// Identity of a consumer group: (cluster, group).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    /// The cluster.
    pub cluster: String,
    /// The group.
    pub group: String,
}

/// Identity of an alert: its name and labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlertKey {
    /// The rule's name.
    pub alertname: String,
    /// The alert's labels.
    pub labels: BTreeMap<String, String>,
}

/// Identity of a latency histogram: (cluster, topic, tier).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LatencyKey {
    /// The cluster.
    pub cluster: String,
    /// The topic.
    pub topic: String,
    /// The tier.
    pub tier: String,
}

impl Keyed for TopicBooks {
    type Key = TopicKey;
    fn key(&self) -> TopicKey {
        TopicKey {
            cluster: self.cluster.clone(),
            topic: self.topic.clone(),
        }
    }
    fn same_key(&self, other: &Self) -> bool {
        self.cluster == other.cluster && self.topic == other.topic
    }
}

impl Keyed for TopicBuckets {
    type Key = TopicKey;
    fn key(&self) -> TopicKey {
        TopicKey {
            cluster: self.cluster.clone(),
            topic: self.topic.clone(),
        }
    }
    fn same_key(&self, other: &Self) -> bool {
        self.cluster == other.cluster && self.topic == other.topic
    }
}

impl Keyed for BucketBooks {
    type Key = i64;
    fn key(&self) -> i64 {
        self.bucket
    }
}

impl Keyed for GroupHealth {
    type Key = GroupKey;
    fn key(&self) -> GroupKey {
        GroupKey {
            cluster: self.cluster.clone(),
            group: self.group.clone(),
        }
    }
    fn same_key(&self, other: &Self) -> bool {
        self.cluster == other.cluster && self.group == other.group
    }
}

impl Keyed for SourceInfo {
    type Key = String;
    fn key(&self) -> String {
        self.source.clone()
    }
    fn same_key(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Keyed for AlertInfo {
    type Key = AlertKey;
    fn key(&self) -> AlertKey {
        AlertKey {
            alertname: self.alertname.clone(),
            labels: self.labels.clone(),
        }
    }
    fn same_key(&self, other: &Self) -> bool {
        self.alertname == other.alertname && self.labels == other.labels
    }
}

/// Identity of a source's cluster state: (cluster, source).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterKey {
    /// The cluster.
    pub cluster: String,
    /// The source that reported it.
    pub source: String,
}

impl Keyed for ClusterInfo {
    type Key = ClusterKey;
    fn key(&self) -> ClusterKey {
        ClusterKey {
            cluster: self.cluster.clone(),
            source: self.source.clone(),
        }
    }
    fn same_key(&self, other: &Self) -> bool {
        self.cluster == other.cluster && self.source == other.source
    }
}

impl Keyed for LatencyBooks {
    type Key = LatencyKey;
    fn key(&self) -> LatencyKey {
        LatencyKey {
            cluster: self.cluster.clone(),
            topic: self.topic.clone(),
            tier: self.tier.clone(),
        }
    }
    fn same_key(&self, other: &Self) -> bool {
        self.cluster == other.cluster && self.topic == other.topic && self.tier == other.tier
    }
}

/// The changes to one section: items upserted whole, keys removed, and the
/// full order of keys where it changed otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "T: Serialize, K: Serialize",
    deserialize = "T: Deserialize<'de>, K: Deserialize<'de>"
))]
pub struct SectionDelta<T, K> {
    /// New items, and items that differ from the previous frame's.
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub upsert: Vec<T>,
    /// Keys of items that are gone.
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<K>,
    /// Every key in the agent's order, where upserts and removals alone would
    /// leave another order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<K>>,
}

impl<T, K> Default for SectionDelta<T, K> {
    fn default() -> Self {
        SectionDelta {
            upsert: Vec::new(),
            remove: Vec::new(),
            order: None,
        }
    }
}

impl<T, K> SectionDelta<T, K> {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty() && self.order.is_none()
    }
}

/// Whether both hold the same identities in the same places.
fn same_keys<T: Keyed>(old: &[T], new: &[T]) -> bool {
    old.len() == new.len() && old.iter().zip(new).all(|(o, n)| o.same_key(n))
}

/// Places `upsert` in `items` (in place where the key exists, else at the
/// end) and drops the `remove`d keys.
fn merge<T: Keyed>(items: &mut Vec<T>, upsert: impl IntoIterator<Item = T>, remove: &[T::Key]) {
    if !remove.is_empty() {
        let gone: HashSet<&T::Key> = remove.iter().collect();
        items.retain(|i| !gone.contains(&i.key()));
    }
    let mut at: HashMap<T::Key, usize> = items
        .iter()
        .enumerate()
        .map(|(i, t)| (t.key(), i))
        .collect();
    for item in upsert {
        let key = item.key();
        match at.get(&key) {
            Some(&i) => items[i] = item,
            None => {
                at.insert(key, items.len());
                items.push(item);
            }
        }
    }
}

/// Puts `items` into the order of `order` (keys not in it go last, as they were).
fn reorder<T: Keyed>(items: &mut [T], order: &[T::Key]) {
    let rank: HashMap<&T::Key, usize> = order.iter().enumerate().map(|(i, k)| (k, i)).collect();
    items.sort_by_key(|t| rank.get(&t.key()).copied().unwrap_or(usize::MAX));
}

/// The order that `merge` would leave, compared with `new`'s: `Some(keys)`
/// when they differ.
fn order_after<T: Keyed>(old: &[T], new: &[T], removed: &HashSet<T::Key>) -> Option<Vec<T::Key>> {
    let old_keys: HashSet<T::Key> = old.iter().map(Keyed::key).collect();
    let mut merged: Vec<T::Key> = old
        .iter()
        .map(Keyed::key)
        .filter(|k| !removed.contains(k))
        .collect();
    merged.extend(new.iter().map(Keyed::key).filter(|k| !old_keys.contains(k)));
    let wanted: Vec<T::Key> = new.iter().map(Keyed::key).collect();
    (merged != wanted).then_some(wanted)
}

impl<T: Keyed + Clone + PartialEq> SectionDelta<T, T::Key> {
    /// What turns `old` into `new`.
    pub fn between(old: &[T], new: &[T]) -> Self {
        // Most ticks keep every item in its place: compare pairwise then.
        if same_keys(old, new) {
            return SectionDelta {
                upsert: old
                    .iter()
                    .zip(new)
                    .filter(|(o, n)| o != n)
                    .map(|(_, n)| n.clone())
                    .collect(),
                remove: Vec::new(),
                order: None,
            };
        }
        let before: HashMap<T::Key, &T> = old.iter().map(|t| (t.key(), t)).collect();
        let upsert = new
            .iter()
            .filter(|t| before.get(&t.key()).is_none_or(|o| *o != *t))
            .cloned()
            .collect();
        let now: HashSet<T::Key> = new.iter().map(Keyed::key).collect();
        let remove: Vec<T::Key> = old
            .iter()
            .map(Keyed::key)
            .filter(|k| !now.contains(k))
            .collect();
        let removed: HashSet<T::Key> = remove.iter().cloned().collect();
        SectionDelta {
            upsert,
            remove,
            order: order_after(old, new, &removed),
        }
    }

    /// Applies this delta to `items`.
    pub fn apply(self, items: &mut Vec<T>) {
        merge(items, self.upsert, &self.remove);
        if let Some(order) = &self.order {
            reorder(items, order);
        }
    }
}

/// The changes to one topic's buckets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicBucketsDelta {
    /// The cluster.
    pub cluster: String,
    /// The topic.
    pub topic: String,
    /// The bucket width.
    pub width_ms: u64,
    /// The buckets that are new, changed or gone.
    #[serde(default)]
    pub buckets: SectionDelta<BucketBooks, i64>,
}

impl Keyed for TopicBucketsDelta {
    type Key = TopicKey;
    fn key(&self) -> TopicKey {
        TopicKey {
            cluster: self.cluster.clone(),
            topic: self.topic.clone(),
        }
    }
    fn same_key(&self, other: &Self) -> bool {
        self.cluster == other.cluster && self.topic == other.topic
    }
}

/// The changes to the buckets section: per topic, only the buckets that changed.
pub type BucketsDelta = SectionDelta<TopicBucketsDelta, TopicKey>;

fn buckets_between(old: &[TopicBuckets], new: &[TopicBuckets]) -> BucketsDelta {
    if same_keys(old, new) {
        let upsert = old
            .iter()
            .zip(new)
            .filter(|(o, n)| o != n)
            .map(|(o, n)| TopicBucketsDelta {
                cluster: n.cluster.clone(),
                topic: n.topic.clone(),
                width_ms: n.width_ms,
                buckets: SectionDelta::between(&o.buckets, &n.buckets),
            })
            .collect();
        return SectionDelta {
            upsert,
            remove: Vec::new(),
            order: None,
        };
    }
    let before: HashMap<TopicKey, &TopicBuckets> = old.iter().map(|t| (t.key(), t)).collect();
    let upsert = new
        .iter()
        .filter_map(|t| {
            let was = before.get(&t.key());
            if was.is_some_and(|o| *o == t) {
                return None;
            }
            let previous = was.map_or(&[][..], |o| &o.buckets[..]);
            Some(TopicBucketsDelta {
                cluster: t.cluster.clone(),
                topic: t.topic.clone(),
                width_ms: t.width_ms,
                buckets: SectionDelta::between(previous, &t.buckets),
            })
        })
        .collect();
    let now: HashSet<TopicKey> = new.iter().map(Keyed::key).collect();
    let remove: Vec<TopicKey> = old
        .iter()
        .map(Keyed::key)
        .filter(|k| !now.contains(k))
        .collect();
    let removed: HashSet<TopicKey> = remove.iter().cloned().collect();
    SectionDelta {
        upsert,
        remove,
        order: order_after(old, new, &removed),
    }
}

fn apply_buckets(delta: BucketsDelta, items: &mut Vec<TopicBuckets>) {
    let mut at: HashMap<TopicKey, usize> = HashMap::new();
    if !delta.remove.is_empty() {
        let gone: HashSet<&TopicKey> = delta.remove.iter().collect();
        items.retain(|i| !gone.contains(&i.key()));
    }
    for (i, t) in items.iter().enumerate() {
        at.insert(t.key(), i);
    }
    for change in delta.upsert {
        let key = change.key();
        let i = match at.get(&key) {
            Some(&i) => i,
            None => {
                at.insert(key, items.len());
                items.push(TopicBuckets {
                    cluster: change.cluster,
                    topic: change.topic,
                    width_ms: change.width_ms,
                    buckets: Vec::new(),
                });
                items.len() - 1
            }
        };
        items[i].width_ms = change.width_ms;
        change.buckets.apply(&mut items[i].buckets);
    }
    if let Some(order) = &delta.order {
        reorder(items, order);
    }
}

/// What changed between two snapshots of the agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// When the newer snapshot was evaluated.
    pub at_ms: i64,
    /// The bucket width, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width_ms: Option<u64>,
    /// The grace period, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
    /// The window, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// Topic books that changed.
    #[serde(default, skip_serializing_if = "SectionDelta::is_empty")]
    pub topics: SectionDelta<TopicBooks, TopicKey>,
    /// Buckets that changed, per topic.
    #[serde(default, skip_serializing_if = "SectionDelta::is_empty")]
    pub buckets: BucketsDelta,
    /// Groups that changed.
    #[serde(default, skip_serializing_if = "SectionDelta::is_empty")]
    pub groups: SectionDelta<GroupHealth, GroupKey>,
    /// Sources that changed.
    #[serde(default, skip_serializing_if = "SectionDelta::is_empty")]
    pub sources: SectionDelta<SourceInfo, String>,
    /// Alerts that changed.
    #[serde(default, skip_serializing_if = "SectionDelta::is_empty")]
    pub alerts: SectionDelta<AlertInfo, AlertKey>,
    /// Latency histograms that changed.
    #[serde(default, skip_serializing_if = "SectionDelta::is_empty")]
    pub latency: SectionDelta<LatencyBooks, LatencyKey>,
    /// Cluster states that changed.
    #[serde(default, skip_serializing_if = "SectionDelta::is_empty")]
    pub clusters: SectionDelta<ClusterInfo, ClusterKey>,
}

impl Delta {
    /// What turns `old` into `new`.
    pub fn between(old: &Snapshot, new: &Snapshot) -> Delta {
        let changed = |a: u64, b: u64| (a != b).then_some(b);
        Delta {
            at_ms: new.at_ms,
            width_ms: changed(old.width_ms, new.width_ms),
            grace_ms: changed(old.grace_ms, new.grace_ms),
            window_ms: changed(old.window_ms, new.window_ms),
            topics: SectionDelta::between(&old.topics, &new.topics),
            buckets: buckets_between(&old.buckets, &new.buckets),
            groups: SectionDelta::between(&old.groups, &new.groups),
            sources: SectionDelta::between(&old.sources, &new.sources),
            alerts: SectionDelta::between(&old.alerts, &new.alerts),
            latency: SectionDelta::between(&old.latency, &new.latency),
            clusters: SectionDelta::between(&old.clusters, &new.clusters),
        }
    }

    /// Whether only the time moved.
    pub fn is_quiet(&self) -> bool {
        self.width_ms.is_none()
            && self.grace_ms.is_none()
            && self.window_ms.is_none()
            && self.topics.is_empty()
            && self.buckets.is_empty()
            && self.groups.is_empty()
            && self.sources.is_empty()
            && self.alerts.is_empty()
            && self.latency.is_empty()
            && self.clusters.is_empty()
    }

    /// Applies this delta to `s`, the snapshot of the previous frame.
    pub fn apply(self, s: &mut Snapshot) {
        s.at_ms = self.at_ms;
        if let Some(w) = self.width_ms {
            s.width_ms = w;
        }
        if let Some(g) = self.grace_ms {
            s.grace_ms = g;
        }
        if let Some(w) = self.window_ms {
            s.window_ms = w;
        }
        self.topics.apply(&mut s.topics);
        apply_buckets(self.buckets, &mut s.buckets);
        self.groups.apply(&mut s.groups);
        self.sources.apply(&mut s.sources);
        self.alerts.apply(&mut s.alerts);
        self.latency.apply(&mut s.latency);
        self.clusters.apply(&mut s.clusters);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::snapshot::{BucketStatus, BucketTier, GroupStatus, PartitionLag, PartitionStatus};

    /// A small deterministic generator (xorshift), so that failures repeat.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    fn topic(rng: &mut Rng, i: u64) -> TopicBooks {
        let mut t = TopicBooks {
            cluster: format!("c{}", i % 2),
            topic: format!("t{i}"),
            reference: Some("broker".into()),
            tiers: BTreeMap::new(),
        };
        for tier in ["broker", "group:a"] {
            if rng.chance(80) {
                let mut b = crate::snapshot::TierBooks {
                    records: rng.below(1000),
                    completeness: rng.below(100) as f64 / 100.0,
                    ..Default::default()
                };
                b.buckets.insert(BucketStatus::Complete, rng.below(5));
                t.tiers.insert(tier.into(), b);
            }
        }
        t
    }

    fn buckets(rng: &mut Rng, i: u64, tick: i64) -> TopicBuckets {
        let n = rng.below(6) as i64;
        TopicBuckets {
            cluster: format!("c{}", i % 2),
            topic: format!("t{i}"),
            width_ms: 1000,
            buckets: (0..n)
                .map(|b| BucketBooks {
                    bucket: (tick + b) * 1000,
                    tiers: [(
                        "broker".to_owned(),
                        BucketTier {
                            records: rng.below(3),
                            status: BucketStatus::ALL[rng.below(6) as usize],
                            missing: 0,
                            excess: 0,
                            pending: rng.chance(50).then(|| rng.below(3)),
                            expired: None,
                            skipped: None,
                            aborted: 0,
                        },
                    )]
                    .into(),
                })
                .collect(),
        }
    }

    fn group(rng: &mut Rng, i: u64) -> GroupHealth {
        GroupHealth {
            cluster: "c0".into(),
            group: format!("g{i}"),
            status: GroupStatus::ALL[rng.below(3) as usize],
            lag_records: rng.below(4),
            max_lag_seconds: rng.below(4) as f64 / 2.0,
            stale: false,
            partitions: (0..rng.below(3) as i32)
                .map(|p| PartitionLag {
                    topic: "t0".into(),
                    partition: p,
                    committed: rng.below(3) as i64,
                    end_offset: 5,
                    start_offset: 0,
                    lag_records: rng.below(3),
                    lag_seconds: 0.0,
                    status: PartitionStatus::ALL[rng.below(5) as usize],
                    commit_at_ms: 0,
                    commits: Vec::new(),
                    stable_offset: None,
                    estimated: false,
                    stale: false,
                })
                .collect(),
        }
    }

    fn alert(rng: &mut Rng, i: u64) -> AlertInfo {
        AlertInfo {
            alertname: format!("a{}", i % 3),
            state: ["pending", "firing", "resolved"][rng.below(3) as usize].into(),
            severity: "warning".into(),
            labels: [("group".to_owned(), format!("g{i}"))].into(),
            annotations: BTreeMap::new(),
            since_ms: rng.below(3) as i64,
            value: 1.0,
        }
    }

    fn source(rng: &mut Rng, i: u64) -> SourceInfo {
        SourceInfo {
            source: format!("s{i}"),
            cluster: "c0".into(),
            tier_kinds: vec!["broker".into()],
            last_seen_ms: rng.below(3) as i64,
            messages: BTreeMap::new(),
            errors: 0,
            connected: rng.chance(50),
            duplicate_entries: 0,
        }
    }

    /// A random snapshot whose items are a random subset of 0..8 per
    /// section, in an order that is sometimes shuffled.
    fn snapshot(rng: &mut Rng, tick: i64) -> Snapshot {
        let pick = |rng: &mut Rng| -> Vec<u64> {
            let mut ids: Vec<u64> = (0..8).filter(|_| rng.chance(60)).collect();
            if rng.chance(20) {
                ids.reverse();
            }
            ids
        };
        let t = pick(rng);
        let b = pick(rng);
        let g = pick(rng);
        let s = pick(rng);
        let a = pick(rng);
        Snapshot {
            at_ms: tick * 1000,
            width_ms: 1000,
            grace_ms: if rng.chance(10) { 3000 } else { 2000 },
            window_ms: 60_000,
            topics: t.into_iter().map(|i| topic(rng, i)).collect(),
            buckets: b.into_iter().map(|i| buckets(rng, i, tick)).collect(),
            groups: g.into_iter().map(|i| group(rng, i)).collect(),
            sources: s.into_iter().map(|i| source(rng, i)).collect(),
            alerts: a.into_iter().map(|i| alert(rng, i)).collect(),
            latency: Vec::new(),
            clusters: Vec::new(),
        }
    }

    /// Mostly the previous snapshot with a few changes, like a real tick.
    fn next(rng: &mut Rng, prev: &Snapshot, tick: i64) -> Snapshot {
        let fresh = snapshot(rng, tick);
        let mut s = prev.clone();
        s.at_ms = fresh.at_ms;
        s.grace_ms = fresh.grace_ms;
        if rng.chance(50) {
            s.topics = fresh.topics;
        }
        if rng.chance(70) {
            s.buckets = fresh.buckets;
        } else if let Some(b) = s.buckets.first_mut() {
            b.buckets.retain(|x| x.bucket % 2000 == 0);
        }
        if rng.chance(50) {
            s.groups = fresh.groups;
        }
        if rng.chance(30) {
            s.sources = fresh.sources;
        }
        if rng.chance(40) {
            s.alerts = fresh.alerts;
        }
        s
    }

    #[test]
    fn applying_the_deltas_to_the_first_snapshot_reproduces_every_later_one() {
        for seed in 1..=80u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let first = snapshot(&mut rng, 0);
            let mut client = first.clone();
            let mut agent = first;
            for tick in 1..30 {
                let new = next(&mut rng, &agent, tick);
                let delta = Delta::between(&agent, &new);
                // Through JSON, as the feed sends it.
                let text = serde_json::to_string(&FeedMessage::Update(Box::new(delta))).unwrap();
                let FeedMessage::Update(delta) = serde_json::from_str(&text).unwrap() else {
                    panic!("not an update: {text}");
                };
                delta.apply(&mut client);
                assert_eq!(client, new, "seed {seed}, tick {tick}: {text}");
                agent = new;
            }
        }
    }

    #[test]
    fn an_unchanged_item_is_not_sent_and_a_changed_one_is_sent_alone() {
        let mut rng = Rng(7);
        let old = Snapshot {
            topics: (0..5).map(|i| topic(&mut rng, i)).collect(),
            ..Default::default()
        };
        let mut new = old.clone();
        new.at_ms = 5;
        assert!(Delta::between(&old, &new).is_quiet());
        new.topics[2].tiers.insert("x".into(), Default::default());
        let d = Delta::between(&old, &new);
        assert_eq!(d.topics.upsert.len(), 1);
        assert_eq!(d.topics.upsert[0].topic, "t2");
        assert!(d.topics.remove.is_empty() && d.topics.order.is_none());
        let json = serde_json::to_value(FeedMessage::Update(Box::new(d))).unwrap();
        assert_eq!(json["type"], "update");
        assert_eq!(json["at_ms"], 5);
        assert!(json.get("groups").is_none(), "{json}");
        assert_eq!(json["topics"]["upsert"][0]["topic"], "t2");
    }

    #[test]
    fn only_the_changed_bucket_of_a_topic_is_sent() {
        let mut rng = Rng(11);
        let mut b = buckets(&mut rng, 1, 0);
        while b.buckets.len() < 3 {
            b = buckets(&mut rng, 1, 0);
        }
        let old = Snapshot {
            buckets: vec![b],
            ..Default::default()
        };
        let mut new = old.clone();
        let last = new.buckets[0].buckets.last_mut().unwrap();
        last.tiers.get_mut("broker").unwrap().records += 10;
        let d = Delta::between(&old, &new);
        assert_eq!(d.buckets.upsert.len(), 1);
        assert_eq!(d.buckets.upsert[0].buckets.upsert.len(), 1);
        let mut applied = old.clone();
        d.apply(&mut applied);
        assert_eq!(applied, new);
    }
}
