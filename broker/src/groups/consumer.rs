//! The consumer group protocol of KIP-848: members heartbeat
//! (ConsumerGroupHeartbeat) with their subscription and what they own, and
//! the broker assigns partitions itself (the `uniform` and `range`
//! assignors).
//!
//! A change of membership, of a subscription or of a subscribed topic's
//! partitions bumps the group epoch and computes a new target assignment.
//! Each member then reconciles at its own heartbeats: it is first told to
//! give up what its target no longer holds, keeps its member epoch until it
//! reports that it did, then moves to the new epoch and gets the partitions
//! of its target that no other member still holds (or still has to give
//! up). So a partition is never owned by two members at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;

use super::ties::Assigned;
use super::{GroupListing, GroupState, GroupSummary, MemberSummary};

/// A (topic, partition).
pub(crate) type Tp = (String, i32);

/// Kafka's `group.consumer.session.timeout.ms` default.
pub(crate) const SESSION_TIMEOUT: Duration = Duration::from_secs(45);

/// The assignors the broker runs (`group.remote.assignor`).
pub(crate) const ASSIGNORS: [&str; 2] = ["uniform", "range"];

/// What a topic looks like to the assignor: its id and partition count.
pub(crate) trait Catalog {
    /// The topic's id and number of partitions, if it exists.
    fn topic(&self, name: &str) -> Option<(uuid::Uuid, i32)>;
    /// The topic of an id.
    fn name_of(&self, id: uuid::Uuid) -> Option<String>;
    /// Every topic name (for regex subscriptions).
    fn names(&self) -> Vec<String>;
}

