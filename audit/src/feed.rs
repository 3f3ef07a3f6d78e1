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
//!
//! # What changed
//!
//! [`Delta::between`] compares every item of both snapshots, and a window
//! holds many buckets. The evaluation knows which topics and groups it
//! touched, and says so in the snapshot's [`Changes`]: [`Delta::with_changes`]
//! compares only those (and the small sections in full), and makes the same
//! delta as [`Delta::between`] whenever the hint is true. The agent builds one
//! update per tick this way and sends the same bytes to every dashboard.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};

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
        /// The snapshot holds only the scalars, and updates that say
        /// [`Delta::more`] bring the rest ([`FeedMessage::opening`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// What changed since the previous frame.
    Update(Box<Delta>),
}

/// A `snapshot` frame's fields, read without its tag.
#[derive(Deserialize)]
struct SnapshotFrame {
    snapshot: Box<Snapshot>,
    #[serde(default)]
    more: bool,
}

impl FeedMessage {
    /// Reads one frame of the feed. The agent writes the tag first, and such
    /// a frame is read in one pass, the tag skipped as a field the body does
    /// not know (serde reads an internally tagged enum by buffering the whole
    /// frame first, which doubles the cost of a large one); any other order
    /// is read the general way.
    pub fn from_json(text: &str) -> serde_json::Result<FeedMessage> {
        if text.starts_with(r#"{"type":"update","#) {
            return serde_json::from_str::<Delta>(text).map(|d| FeedMessage::Update(Box::new(d)));
        }
        if text.starts_with(r#"{"type":"snapshot","#) {
            return serde_json::from_str::<SnapshotFrame>(text).map(|f| FeedMessage::Snapshot {
                snapshot: f.snapshot,
                more: f.more,
            });
        }
        serde_json::from_str(text)
    }

    /// The frames that open a feed: `snapshot` whole where it weighs at most
    /// `budget` units ([`Weigh`]); else its scalars in a snapshot that says
    /// `more`, then its sections in the parts of [`Delta::split`].
    pub fn opening(snapshot: &Snapshot, budget: usize) -> Vec<FeedMessage> {
        let header = Snapshot {
            at_ms: snapshot.at_ms,
            width_ms: snapshot.width_ms,
            grace_ms: snapshot.grace_ms,
            window_ms: snapshot.window_ms,
            ..Snapshot::default()
        };
        let parts = Delta::between(&header, snapshot).split(budget);
        if parts.len() <= 1 {
            return vec![FeedMessage::Snapshot {
                snapshot: Box::new(snapshot.clone()),
                more: false,
            }];
        }
        let mut frames = Vec::with_capacity(parts.len() + 1);
        frames.push(FeedMessage::Snapshot {
            snapshot: Box::new(header),
            more: true,
        });
        frames.extend(parts.into_iter().map(|d| FeedMessage::Update(Box::new(d))));
        frames
    }
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
    /// Feeds the identity to `state` as `self.key().hash(state)` would,
    /// where the item can without building the key.
    fn hash_key<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl<T: Keyed> Keyed for std::sync::Arc<T> {
    type Key = T::Key;
    fn key(&self) -> Self::Key {
        (**self).key()
    }
    fn same_key(&self, other: &Self) -> bool {
        (**self).same_key(other)
    }
    fn hash_key<H: Hasher>(&self, state: &mut H) {
        (**self).hash_key(state);
    }
}

/// For each of `wanted`, the place in `items` of the item with its
/// identity (`same` says whether two are the same), or `None`. Keys are
/// hashed in place ([`Keyed::hash_key`]), not built: a delta's part costs
/// a pass over the section, not a copy of every key in it.
fn positions<T: Keyed, U: Keyed<Key = T::Key>>(
    items: &[T],
    wanted: &[U],
    same: impl Fn(&U, &T) -> bool,
) -> Vec<Option<usize>> {
    let mut at = vec![None; wanted.len()];
    if wanted.is_empty() {
        return at;
    }
    let hasher = std::hash::RandomState::new();
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::with_capacity(wanted.len());
    for (j, w) in wanted.iter().enumerate() {
        let mut h = hasher.build_hasher();
        w.hash_key(&mut h);
        by_hash.entry(h.finish()).or_default().push(j);
    }
    let mut left = wanted.len();
    for (i, item) in items.iter().enumerate() {
        if left == 0 {
            break;
        }
        let mut h = hasher.build_hasher();
        item.hash_key(&mut h);
        if let Some(js) = by_hash.get(&h.finish()) {
            for &j in js {
                if at[j].is_none() && same(&wanted[j], item) {
                    at[j] = Some(i);
                    left -= 1;
                }
            }
        }
    }
    at
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

/// What an evaluation knows changed since the evaluation before it: which
/// topics and groups [`Delta::with_changes`] must compare.
///
/// Carried by [`Snapshot::changes`]; never serialised.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// This snapshot's evaluation number; 0 = unknown.
    pub seq: u64,
    /// The (cluster, topic)s whose books or buckets may differ from those of
    /// evaluation seq - 1 (added and removed topics included); None =
    /// unknown, compare all.
    pub topics: Option<HashSet<TopicKey>>,
    /// The (cluster, group)s whose health may differ; None = unknown,
    /// compare all.
    pub groups: Option<HashSet<GroupKey>>,
}

/// Any two hints are equal: a hint tells how a snapshot was made, not what it
/// holds, so snapshots with the same items are equal whatever their hints
/// (the dashboard's copy, rebuilt from deltas, has none).
impl PartialEq for Changes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Changes {}

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
    fn hash_key<H: Hasher>(&self, state: &mut H) {
        self.cluster.hash(state);
        self.topic.hash(state);
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
    fn hash_key<H: Hasher>(&self, state: &mut H) {
        self.cluster.hash(state);
        self.topic.hash(state);
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
    fn hash_key<H: Hasher>(&self, state: &mut H) {
        self.cluster.hash(state);
        self.group.hash(state);
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
/// end; a key upserted twice keeps the later) and drops the `remove`d keys.
fn merge<T: Keyed>(items: &mut Vec<T>, upsert: Vec<T>, remove: &[T::Key]) {
    if !remove.is_empty() {
        let gone: HashSet<&T::Key> = remove.iter().collect();
        items.retain(|i| !gone.contains(&i.key()));
    }
    let at = positions(items, &upsert, |u, t| u.same_key(t));
    // New keys, to find one upserted twice.
    let hasher = std::hash::RandomState::new();
    let hash = |t: &T| {
        let mut h = hasher.build_hasher();
        t.hash_key(&mut h);
        h.finish()
    };
    let mut added: HashMap<u64, Vec<usize>> = HashMap::new();
    for (item, at) in upsert.into_iter().zip(at) {
        let at = at.or_else(|| {
            added
                .get(&hash(&item))
                .and_then(|placed| placed.iter().copied().find(|&i| items[i].same_key(&item)))
        });
        match at {
            Some(i) => items[i] = item,
            None => {
                added.entry(hash(&item)).or_default().push(items.len());
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

/// What turns `old` into `new` in one section. `entry(old, new)` makes the
/// entry to upsert for an item that is new (`old` is `None`) or differs, and
/// `None` for one that does not; `may_differ` says which items present in
/// both can differ at all: the others are not compared. Identities are always
/// compared in full, so items that come, go or move are found whatever
/// `may_differ` says.
fn section_between<T: Keyed, U>(
    old: &[T],
    new: &[T],
    may_differ: impl Fn(&T) -> bool,
    entry: impl Fn(Option<&T>, &T) -> Option<U>,
) -> SectionDelta<U, T::Key> {
    // Most ticks keep every item in its place: compare pairwise then.
    if same_keys(old, new) {
        return SectionDelta {
            upsert: old
                .iter()
                .zip(new)
                .filter(|(_, n)| may_differ(n))
                .filter_map(|(o, n)| entry(Some(o), n))
                .collect(),
            remove: Vec::new(),
            order: None,
        };
    }
    let before: HashMap<T::Key, &T> = old.iter().map(|t| (t.key(), t)).collect();
    let upsert = new
        .iter()
        .filter_map(|n| match before.get(&n.key()) {
            None => entry(None, n),
            Some(o) if may_differ(n) => entry(Some(o), n),
            Some(_) => None,
        })
        .collect();
    let now: HashSet<T::Key> = new.iter().map(Keyed::key).collect();
    let remove: Vec<T::Key> = old
        .iter()
        .map(Keyed::key)
        .filter(|k| !now.contains(k))
        .collect();
    // The order that `merge` leaves: the items kept where they were, the new
    // ones after them. `order` is sent only when the agent's differs.
    let merged = old
        .iter()
        .map(Keyed::key)
        .filter(|k| now.contains(k))
        .chain(
            new.iter()
                .map(Keyed::key)
                .filter(|k| !before.contains_key(k)),
        );
    let order =
        (!merged.eq(new.iter().map(Keyed::key))).then(|| new.iter().map(Keyed::key).collect());
    SectionDelta {
        upsert,
        remove,
        order,
    }
}

/// The entry of a plain section: the new item whole, where it differs.
fn whole<T: PartialEq + Clone>(old: Option<&T>, new: &T) -> Option<T> {
    (old != Some(new)).then(|| new.clone())
}

impl<T: Keyed + Clone + PartialEq> SectionDelta<T, T::Key> {
    /// What turns `old` into `new`.
    pub fn between(old: &[T], new: &[T]) -> Self {
        section_between(old, new, |_| true, whole)
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
    fn hash_key<H: Hasher>(&self, state: &mut H) {
        self.cluster.hash(state);
        self.topic.hash(state);
    }
}

/// The changes to the buckets section: per topic, only the buckets that changed.
pub type BucketsDelta = SectionDelta<TopicBucketsDelta, TopicKey>;

/// The entry of the buckets section: the topic's buckets that are new,
/// changed or gone, where the topic differs.
fn topic_buckets(old: Option<&TopicBuckets>, new: &TopicBuckets) -> Option<TopicBucketsDelta> {
    if old == Some(new) {
        return None;
    }
    let previous = old.map_or(&[][..], |o| &o.buckets[..]);
    Some(TopicBucketsDelta {
        cluster: new.cluster.clone(),
        topic: new.topic.clone(),
        width_ms: new.width_ms,
        buckets: SectionDelta::between(previous, &new.buckets),
    })
}

/// Borrowed (cluster, name) identities, to look items up in a hint without
/// building owned keys.
type Names<'a> = (&'a str, &'a str);

fn apply_buckets(delta: BucketsDelta, items: &mut Vec<TopicBuckets>) {
    if !delta.remove.is_empty() {
        let gone: HashSet<&TopicKey> = delta.remove.iter().collect();
        items.retain(|i| !gone.contains(&i.key()));
    }
    let at = positions(items, &delta.upsert, |d, t| {
        d.cluster == t.cluster && d.topic == t.topic
    });
    // Topics new in this delta, to find one sent twice.
    let hasher = std::hash::RandomState::new();
    let hash = |t: &TopicBucketsDelta| {
        let mut h = hasher.build_hasher();
        t.hash_key(&mut h);
        h.finish()
    };
    let mut added: HashMap<u64, Vec<usize>> = HashMap::new();
    for (change, at) in delta.upsert.into_iter().zip(at) {
        let found = at.or_else(|| {
            added.get(&hash(&change)).and_then(|placed| {
                placed
                    .iter()
                    .copied()
                    .find(|&i| items[i].cluster == change.cluster && items[i].topic == change.topic)
            })
        });
        let i = match found {
            Some(i) => i,
            None => {
                added.entry(hash(&change)).or_default().push(items.len());
                items.push(TopicBuckets {
                    cluster: change.cluster,
                    topic: change.topic,
                    width_ms: change.width_ms,
                    buckets: Default::default(),
                });
                items.len() - 1
            }
        };
        items[i].width_ms = change.width_ms;
        change
            .buckets
            .apply(std::sync::Arc::make_mut(&mut items[i].buckets));
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
    pub topics: SectionDelta<std::sync::Arc<TopicBooks>, TopicKey>,
    /// Buckets that changed, per topic.
    #[serde(default, skip_serializing_if = "SectionDelta::is_empty")]
    pub buckets: BucketsDelta,
    /// Groups that changed.
    #[serde(default, skip_serializing_if = "SectionDelta::is_empty")]
    pub groups: SectionDelta<std::sync::Arc<GroupHealth>, GroupKey>,
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
    /// More parts of this frame follow ([`Delta::split`]): the books are
    /// whole again only after the part without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// About how many bytes one unit of [`Weigh::weight`] takes in a frame.
pub const BYTES_PER_UNIT: usize = 256;

/// The weight of an item in a frame, in units of about
/// [`BYTES_PER_UNIT`] bytes: what [`Delta::split`] packs parts by.
pub trait Weigh {
    /// The item's weight, at least 1.
    fn weight(&self) -> usize;
}

impl<T: Weigh> Weigh for std::sync::Arc<T> {
    fn weight(&self) -> usize {
        (**self).weight()
    }
}

impl Weigh for TopicBooks {
    fn weight(&self) -> usize {
        1 + self.tiers.len()
    }
}

impl Weigh for TopicBucketsDelta {
    fn weight(&self) -> usize {
        1 + self
            .buckets
            .upsert
            .iter()
            .map(|b| b.tiers.len())
            .sum::<usize>()
            + self.buckets.remove.len() / 8
    }
}

impl Weigh for GroupHealth {
    fn weight(&self) -> usize {
        1 + self
            .partitions
            .iter()
            .map(|p| 1 + p.commits.len() / 4)
            .sum::<usize>()
    }
}

impl Weigh for SourceInfo {
    fn weight(&self) -> usize {
        1 + self.messages.len() / 4
    }
}

impl Weigh for AlertInfo {
    fn weight(&self) -> usize {
        1 + (self.labels.len() + self.annotations.len()) / 4
    }
}

impl Weigh for LatencyBooks {
    fn weight(&self) -> usize {
        1 + self.bounds_ms.len() / 8
    }
}

impl Weigh for ClusterInfo {
    fn weight(&self) -> usize {
        1 + self
            .topics
            .iter()
            .map(|t| 1 + t.partitions.len() / 4)
            .sum::<usize>()
            + self.groups.len() / 4
    }
}

/// Moves `from`'s upserts into the parts, a new part whenever the one being
/// filled would pass `budget`.
fn pack<T: Weigh, K>(
    from: Vec<T>,
    budget: usize,
    parts: &mut Vec<Delta>,
    filled: &mut usize,
    section: impl Fn(&mut Delta) -> &mut SectionDelta<T, K>,
) {
    for item in from {
        let w = item.weight();
        if *filled > 0 && *filled + w > budget {
            let at_ms = parts.last().map_or(0, |p| p.at_ms);
            parts.push(Delta {
                at_ms,
                ..Delta::default()
            });
            *filled = 0;
        }
        *filled += w;
        if let Some(part) = parts.last_mut() {
            section(part).upsert.push(item);
        }
    }
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
            buckets: section_between(&old.buckets, &new.buckets, |_| true, topic_buckets),
            groups: SectionDelta::between(&old.groups, &new.groups),
            sources: SectionDelta::between(&old.sources, &new.sources),
            alerts: SectionDelta::between(&old.alerts, &new.alerts),
            latency: SectionDelta::between(&old.latency, &new.latency),
            clusters: SectionDelta::between(&old.clusters, &new.clusters),
            more: false,
        }
    }

    /// What turns `old` into `new`, comparing only the topics and groups that
    /// `new.changes` names when `new` is the evaluation right after `old`'s
    /// (its `seq` is one more, and `old`'s is known); else [`Delta::between`].
    ///
    /// The result equals [`Delta::between`]'s whenever the hint is true: no
    /// item left out of it differs. Sources, alerts, latency, clusters and
    /// the scalars are always compared in full (they are few), and so are
    /// identities, so topics and groups that come, go or move are found
    /// anyway. The cost is that of the hinted items and the number of topics
    /// and groups, not that of the buckets in the window.
    pub fn with_changes(old: &Snapshot, new: &Snapshot) -> Delta {
        let follows =
            old.changes.seq != 0 && old.changes.seq.checked_add(1) == Some(new.changes.seq);
        if !follows {
            return Delta::between(old, new);
        }
        let topics: Option<HashSet<Names<'_>>> = new.changes.topics.as_ref().map(|hint| {
            hint.iter()
                .map(|k| (k.cluster.as_str(), k.topic.as_str()))
                .collect()
        });
        let groups: Option<HashSet<Names<'_>>> = new.changes.groups.as_ref().map(|hint| {
            hint.iter()
                .map(|k| (k.cluster.as_str(), k.group.as_str()))
                .collect()
        });
        let topic_hinted = |cluster: &str, topic: &str| {
            topics
                .as_ref()
                .is_none_or(|h| h.contains(&(cluster, topic)))
        };
        let changed = |a: u64, b: u64| (a != b).then_some(b);
        Delta {
            at_ms: new.at_ms,
            width_ms: changed(old.width_ms, new.width_ms),
            grace_ms: changed(old.grace_ms, new.grace_ms),
            window_ms: changed(old.window_ms, new.window_ms),
            topics: section_between(
                &old.topics,
                &new.topics,
                |t| topic_hinted(&t.cluster, &t.topic),
                whole,
            ),
            buckets: section_between(
                &old.buckets,
                &new.buckets,
                |t| topic_hinted(&t.cluster, &t.topic),
                topic_buckets,
            ),
            groups: section_between(
                &old.groups,
                &new.groups,
                |g| {
                    groups
                        .as_ref()
                        .is_none_or(|h| h.contains(&(g.cluster.as_str(), g.group.as_str())))
                },
                whole,
            ),
            sources: SectionDelta::between(&old.sources, &new.sources),
            alerts: SectionDelta::between(&old.alerts, &new.alerts),
            latency: SectionDelta::between(&old.latency, &new.latency),
            clusters: SectionDelta::between(&old.clusters, &new.clusters),
            more: false,
        }
    }

    /// This delta as parts of about `budget` units of [`Weigh::weight`]
    /// each (an item heavier than that alone in its part), which applied in
    /// order make the same change: the first part holds the scalars, the
    /// last the removals and orders, and every part but the last says
    /// [`Delta::more`]. A frame of a large agent stays under the WebSocket
    /// message limits this way, and no part takes long to encode or decode.
    pub fn split(self, budget: usize) -> Vec<Delta> {
        let budget = budget.max(1);
        let mut parts = vec![Delta {
            at_ms: self.at_ms,
            width_ms: self.width_ms,
            grace_ms: self.grace_ms,
            window_ms: self.window_ms,
            ..Delta::default()
        }];
        let mut filled = 0;
        pack(self.topics.upsert, budget, &mut parts, &mut filled, |d| {
            &mut d.topics
        });
        pack(self.buckets.upsert, budget, &mut parts, &mut filled, |d| {
            &mut d.buckets
        });
        pack(self.groups.upsert, budget, &mut parts, &mut filled, |d| {
            &mut d.groups
        });
        pack(self.sources.upsert, budget, &mut parts, &mut filled, |d| {
            &mut d.sources
        });
        pack(self.alerts.upsert, budget, &mut parts, &mut filled, |d| {
            &mut d.alerts
        });
        pack(self.latency.upsert, budget, &mut parts, &mut filled, |d| {
            &mut d.latency
        });
        pack(self.clusters.upsert, budget, &mut parts, &mut filled, |d| {
            &mut d.clusters
        });
        let n = parts.len();
        for (i, part) in parts.iter_mut().enumerate() {
            part.more = i + 1 < n;
        }
        if let Some(last) = parts.last_mut() {
            last.topics.remove = self.topics.remove;
            last.topics.order = self.topics.order;
            last.buckets.remove = self.buckets.remove;
            last.buckets.order = self.buckets.order;
            last.groups.remove = self.groups.remove;
            last.groups.order = self.groups.order;
            last.sources.remove = self.sources.remove;
            last.sources.order = self.sources.order;
            last.alerts.remove = self.alerts.remove;
            last.alerts.order = self.alerts.order;
            last.latency.remove = self.latency.remove;
            last.latency.order = self.latency.order;
            last.clusters.remove = self.clusters.remove;
            last.clusters.order = self.clusters.order;
        }
        parts
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
                .collect::<Vec<_>>()
                .into(),
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
                .collect::<Vec<_>>()
                .into(),
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
            topics: t.into_iter().map(|i| topic(rng, i).into()).collect(),
            buckets: b.into_iter().map(|i| buckets(rng, i, tick)).collect(),
            groups: g.into_iter().map(|i| group(rng, i).into()).collect(),
            sources: s.into_iter().map(|i| source(rng, i)).collect(),
            alerts: a.into_iter().map(|i| alert(rng, i)).collect(),
            latency: Vec::new(),
            clusters: Vec::new(),
            changes: Default::default(),
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
            std::sync::Arc::make_mut(&mut b.buckets).retain(|x| x.bucket % 2000 == 0);
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

    /// The one-pass reading gives what serde's general reading gives, for
    /// every kind of frame and with the tag anywhere.
    #[test]
    fn frames_read_in_one_pass_equal_the_general_reading() {
        let mut rng = Rng(11);
        let first = snapshot(&mut rng, 0);
        let second = next(&mut rng, &first, 1);
        let mut frames = FeedMessage::opening(&first, 5);
        frames.push(FeedMessage::Snapshot {
            snapshot: Box::new(first.clone()),
            more: false,
        });
        frames.push(FeedMessage::Update(Box::new(Delta::between(
            &first, &second,
        ))));
        for frame in frames {
            let text = serde_json::to_string(&frame).unwrap();
            assert!(text.starts_with(r#"{"type":"#), "{text}");
            assert_eq!(FeedMessage::from_json(&text).unwrap(), frame);
            // The tag last: the general way.
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&text).unwrap();
            let tag = v.remove("type").unwrap();
            v.insert("type".into(), tag);
            let moved = serde_json::to_string(&v).unwrap();
            assert_eq!(FeedMessage::from_json(&moved).unwrap(), frame);
        }
        assert!(FeedMessage::from_json(r#"{"type":"update","at_ms":"x"}"#).is_err());
        assert!(FeedMessage::from_json(r#"{"type":"nonsense"}"#).is_err());
    }

    /// Split into parts of a small budget, every delta and every opening
    /// still rebuilds the agent's snapshot exactly, no part but the heaviest
    /// items passes the budget, and only the last part lacks `more`.
    #[test]
    fn split_frames_applied_in_order_make_the_same_books() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let first = snapshot(&mut rng, 0);
            for budget in [1, 7, 40, 1_000_000] {
                let frames = FeedMessage::opening(&first, budget);
                let mut client = Snapshot::default();
                for (i, frame) in frames.iter().enumerate() {
                    let last = i + 1 == frames.len();
                    match wire(frame) {
                        FeedMessage::Snapshot { snapshot, more } => {
                            assert_eq!(i, 0, "seed {seed}: the snapshot comes first");
                            assert_eq!(more, !last, "seed {seed}, budget {budget}");
                            client = *snapshot;
                        }
                        FeedMessage::Update(d) => {
                            assert!(i > 0, "seed {seed}: an update before the snapshot");
                            assert_eq!(d.more, !last, "seed {seed}, budget {budget}, part {i}");
                            d.apply(&mut client);
                        }
                    }
                }
                assert_eq!(client, first, "seed {seed}, budget {budget}");
                if budget == 1_000_000 {
                    assert_eq!(frames.len(), 1, "a light snapshot goes whole");
                } else if budget <= 7 {
                    assert!(frames.len() > 2, "seed {seed}, budget {budget}: not split");
                }
            }
            let mut agent = first.clone();
            let mut client = first;
            for tick in 1..20 {
                let new = next(&mut rng, &agent, tick);
                let parts = Delta::between(&agent, &new).split(5);
                for (i, part) in parts.iter().enumerate() {
                    let weight: usize = part.topics.upsert.iter().map(Weigh::weight).sum::<usize>()
                        + part.buckets.upsert.iter().map(Weigh::weight).sum::<usize>()
                        + part.groups.upsert.iter().map(Weigh::weight).sum::<usize>()
                        + part.sources.upsert.iter().map(Weigh::weight).sum::<usize>()
                        + part.alerts.upsert.iter().map(Weigh::weight).sum::<usize>()
                        + part.latency.upsert.iter().map(Weigh::weight).sum::<usize>()
                        + part
                            .clusters
                            .upsert
                            .iter()
                            .map(Weigh::weight)
                            .sum::<usize>();
                    let items = part.topics.upsert.len()
                        + part.buckets.upsert.len()
                        + part.groups.upsert.len()
                        + part.sources.upsert.len()
                        + part.alerts.upsert.len()
                        + part.latency.upsert.len()
                        + part.clusters.upsert.len();
                    assert!(
                        weight <= 5 || items == 1,
                        "seed {seed}, tick {tick}, part {i}: {weight} units in {items} items"
                    );
                    assert_eq!(part.more, i + 1 < parts.len());
                    let FeedMessage::Update(part) =
                        wire(&FeedMessage::Update(Box::new(part.clone())))
                    else {
                        panic!("not an update");
                    };
                    part.apply(&mut client);
                }
                assert_eq!(client, new, "seed {seed}, tick {tick}");
                agent = new;
            }
        }
    }

    #[test]
    fn an_unchanged_item_is_not_sent_and_a_changed_one_is_sent_alone() {
        let mut rng = Rng(7);
        let old = Snapshot {
            topics: (0..5).map(|i| topic(&mut rng, i).into()).collect(),
            ..Default::default()
        };
        let mut new = old.clone();
        new.at_ms = 5;
        assert!(Delta::between(&old, &new).is_quiet());
        std::sync::Arc::make_mut(&mut new.topics[2])
            .tiers
            .insert("x".into(), Default::default());
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
        let last = std::sync::Arc::make_mut(&mut new.buckets[0].buckets)
            .last_mut()
            .unwrap();
        last.tiers.get_mut("broker").unwrap().records += 10;
        let d = Delta::between(&old, &new);
        assert_eq!(d.buckets.upsert.len(), 1);
        assert_eq!(d.buckets.upsert[0].buckets.upsert.len(), 1);
        let mut applied = old.clone();
        d.apply(&mut applied);
        assert_eq!(applied, new);
    }

    /// The agent's state as the property test evolves it, one evaluation at
    /// a time, knowing what each evaluation changed as the ledger does.
    struct World {
        rng: Rng,
        tick: i64,
        seq: u64,
        /// Sorted by (cluster, topic), as the ledger evaluates them.
        topics: BTreeMap<TopicKey, (TopicBooks, TopicBuckets)>,
        /// Sorted by (cluster, group), as the ledger evaluates them.
        groups: BTreeMap<GroupKey, GroupHealth>,
        /// The scalars and the small sections, compared in full.
        rest: Snapshot,
    }

    fn topic_key(id: u64) -> TopicKey {
        TopicKey {
            cluster: format!("c{}", id % 2),
            topic: format!("t{id}"),
        }
    }

    fn group_key(id: u64) -> GroupKey {
        GroupKey {
            cluster: format!("c{}", id % 2),
            group: format!("g{id}"),
        }
    }

    fn latency(rng: &mut Rng, i: u64) -> LatencyBooks {
        let counts: Vec<u64> = (0..3).map(|_| rng.below(5)).collect();
        LatencyBooks {
            cluster: "c0".into(),
            topic: format!("t{i}"),
            tier: ["broker", "group:a"][rng.below(2) as usize].into(),
            bounds_ms: vec![10, 100, 1000],
            count: counts.iter().sum(),
            counts,
            sum_ms: rng.below(1000),
        }
    }

    fn cluster(rng: &mut Rng, i: u64) -> ClusterInfo {
        ClusterInfo {
            cluster: format!("c{}", i % 2),
            source: format!("s{i}"),
            brokers: rng.below(4) as u32,
            partitions: rng.below(100),
            ..Default::default()
        }
    }

    impl World {
        fn new(seed: u64) -> World {
            let mut world = World {
                rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
                tick: 0,
                seq: 1,
                topics: BTreeMap::new(),
                groups: BTreeMap::new(),
                rest: Snapshot {
                    width_ms: 1000,
                    grace_ms: 2000,
                    window_ms: 60_000,
                    ..Default::default()
                },
            };
            for id in 0..40 {
                if world.rng.chance(50) {
                    world.add_topic(id);
                }
                if world.rng.chance(50) {
                    world.add_group(id);
                }
            }
            world.small_sections();
            world
        }

        fn add_topic(&mut self, id: u64) {
            let key = topic_key(id);
            let mut books = topic(&mut self.rng, id);
            let mut view = buckets(&mut self.rng, id, self.tick);
            books.cluster.clone_from(&key.cluster);
            view.cluster.clone_from(&key.cluster);
            self.topics.insert(key, (books, view));
        }

        fn add_group(&mut self, id: u64) {
            let key = group_key(id);
            let mut g = group(&mut self.rng, id);
            g.cluster.clone_from(&key.cluster);
            self.groups.insert(key, g);
        }

        /// Changes a topic's books or buckets the way an evaluation does.
        fn change_topic(&mut self, id: u64) {
            let tick = self.tick;
            let rng = &mut self.rng;
            let Some((books, view)) = self.topics.get_mut(&topic_key(id)) else {
                return;
            };
            match rng.below(6) {
                0 => match books.tiers.values_mut().next() {
                    Some(tier) => tier.records += 1 + rng.below(9),
                    None => {
                        books.tiers.insert("broker".into(), Default::default());
                    }
                },
                1 => books.reference = rng.chance(50).then(|| "broker".into()),
                // The open bucket moves: a new one at the end.
                2 => {
                    let open = tick * 1000;
                    if view.buckets.last().is_none_or(|b| b.bucket < open) {
                        std::sync::Arc::make_mut(&mut view.buckets).push(BucketBooks {
                            bucket: open,
                            tiers: BTreeMap::new(),
                        });
                    }
                }
                // The window slides: the oldest bucket goes.
                3 => {
                    if !view.buckets.is_empty() {
                        std::sync::Arc::make_mut(&mut view.buckets).remove(0);
                    }
                }
                4 => {
                    if let Some(b) = std::sync::Arc::make_mut(&mut view.buckets).last_mut() {
                        let tier = BucketTier {
                            records: rng.below(50),
                            status: BucketStatus::ALL[rng.below(6) as usize],
                            missing: rng.below(2),
                            excess: 0,
                            pending: None,
                            expired: None,
                            skipped: None,
                            aborted: 0,
                        };
                        b.tiers.insert("broker".into(), tier);
                    }
                }
                _ => view.width_ms = [1000, 2000][rng.below(2) as usize],
            }
        }

        fn change_group(&mut self, id: u64) {
            let rng = &mut self.rng;
            let Some(g) = self.groups.get_mut(&group_key(id)) else {
                return;
            };
            match rng.below(4) {
                0 => g.lag_records += 1 + rng.below(9),
                1 => g.status = GroupStatus::ALL[rng.below(3) as usize],
                2 => g.stale = !g.stale,
                _ => {
                    if let Some(p) = std::sync::Arc::make_mut(&mut g.partitions).first_mut() {
                        p.committed += 1;
                    } else {
                        g.max_lag_seconds += 0.5;
                    }
                }
            }
        }

        /// Sources, alerts, latency and clusters: a few each tick, often none.
        fn small_sections(&mut self) {
            let rng = &mut self.rng;
            let pick = |rng: &mut Rng| -> Vec<u64> { (0..6).filter(|_| rng.chance(50)).collect() };
            if rng.chance(30) {
                let ids = pick(rng);
                self.rest.sources = ids.into_iter().map(|i| source(rng, i)).collect();
            }
            if rng.chance(30) {
                let ids = pick(rng);
                self.rest.alerts = ids.into_iter().map(|i| alert(rng, i)).collect();
            }
            if rng.chance(20) {
                let ids = pick(rng);
                self.rest.latency = ids.into_iter().map(|i| latency(rng, i)).collect();
            }
            if rng.chance(10) {
                let ids = pick(rng);
                self.rest.clusters = ids.into_iter().map(|i| cluster(rng, i)).collect();
            }
            if rng.chance(5) {
                self.rest.grace_ms = [2000, 3000][rng.below(2) as usize];
            }
            if rng.chance(3) {
                self.rest.window_ms = [60_000, 120_000][rng.below(2) as usize];
            }
        }

        /// The next evaluation: a few topics and groups added, changed or
        /// removed, with a true hint of which (sometimes none, sometimes
        /// naming more than changed), or an unknown or skipped number.
        fn evaluate(&mut self) -> Snapshot {
            self.tick += 1;
            let mut topics = HashSet::new();
            let mut groups = HashSet::new();
            for _ in 0..self.rng.below(5) {
                let id = self.rng.below(40);
                match self.rng.below(10) {
                    0 => {
                        self.topics.remove(&topic_key(id));
                    }
                    1 => self.add_topic(id),
                    _ => self.change_topic(id),
                }
                topics.insert(topic_key(id));
            }
            for _ in 0..self.rng.below(5) {
                let id = self.rng.below(40);
                match self.rng.below(10) {
                    0 => {
                        self.groups.remove(&group_key(id));
                    }
                    1 => self.add_group(id),
                    _ => self.change_group(id),
                }
                groups.insert(group_key(id));
            }
            // A hint may name what did not change, or no longer exists.
            if self.rng.chance(20) {
                topics.insert(topic_key(self.rng.below(50)));
            }
            if self.rng.chance(20) {
                groups.insert(group_key(self.rng.below(50)));
            }
            self.small_sections();
            // An evaluation the feed did not see, or one that does not know.
            self.seq += if self.rng.chance(4) { 2 } else { 1 };
            let seq = if self.rng.chance(3) { 0 } else { self.seq };
            let (books, views) = self
                .topics
                .values()
                .map(|(b, v)| (std::sync::Arc::new(b.clone()), v.clone()))
                .unzip();
            Snapshot {
                at_ms: self.tick * 1000,
                topics: books,
                buckets: views,
                groups: self.groups.values().cloned().map(Into::into).collect(),
                changes: Changes {
                    seq,
                    topics: (!self.rng.chance(10)).then_some(topics),
                    groups: (!self.rng.chance(10)).then_some(groups),
                },
                ..self.rest.clone()
            }
        }
    }

    /// Through JSON, as the feed sends it.
    fn wire(message: &FeedMessage) -> FeedMessage {
        let text = serde_json::to_string(message).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The feed's deltas applied by the dashboard's reducer equal a fresh
    /// snapshot, across many ticks with random changes; and with a true hint
    /// the delta is the one that compares everything.
    #[test]
    fn hinted_deltas_applied_to_the_first_snapshot_reproduce_every_later_one() {
        const SEEDS: u64 = 24;
        const TICKS: usize = 250;
        let mut hinted_ticks = 0;
        let mut topic_order_sent = 0;
        for seed in 1..=SEEDS {
            let mut world = World::new(seed);
            let mut agent = world.evaluate();
            let FeedMessage::Snapshot {
                snapshot: first, ..
            } = wire(&FeedMessage::Snapshot {
                snapshot: Box::new(agent.clone()),
                more: false,
            })
            else {
                panic!("not a snapshot");
            };
            let mut client = *first;
            for tick in 0..TICKS {
                let new = world.evaluate();
                let delta = Delta::with_changes(&agent, &new);
                assert_eq!(
                    delta,
                    Delta::between(&agent, &new),
                    "seed {seed}, tick {tick}: the hinted delta is not the full one"
                );
                if agent.changes.seq != 0 && new.changes.seq == agent.changes.seq + 1 {
                    hinted_ticks += 1;
                }
                topic_order_sent += usize::from(delta.topics.order.is_some());
                let FeedMessage::Update(delta) = wire(&FeedMessage::Update(Box::new(delta))) else {
                    panic!("not an update");
                };
                delta.apply(&mut client);
                assert_eq!(client, new, "seed {seed}, tick {tick}");
                agent = new;
            }
        }
        // The hinted path and the `order` part are what this test is about.
        let ticks = SEEDS as usize * TICKS;
        assert!(
            hinted_ticks > ticks * 4 / 5,
            "{hinted_ticks} of {ticks} hinted"
        );
        assert!(
            topic_order_sent > 100,
            "{topic_order_sent} topic orders sent"
        );
    }

    #[test]
    fn the_hint_is_followed_only_from_the_evaluation_before() {
        let mut rng = Rng(5);
        let mut old = Snapshot {
            topics: (0..4).map(|i| topic(&mut rng, i).into()).collect(),
            groups: (0..4).map(|i| group(&mut rng, i).into()).collect(),
            ..Default::default()
        };
        old.changes.seq = 7;
        let mut new = old.clone();
        std::sync::Arc::make_mut(&mut new.topics[1])
            .tiers
            .insert("x".into(), Default::default());
        std::sync::Arc::make_mut(&mut new.groups[2]).lag_records += 1;
        // A hint that leaves the changes out: followed, they are not seen.
        new.changes = Changes {
            seq: 8,
            topics: Some(HashSet::new()),
            groups: Some(HashSet::new()),
        };
        assert!(Delta::with_changes(&old, &new).is_quiet());
        // Not the next evaluation, or an unknown one: everything is compared.
        for (before, after) in [(7, 9), (0, 1), (7, 0)] {
            old.changes.seq = before;
            new.changes.seq = after;
            assert_eq!(
                Delta::with_changes(&old, &new),
                Delta::between(&old, &new),
                "{before} -> {after}"
            );
        }
        // A hint of None compares that section in full.
        old.changes.seq = 7;
        new.changes.seq = 8;
        new.changes.groups = None;
        let d = Delta::with_changes(&old, &new);
        assert!(d.topics.is_empty());
        assert_eq!(d.groups.upsert, vec![new.groups[2].clone()]);
    }
}