/// One ConsumerGroupHeartbeat, as the coordinator takes it.
#[derive(Clone, Debug)]
pub(crate) struct Heartbeat {
    pub(crate) group_id: String,
    pub(crate) member_id: String,
    pub(crate) member_epoch: i32,
    pub(crate) instance_id: Option<String>,
    pub(crate) rack_id: Option<String>,
    /// `None`: unchanged since the last heartbeat.
    pub(crate) subscribed_topic_names: Option<Vec<String>>,
    pub(crate) subscribed_topic_regex: Option<String>,
    pub(crate) server_assignor: Option<String>,
    /// What the member owns, by topic id; `None`: unchanged.
    pub(crate) owned: Option<Vec<(uuid::Uuid, Vec<i32>)>>,
    pub(crate) client_id: String,
    pub(crate) host: IpAddr,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Beat {
    pub(crate) error: Option<(ResponseError, String)>,
    pub(crate) member_id: String,
    pub(crate) member_epoch: i32,
    /// The member's assignment by topic id, when it changed (or the member
    /// joined); `None` otherwise.
    pub(crate) assignment: Option<Vec<(uuid::Uuid, Vec<i32>)>>,
}

impl Beat {
    fn failed(error: ResponseError, message: String, member_id: &str, epoch: i32) -> Beat {
        Beat {
            error: Some((error, message)),
            member_id: member_id.to_owned(),
            member_epoch: epoch,
            assignment: None,
        }
    }
}

#[derive(Clone, Debug)]
struct Member {
    id: String,
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    host: IpAddr,
    topics: Vec<String>,
    regex: Option<String>,
    epoch: i32,
    previous_epoch: i32,
    /// What the broker told it to own.
    assigned: BTreeSet<Tp>,
    /// What it last reported owning.
    owned: BTreeSet<Tp>,
    /// The assignment in its last answer: a change is sent, the same is not.
    sent: Option<BTreeSet<Tp>>,
    expires: Instant,
    seq: u64,
    /// A static member that left with epoch -2: it keeps its place and its
    /// partitions until its session timeout, for its instance to come back.
    left: bool,
}

/// A consumer group of the KIP-848 protocol.
#[derive(Debug)]
pub(crate) struct ConsumerGroup {
    id: String,
    epoch: i32,
    assignment_epoch: i32,
    assignor: String,
    members: BTreeMap<String, Member>,
    target: HashMap<String, BTreeSet<Tp>>,
    /// Partition counts of the subscribed topics when the target was computed.
    seen: BTreeMap<String, i32>,
    next_seq: u64,
    pub(crate) emptied_at: Option<Instant>,
    pub(crate) ties_dirty: bool,
}

impl ConsumerGroup {
    pub(crate) fn new(id: &str, now: Instant) -> Self {
        ConsumerGroup {
            id: id.to_owned(),
            epoch: 0,
            assignment_epoch: 0,
            assignor: ASSIGNORS[0].to_owned(),
            members: BTreeMap::new(),
            target: HashMap::new(),
            seen: BTreeMap::new(),
            next_seq: 0,
            emptied_at: Some(now),
            ties_dirty: false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// KIP-848's states: Empty, Assigning (a new target not computed yet: it
    /// is computed at once here), Reconciling, Stable.
    pub(crate) fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.members.values().all(|m| {
            m.epoch == self.assignment_epoch
                && self.target.get(&m.id).is_some_and(|t| *t == m.assigned)
                && m.owned == m.assigned
        }) {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    /// The topics the members subscribe to, with their partition counts now.
    fn subscribed(&self, catalog: &dyn Catalog) -> BTreeMap<String, i32> {
        let mut out = BTreeMap::new();
        let names = if self.members.values().any(|m| m.regex.is_some()) {
            catalog.names()
        } else {
            Vec::new()
        };
        for m in self.members.values() {
            for t in member_topics(m, &names) {
                if let Some((_, n)) = catalog.topic(&t) {
                    out.insert(t, n);
                }
            }
        }
        out
    }

    /// A new target assignment for the current epoch.
    fn assign(&mut self, catalog: &dyn Catalog) {
        let partitions = self.subscribed(catalog);
        let names = if self.members.values().any(|m| m.regex.is_some()) {
            catalog.names()
        } else {
            Vec::new()
        };
        let subscriptions: BTreeMap<String, BTreeSet<String>> = self
            .members
            .values()
            .map(|m| {
                let topics = member_topics(m, &names)
                    .into_iter()
                    .filter(|t| partitions.contains_key(t))
                    .collect();
                (m.id.clone(), topics)
            })
            .collect();
        self.target = if self.assignor == "range" {
            range(&subscriptions, &partitions)
        } else {
            uniform(&subscriptions, &partitions, &self.target)
        };
        self.seen = partitions;
        self.assignment_epoch = self.epoch;
    }

    /// Moves `m` toward its target (see the module documentation).
    fn reconcile(&mut self, member_id: &str) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let claimed: BTreeSet<Tp> = self
            .members
            .values()
            .filter(|o| o.id != member_id)
            .flat_map(|o| o.assigned.iter().chain(o.owned.iter()).cloned())
            .collect();
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(member_id) else {
            return;
        };
        if m.epoch != assignment_epoch {
            m.assigned.retain(|p| target.contains(p));
            if m.owned.is_subset(&m.assigned) {
                m.previous_epoch = m.epoch;
                m.epoch = assignment_epoch;
            }
        }
        if m.epoch == assignment_epoch {
            for p in &target {
                if !claimed.contains(p) && m.assigned.insert(p.clone()) {
                    self.ties_dirty = true;
                }
            }
        }
    }

    /// The ties of every member's assigned partitions (DESIGN §2: the
    /// heartbeat's client id and host).
    pub(crate) fn assigned(&self) -> Vec<Assigned> {
        self.members
            .values()
            .flat_map(|m| {
                m.assigned.iter().map(move |(topic, partition)| Assigned {
                    client_id: m.client_id.clone(),
                    host: m.host,
                    topic: topic.clone(),
                    partition: *partition,
                })
            })
            .collect()
    }

    fn remove(&mut self, member_id: &str, now: Instant) {
        if self.members.remove(member_id).is_some() {
            self.epoch += 1;
            self.ties_dirty = true;
            if self.members.is_empty() {
                self.emptied_at = Some(now);
                self.target.clear();
            }
        }
    }

    /// Handles one heartbeat at `now`; `session` and `interval` are the
    /// group settings.
    pub(crate) fn heartbeat(
        &mut self,
        hb: Heartbeat,
        catalog: &dyn Catalog,
        now: Instant,
        max_size: usize,
    ) -> Beat {
        // Leaving: -1 for good, -2 for a static member that comes back.
        if hb.member_epoch < 0 {
            if hb.member_epoch == -1 || hb.member_epoch == -2 {
                match self.members.get_mut(&hb.member_id) {
                    Some(m) if hb.member_epoch == -2 && m.instance_id.is_some() => {
                        m.left = true;
                        m.sent = None;
                        m.expires = now + SESSION_TIMEOUT;
                    }
                    _ => self.remove(&hb.member_id, now),
                }
                self.refresh(catalog);
                return Beat {
                    member_id: hb.member_id,
                    member_epoch: hb.member_epoch,
                    ..Beat::default()
                };
            }
            return Beat::failed(
                ResponseError::InvalidRequest,
                format!(
                    "member epoch \"{}\" is not valid: expected -2, -1, 0 or the member's epoch",
                    hb.member_epoch
                ),
                &hb.member_id,
                hb.member_epoch,
            );
        }
        if let Some(a) = &hb.server_assignor
            && !ASSIGNORS.contains(&a.as_str())
        {
            return Beat::failed(
                ResponseError::UnsupportedAssignor,
                format!("assignor \"{a}\" is not supported: expected uniform or range"),
                &hb.member_id,
                hb.member_epoch,
            );
        }
        if let Some(r) = &hb.subscribed_topic_regex
            && regex::Regex::new(r).is_err()
        {
            return Beat::failed(
                ResponseError::InvalidRegularExpression,
                format!("subscribed topic regex \"{r}\" does not compile"),
                &hb.member_id,
                hb.member_epoch,
            );
        }
        let member_id = if hb.member_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            hb.member_id.clone()
        };
        match self.members.get(&member_id) {
            None if hb.member_epoch != 0 => {
                return Beat::failed(
                    ResponseError::UnknownMemberId,
                    format!("member \"{member_id}\" is not in group \"{}\"", self.id),
                    &member_id,
                    hb.member_epoch,
                );
            }
            Some(m)
                if hb.member_epoch != 0
                    && (m.left
                        || hb.member_epoch != m.epoch && hb.member_epoch != m.previous_epoch) =>
            {
                return Beat::failed(
                    ResponseError::FencedMemberEpoch,
                    format!(
                        "member epoch {} is fenced: the member is at epoch {}",
                        hb.member_epoch, m.epoch
                    ),
                    &member_id,
                    hb.member_epoch,
                );
            }
            _ => {}
        }
        let joining = hb.member_epoch == 0;
        // A new member bumps the epoch once, subscription included.
        let mut fresh = false;
        if joining && !self.members.contains_key(&member_id) {
            if self.members.len() >= max_size {
                return Beat::failed(
                    ResponseError::GroupMaxSizeReached,
                    format!("group \"{}\" has {max_size} members already", self.id),
                    &member_id,
                    0,
                );
            }
            // A static member that comes back takes the place of its old
            // self, with its assignment, without a new epoch; while the old
            // one is still there, the instance id is not free.
            let holder = hb.instance_id.as_ref().and_then(|i| {
                self.members
                    .values()
                    .find(|m| m.instance_id.as_ref() == Some(i))
            });
            if let Some(h) = holder
                && !h.left
            {
                return Beat::failed(
                    ResponseError::UnreleasedInstanceId,
                    format!(
                        "instance id \"{}\" is in use by member \"{}\" of group \"{}\"",
                        h.instance_id.as_deref().unwrap_or_default(),
                        h.id,
                        self.id
                    ),
                    &member_id,
                    0,
                );
            }
            let old = holder.map(|m| m.id.clone());
            let seq = self.next_seq;
            self.next_seq += 1;
            let mut member = Member {
                id: member_id.clone(),
                instance_id: hb.instance_id.clone(),
                rack_id: hb.rack_id.clone(),
                client_id: hb.client_id.clone(),
                host: hb.host,
                topics: Vec::new(),
                regex: None,
                epoch: 0,
                previous_epoch: 0,
                assigned: BTreeSet::new(),
                owned: BTreeSet::new(),
                sent: None,
                expires: now + SESSION_TIMEOUT,
                seq,
                left: false,
            };
            fresh = true;
            match old.and_then(|o| self.members.remove(&o).map(|m| (o, m))) {
                Some((old_id, m)) => {
                    member.topics = m.topics;
                    member.regex = m.regex;
                    member.epoch = m.epoch;
                    member.previous_epoch = m.previous_epoch;
                    member.assigned = m.assigned;
                    if let Some(t) = self.target.remove(&old_id) {
                        self.target.insert(member_id.clone(), t);
                    }
                    tracing::info!(group = %self.id, member = %member_id, "static member rejoined without a rebalance");
                    fresh = false;
                }
                None => self.epoch += 1,
            }
            self.members.insert(member_id.clone(), member);
            self.emptied_at = None;
            self.ties_dirty = true;
        } else if joining {
            // A known member starting over: what it had is given up.
            if let Some(m) = self.members.get_mut(&member_id) {
                m.owned.clear();
                m.sent = None;
            }
        }
        let mut changed = false;
        if let Some(m) = self.members.get_mut(&member_id) {
            m.expires = now + SESSION_TIMEOUT;
            m.client_id = hb.client_id.clone();
            m.host = hb.host;
            if let Some(topics) = &hb.subscribed_topic_names {
                let mut topics = topics.clone();
                topics.sort();
                topics.dedup();
                if topics != m.topics {
                    m.topics = topics;
                    changed = true;
                }
            }
            if hb.subscribed_topic_regex.is_some() && hb.subscribed_topic_regex != m.regex {
                m.regex = hb.subscribed_topic_regex.clone();
                changed = true;
            }
            if let Some(owned) = &hb.owned {
                m.owned = owned
                    .iter()
                    .filter_map(|(id, parts)| {
                        catalog
                            .name_of(*id)
                            .map(|name| parts.iter().map(move |p| (name.clone(), *p)))
                    })
                    .flatten()
                    .collect();
            }
        }
        if let Some(a) = &hb.server_assignor
            && *a != self.assignor
        {
            self.assignor = a.clone();
            changed = true;
        }
        if changed && !fresh {
            self.epoch += 1;
        }
        self.refresh(catalog);
        self.reconcile(&member_id);
        let Some(m) = self.members.get_mut(&member_id) else {
            return Beat::default();
        };
        let assignment = if joining || m.sent.as_ref() != Some(&m.assigned) {
            m.sent = Some(m.assigned.clone());
            Some(by_topic_id(&m.assigned, catalog))
        } else {
            None
        };
        Beat {
            error: None,
            member_id,
            member_epoch: m.epoch,
            assignment,
        }
    }

    /// Bumps the epoch when a subscribed topic's partitions changed, and
    /// computes the target when the epoch moved past it.
    fn refresh(&mut self, catalog: &dyn Catalog) {
        if self.epoch == self.assignment_epoch
            && !self.members.is_empty()
            && self.subscribed(catalog) != self.seen
        {
            self.epoch += 1;
        }
        if self.epoch != self.assignment_epoch {
            self.assign(catalog);
            self.ties_dirty = true;
        }
    }

    /// Members whose session expired are removed; the group's next
    /// heartbeats reconcile without them.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.expires <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in &gone {
            tracing::info!(group = %self.id, member = %id, "member expired: no heartbeat within its session timeout");
            self.remove(id, now);
        }
        gone
    }

    /// Whether an OffsetCommit from `member_id` at `epoch` may write.
    pub(crate) fn check_commit(&self, member_id: &str, epoch: i32) -> Result<(), ResponseError> {
        if member_id.is_empty() && epoch < 0 {
            // An admin tool: only while nobody consumes.
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        }
        let m = self
            .members
            .get(member_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        if epoch != m.epoch && epoch != m.previous_epoch {
            return Err(ResponseError::StaleMemberEpoch);
        }
        Ok(())
    }

    pub(crate) fn listing(&self) -> GroupListing {
        GroupListing {
            group: self.id.clone(),
            state: self.state(),
            protocol_type: "consumer".to_owned(),
            group_type: "consumer",
        }
    }

    pub(crate) fn summary(&self) -> GroupSummary {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        GroupSummary {
            group: self.id.clone(),
            state: self.state(),
            generation: self.epoch,
            protocol_type: "consumer".to_owned(),
            protocol: self.assignor.clone(),
            leader: None,
            members: members
                .into_iter()
                .map(|m| MemberSummary {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: format!("/{}", m.host),
                    metadata: classic_subscription(&m.topics),
                    assignment: classic_assignment(&m.assigned),
                })
                .collect(),
            group_type: "consumer",
        }
    }

    /// ConsumerGroupDescribe's view: (epoch, assignment epoch, assignor,
    /// members with subscription, assignment and target).
    pub(crate) fn described(&self) -> DescribedConsumerGroup {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        DescribedConsumerGroup {
            state: self.state(),
            epoch: self.epoch,
            assignment_epoch: self.assignment_epoch,
            assignor: self.assignor.clone(),
            members: members
                .into_iter()
                .map(|m| DescribedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: format!("/{}", m.host),
                    topics: m.topics.clone(),
                    regex: m.regex.clone(),
                    assignment: m.assigned.iter().cloned().collect(),
                    target: self
                        .target
                        .get(&m.id)
                        .map(|t| t.iter().cloned().collect())
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// A consumer group as ConsumerGroupDescribe shows it.
#[derive(Clone, Debug)]
pub(crate) struct DescribedConsumerGroup {
    pub(crate) state: GroupState,
    pub(crate) epoch: i32,
    pub(crate) assignment_epoch: i32,
    pub(crate) assignor: String,
    pub(crate) members: Vec<DescribedMember>,
}

/// A member as ConsumerGroupDescribe shows it.
#[derive(Clone, Debug)]
pub(crate) struct DescribedMember {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) rack_id: Option<String>,
    pub(crate) epoch: i32,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) topics: Vec<String>,
    pub(crate) regex: Option<String>,
    pub(crate) assignment: Vec<Tp>,
    pub(crate) target: Vec<Tp>,
}

/// The topics a member subscribes to: its names, and those of `names`
/// that its regex matches whole.
fn member_topics(m: &Member, names: &[String]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = m.topics.iter().cloned().collect();
    if let Some(r) = &m.regex
        && let Ok(re) = regex::Regex::new(&format!("^(?:{r})$"))
    {
        out.extend(
            names
                .iter()
                .filter(|n| !n.starts_with("__") && re.is_match(n))
                .cloned(),
        );
    }
    out
}

/// An empty assignment for every member.
fn nothing_yet(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
) -> HashMap<String, BTreeSet<Tp>> {
    subscriptions
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect()
}

/// The members subscribed to `topic`, in member id order.
fn takers<'a>(
    subscriptions: &'a BTreeMap<String, BTreeSet<String>>,
    topic: &str,
) -> Vec<&'a String> {
    subscriptions
        .iter()
        .filter(|(_, t)| t.contains(topic))
        .map(|(m, _)| m)
        .collect()
}

/// The uniform assignor, sticky: each member has a share of the subscribed
/// partitions (as even as the count allows, the larger shares going to the
/// members that held the most), keeps what it held of its previous target
/// up to that share, and the rest is dealt in (topic, partition) order to
/// the members subscribed to its topic, each time to the one with the
/// fewest so far among those still short of their share (by member id on
/// ties). So a new member takes partitions from the others and nothing else
/// moves. The shares split all subscribed partitions evenly, exact when the
/// members subscribe alike; with unlike subscriptions they only guide.
fn uniform(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, i32>,
    previous: &HashMap<String, BTreeSet<Tp>>,
) -> HashMap<String, BTreeSet<Tp>> {
    let mut out = nothing_yet(subscriptions);
    let valid = |m: &str, (topic, p): &Tp| {
        subscriptions.get(m).is_some_and(|t| t.contains(topic))
            && partitions.get(topic).is_some_and(|n| p < n)
    };
    // What each member held and may keep, each partition kept once.
    let mut taken: BTreeSet<Tp> = BTreeSet::new();
    let mut held: BTreeMap<&String, Vec<Tp>> = BTreeMap::new();
    for m in subscriptions.keys() {
        let mine: Vec<Tp> = previous
            .get(m)
            .into_iter()
            .flatten()
            .filter(|tp| valid(m, tp) && !taken.contains(*tp))
            .cloned()
            .collect();
        taken.extend(mine.iter().cloned());
        held.insert(m, mine);
    }
    let total: usize = partitions
        .iter()
        .filter(|(t, _)| subscriptions.values().any(|s| s.contains(*t)))
        .map(|(_, n)| (*n).max(0) as usize)
        .sum();
    let sharing: Vec<&String> = subscriptions
        .iter()
        .filter(|(_, t)| !t.is_empty())
        .map(|(m, _)| m)
        .collect();
    let mut quota: HashMap<&String, usize> = HashMap::new();
    if !sharing.is_empty() {
        let (base, extra) = (total / sharing.len(), total % sharing.len());
        let mut by_held = sharing.clone();
        by_held.sort_by_key(|m| (std::cmp::Reverse(held[*m].len()), *m));
        for (i, m) in by_held.into_iter().enumerate() {
            quota.insert(m, base + usize::from(i < extra));
        }
    }
    let mut placed: BTreeSet<Tp> = BTreeSet::new();
    for (m, mine) in held {
        let share = quota.get(m).copied().unwrap_or(0);
        for tp in mine.into_iter().take(share) {
            placed.insert(tp.clone());
            out.entry(m.clone()).or_default().insert(tp);
        }
    }
    for (topic, n) in partitions {
        let takers = takers(subscriptions, topic);
        for p in 0..*n {
            let tp = (topic.clone(), p);
            if placed.contains(&tp) {
                continue;
            }
            let m = takers
                .iter()
                .min_by_key(|m| {
                    let load = out.get(**m).map_or(0, BTreeSet::len);
                    let full = load >= quota.get(**m).copied().unwrap_or(0);
                    (full, load, **m)
                })
                .copied();
            if let Some(m) = m {
                out.entry(m.clone()).or_default().insert(tp);
            }
        }
    }
    out
}

/// The range assignor: per topic, its partitions in contiguous ranges over
/// the members subscribed to it in member id order, the first ones one more
/// when they do not divide evenly.
fn range(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, i32>,
) -> HashMap<String, BTreeSet<Tp>> {
    let mut out = nothing_yet(subscriptions);
    for (topic, n) in partitions {
        let takers = takers(subscriptions, topic);
        if takers.is_empty() {
            continue;
        }
        let k = takers.len() as i32;
        let (each, extra) = (n / k, n % k);
        let mut p = 0;
        for (i, m) in takers.iter().enumerate() {
            let len = each + i32::from((i as i32) < extra);
            for q in p..p + len {
                out.entry((*m).clone())
                    .or_default()
                    .insert((topic.clone(), q));
            }
            p += len;
        }
    }
    out
}

fn by_topic_id(parts: &BTreeSet<Tp>, catalog: &dyn Catalog) -> Vec<(uuid::Uuid, Vec<i32>)> {
    let mut out: Vec<(uuid::Uuid, Vec<i32>)> = Vec::new();
    let mut last: Option<&str> = None;
    for (topic, p) in parts {
        if last == Some(topic.as_str()) {
            if let Some(e) = out.last_mut() {
                e.1.push(*p);
            }
            continue;
        }
        if let Some((id, _)) = catalog.topic(topic) {
            out.push((id, vec![*p]));
            last = Some(topic.as_str());
        }
    }
    out
}

/// A member's topics as the classic protocol's subscription bytes
/// (ConsumerProtocolSubscription v0), for DescribeGroups and OffsetDelete.
fn classic_subscription(topics: &[String]) -> bytes::Bytes {
    let mut out = Vec::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for t in topics {
        out.extend_from_slice(&(t.len() as i16).to_be_bytes());
        out.extend_from_slice(t.as_bytes());
    }
    out.extend_from_slice(&(-1i32).to_be_bytes());
    bytes::Bytes::from(out)
}

/// A member's partitions as the classic protocol's assignment bytes
/// (ConsumerProtocolAssignment v0), for DescribeGroups.
fn classic_assignment(parts: &BTreeSet<Tp>) -> bytes::Bytes {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        by_topic.entry(t).or_default().push(*p);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&(by_topic.len() as i32).to_be_bytes());
    for (t, ps) in by_topic {
        out.extend_from_slice(&(t.len() as i16).to_be_bytes());
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(&(ps.len() as i32).to_be_bytes());
        for p in ps {
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    out.extend_from_slice(&(-1i32).to_be_bytes());
    bytes::Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Topics(BTreeMap<String, (uuid::Uuid, i32)>);

    impl Catalog for Topics {
        fn topic(&self, name: &str) -> Option<(uuid::Uuid, i32)> {
            self.0.get(name).copied()
        }
        fn name_of(&self, id: uuid::Uuid) -> Option<String> {
            self.0
                .iter()
                .find(|(_, (i, _))| *i == id)
                .map(|(n, _)| n.clone())
        }
        fn names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
    }

    fn beat(member: &str, epoch: i32, owned: Option<&Beat>) -> Heartbeat {
        Heartbeat {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            subscribed_topic_names: (epoch == 0).then(|| vec!["t".to_owned()]),
            owned: owned.and_then(|b| b.assignment.clone()),
            client_id: member.into(),
            host: "127.0.0.1".parse().unwrap(),
            instance_id: None,
            rack_id: None,
            subscribed_topic_regex: None,
            server_assignor: None,
        }
    }

    fn count(b: &Beat) -> usize {
        b.assignment
            .as_ref()
            .map_or(0, |a| a.iter().map(|(_, p)| p.len()).sum())
    }

    #[test]
    fn partitions_move_only_once_given_up() {
        let topics = Topics(BTreeMap::from([(
            "t".to_owned(),
            (uuid::Uuid::new_v4(), 6),
        )]));
        let mut g = ConsumerGroup::new("g", Instant::now());
        let now = Instant::now();
        let a = g.heartbeat(beat("a", 0, None), &topics, now, 10);
        assert_eq!((a.member_epoch, count(&a)), (1, 6), "alone, a gets all 6");
        // b joins: the target splits 3/3, but a still owns everything.
        let b = g.heartbeat(beat("b", 0, None), &topics, now, 10);
        assert_eq!((b.member_epoch, count(&b)), (2, 0), "{b:?}");
        // a is told to give up 3 and stays at its epoch until it reports so.
        let a2 = g.heartbeat(beat("a", 1, Some(&a)), &topics, now, 10);
        assert_eq!((a2.member_epoch, count(&a2)), (1, 3), "{a2:?}");
        // b still gets nothing: a has not given them up.
        let b2 = g.heartbeat(beat("b", 2, None), &topics, now, 10);
        assert_eq!(b2.assignment, None);
        // a reports owning only its 3: it moves to epoch 2; then b gets the rest.
        let a3 = g.heartbeat(beat("a", 1, Some(&a2)), &topics, now, 10);
        assert_eq!(a3.member_epoch, 2);
        let b3 = g.heartbeat(beat("b", 2, None), &topics, now, 10);
        assert_eq!(count(&b3), 3);
        let mine: BTreeSet<i32> = a2.assignment.unwrap()[0].1.iter().copied().collect();
        let theirs: BTreeSet<i32> = b3.assignment.unwrap()[0].1.iter().copied().collect();
        assert!(mine.is_disjoint(&theirs) && mine.len() + theirs.len() == 6);
        // A stale epoch is fenced; an unknown member must join first.
        let fenced = g.heartbeat(beat("b", 7, None), &topics, now, 10);
        assert_eq!(fenced.error.unwrap().0, ResponseError::FencedMemberEpoch);
        let unknown = g.heartbeat(beat("c", 3, None), &topics, now, 10);
        assert_eq!(unknown.error.unwrap().0, ResponseError::UnknownMemberId);
        // b leaves: a gets everything back at its next heartbeats.
        g.heartbeat(beat("b", -1, None), &topics, now, 10);
        let a4 = g.heartbeat(beat("a", 2, None), &topics, now, 10);
        assert_eq!((a4.member_epoch, count(&a4)), (3, 6), "{a4:?}");
        assert_eq!(
            g.state(),
            GroupState::Reconciling,
            "a has not reported owning them yet"
        );
    }

    #[test]
    fn uniform_keeps_what_members_held_and_moves_only_the_new_share() {
        let subs = |ms: &[&str]| -> BTreeMap<String, BTreeSet<String>> {
            ms.iter()
                .map(|m| ((*m).to_owned(), BTreeSet::from(["t".to_owned()])))
                .collect()
        };
        let parts = BTreeMap::from([("t".to_owned(), 6)]);
        let tps = |ps: &[i32]| -> BTreeSet<Tp> { ps.iter().map(|p| ("t".into(), *p)).collect() };
        // b joins a, which held all six: a keeps 0-2, b takes 3-5 (Kafka's split).
        let alone = uniform(&subs(&["b"]), &parts, &HashMap::new());
        assert_eq!(alone["b"], tps(&[0, 1, 2, 3, 4, 5]));
        let two = uniform(&subs(&["a", "b"]), &parts, &alone);
        assert_eq!((&two["a"], &two["b"]), (&tps(&[3, 4, 5]), &tps(&[0, 1, 2])));
        // c joins: each of a and b gives up one, nothing else moves.
        let three = uniform(&subs(&["a", "b", "c"]), &parts, &two);
        assert!(three["a"].is_subset(&two["a"]) && three["b"].is_subset(&two["b"]));
        assert_eq!(
            [three["a"].len(), three["b"].len(), three["c"].len()],
            [2, 2, 2]
        );
        // b leaves: its partitions go to a and c, who keep theirs.
        let after = uniform(&subs(&["a", "c"]), &parts, &three);
        assert!(three["a"].is_subset(&after["a"]) && three["c"].is_subset(&after["c"]));
        assert_eq!([after["a"].len(), after["c"].len()], [3, 3]);
        // 7 partitions: the member that held 4 keeps 4.
        let seven = BTreeMap::from([("t".to_owned(), 7)]);
        let held = HashMap::from([
            ("b".to_owned(), tps(&[0, 1, 2, 3])),
            ("a".to_owned(), tps(&[4, 5, 6])),
        ]);
        let again = uniform(&subs(&["a", "b"]), &seven, &held);
        assert_eq!(again, held);
    }

    #[test]
    fn a_static_instance_id_is_taken_until_released_with_epoch_minus_2() {
        let topics = Topics(BTreeMap::from([(
            "t".to_owned(),
            (uuid::Uuid::new_v4(), 4),
        )]));
        let mut g = ConsumerGroup::new("g", Instant::now());
        let now = Instant::now();
        let statik = |member: &str, epoch: i32, instance: &str| Heartbeat {
            instance_id: Some(instance.to_owned()),
            ..beat(member, epoch, None)
        };
        let a = g.heartbeat(statik("a", 0, "host-a"), &topics, now, 10);
        assert_eq!(count(&a), 4);
        // Another member with a's instance id while a is there: refused.
        let dup = g.heartbeat(statik("a2", 0, "host-a"), &topics, now, 10);
        let (code, message) = dup.error.expect("the instance id is in use");
        assert_eq!(code, ResponseError::UnreleasedInstanceId);
        assert!(message.contains("host-a"), "{message}");
        // a leaves as a static member: it keeps its place and partitions...
        let left = g.heartbeat(statik("a", -2, "host-a"), &topics, now, 10);
        assert_eq!((left.error, left.member_epoch), (None, -2));
        assert!(!g.is_empty());
        // ...and its old member id is fenced, ...
        let stale = g.heartbeat(statik("a", 1, "host-a"), &topics, now, 10);
        assert_eq!(stale.error.unwrap().0, ResponseError::FencedMemberEpoch);
        // ...until its instance comes back under a new member id, with the
        // same epoch and partitions: no rebalance.
        let back = g.heartbeat(statik("a3", 0, "host-a"), &topics, now, 10);
        assert_eq!(
            (&back.error, back.member_epoch, count(&back)),
            (&None, 1, 4)
        );
        // An expired static member frees its instance id.
        g.heartbeat(statik("a3", -2, "host-a"), &topics, now, 10);
        assert_eq!(g.tick(now + SESSION_TIMEOUT).len(), 1);
        let fresh = g.heartbeat(statik("a4", 0, "host-a"), &topics, now, 10);
        assert_eq!((fresh.error, fresh.member_epoch), (None, 3));
    }

    #[test]
    fn the_assignors_split_as_documented() {
        let subs: BTreeMap<String, BTreeSet<String>> = ["m1", "m2", "m3"]
            .iter()
            .map(|m| {
                (
                    (*m).to_owned(),
                    BTreeSet::from(["t".to_owned(), "u".to_owned()]),
                )
            })
            .collect();
        let parts = BTreeMap::from([("t".to_owned(), 4), ("u".to_owned(), 2)]);
        let r = range(&subs, &parts);
        assert_eq!(
            r["m1"],
            BTreeSet::from([("t".into(), 0), ("t".into(), 1), ("u".into(), 0)])
        );
        assert_eq!(r["m3"], BTreeSet::from([("t".into(), 3)]));
        let u = uniform(&subs, &parts, &HashMap::new());
        let sizes: Vec<usize> = ["m1", "m2", "m3"].iter().map(|m| u[*m].len()).collect();
        assert_eq!(sizes, [2, 2, 2]);
        let all: BTreeSet<Tp> = u.values().flatten().cloned().collect();
        assert_eq!(all.len(), 6);
    }
}
