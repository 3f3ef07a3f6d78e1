//! The classic group protocol's state machine: members join, the leader
//! assigns, everyone syncs and heartbeats; a join, a leave or a missed
//! session timeout starts a rebalance.
//!
//! It is synchronous and takes the time as an argument: a request either
//! gets its answer at once or a receiver that a later request, or the
//! periodic [`Coordinator::tick`], completes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

use super::consumer::{Beat, Catalog, ConsumerGroup, DescribedConsumerGroup, Heartbeat};
use super::ties::{Assigned, Ties, assigned_partitions, host_ip};
use super::{GroupListing, GroupState, GroupSummary, GroupsConfig, MemberSummary};

/// An answer now, or one to wait for.
pub(crate) enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

impl<T> Reply<T> {
    /// The answer; `lost` when the coordinator dropped the request.
    pub(crate) async fn wait(self, lost: impl FnOnce() -> T) -> T {
        match self {
            Reply::Now(t) => t,
            Reply::Later(rx) => rx.await.unwrap_or_else(|_| lost()),
        }
    }
}

/// A JoinGroup, in any version.
#[derive(Clone, Debug)]
pub(crate) struct JoinRequest {
    pub(crate) group_id: String,
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout_ms: i32,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) protocol_type: String,
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// v4+: a new member first gets MEMBER_ID_REQUIRED and an id.
    pub(crate) require_known_member_id: bool,
    /// v9+: a static leader that rejoins need not assign again.
    pub(crate) supports_skip_assignment: bool,
}

/// A member as the leader sees it in its JoinGroup answer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JoinedMember {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) metadata: Bytes,
}

/// The answer to a JoinGroup.
#[derive(Clone, Debug)]
pub(crate) struct JoinOutcome {
    pub(crate) error: Option<ResponseError>,
    pub(crate) generation_id: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    pub(crate) members: Vec<JoinedMember>,
    pub(crate) skip_assignment: bool,
}

impl JoinOutcome {
    pub(crate) fn failed(error: ResponseError, member_id: &str) -> Self {
        JoinOutcome {
            error: Some(error),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_owned(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

/// A SyncGroup, in any version.
#[derive(Clone, Debug)]
pub(crate) struct SyncRequest {
    pub(crate) group_id: String,
    pub(crate) generation_id: i32,
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) assignments: Vec<(String, Bytes)>,
}

/// The answer to a SyncGroup.
#[derive(Clone, Debug)]
pub(crate) struct SyncOutcome {
    pub(crate) error: Option<ResponseError>,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) assignment: Bytes,
}

impl SyncOutcome {
    pub(crate) fn failed(error: ResponseError) -> Self {
        SyncOutcome {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// A member named in a LeaveGroup.
#[derive(Clone, Debug)]
pub(crate) struct LeavingMember {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// When the member is gone unless it heartbeats, joins or syncs.
    expires: Instant,
    joining: Option<oneshot::Sender<JoinOutcome>>,
    syncing: Option<oneshot::Sender<SyncOutcome>>,
    /// Join order: the longest-standing member leads.
    seq: u64,
}

impl Member {
    fn metadata(&self, protocol: Option<&str>) -> Bytes {
        protocol
            .and_then(|p| self.protocols.iter().find(|(n, _)| n == p))
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn keep_alive(&mut self, now: Instant) {
        self.expires = now + self.session_timeout;
    }

    fn answer_join(&mut self, outcome: JoinOutcome) {
        if let Some(tx) = self.joining.take() {
            let _ = tx.send(outcome);
        }
    }

    fn answer_sync(&mut self, outcome: SyncOutcome) {
        if let Some(tx) = self.syncing.take() {
            let _ = tx.send(outcome);
        }
    }
}

struct Group {
    id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: HashMap<String, Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, until they join or expire.
    pending: HashMap<String, Instant>,
    /// group.instance.id → member id.
    statics: HashMap<String, String>,
    rebalance_started: Option<Instant>,
    /// The initial delay of a group that was empty: more members may come.
    not_before: Option<Instant>,
    sync_deadline: Option<Instant>,
    /// Since when the group has had no members.
    emptied_at: Option<Instant>,
    /// Members, their client ids, hosts or assignments changed since the
    /// group was last put in the fetch ties.
    ties_dirty: bool,
}

impl Group {
    fn new(id: &str, now: Instant) -> Self {
        Group {
            id: id.to_owned(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: HashMap::new(),
            pending: HashMap::new(),
            statics: HashMap::new(),
            rebalance_started: None,
            not_before: None,
            sync_deadline: None,
            emptied_at: Some(now),
            ties_dirty: false,
        }
    }

    /// Every partition a member of this `consumer` group was assigned, with
    /// the member's client id and host: what ties a Fetch to the group.
    fn assigned(&self) -> Vec<Assigned> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return Vec::new();
        }
        let mut out = Vec::new();
        for m in self.members.values() {
            let Some(host) = host_ip(&m.client_host) else {
                continue;
            };
            let Some(topics) = assigned_partitions(&m.assignment) else {
                tracing::debug!(group = %self.id, member = %m.id, "assignment not in the consumer protocol's format: no fetch is tied to it");
                continue;
            };
            for (topic, partitions) in topics {
                for partition in partitions {
                    out.push(Assigned {
                        client_id: m.client_id.clone(),
                        host,
                        topic: topic.clone(),
                        partition,
                    });
                }
            }
        }
        out
    }

    fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id
            .and_then(|i| self.statics.get(i))
            .is_some_and(|id| id != member_id)
    }

    /// Whether a member with these protocols may join, next to the others.
    fn accepts(&self, req: &JoinRequest) -> bool {
        let others: Vec<&Member> = self
            .members
            .values()
            .filter(|m| m.id != req.member_id)
            .collect();
        if others.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(req.protocol_type.as_str()) {
            return false;
        }
        let mut common: HashSet<&str> = others[0]
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        for m in &others[1..] {
            let names: HashSet<&str> = m.protocols.iter().map(|(n, _)| n.as_str()).collect();
            common.retain(|n| names.contains(n));
        }
        req.protocols
            .iter()
            .any(|(n, _)| common.contains(n.as_str()))
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> Option<String> {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        let first = members.first()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| {
                members
                    .iter()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == n))
            })
            .collect();
        let mut votes: Vec<(&str, usize)> = candidates.iter().map(|c| (*c, 0)).collect();
        for m in &members {
            if let Some((name, _)) = m
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n.as_str()))
                && let Some(v) = votes.iter_mut().find(|(c, _)| c == name)
            {
                v.1 += 1;
            }
        }
        // Ties go to the longest-standing member's preference.
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes
            .iter()
            .find(|(_, n)| *n == best)
            .map(|(c, _)| (*c).to_owned())
            .or_else(|| first.protocols.first().map(|(n, _)| n.clone()))
    }

    fn max_rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    fn is_leader(&self, member_id: &str) -> bool {
        self.leader.as_deref() == Some(member_id)
    }

    fn add_member(&mut self, member: Member) {
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(member.id.clone());
        }
        self.emptied_at = None;
        self.ties_dirty = true;
        if let Some(i) = &member.instance_id {
            self.statics.insert(i.clone(), member.id.clone());
        }
        self.members.insert(member.id.clone(), member);
    }

    /// Takes a member out without starting a rebalance.
    fn detach_member(&mut self, id: &str) -> Option<Member> {
        let mut m = self.members.remove(id)?;
        self.ties_dirty = true;
        if let Some(i) = &m.instance_id
            && self.statics.get(i).is_some_and(|s| s == id)
        {
            self.statics.remove(i);
        }
        if self.is_leader(id) {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.seq)
                .map(|m| m.id.clone());
        }
        m.answer_join(JoinOutcome::failed(ResponseError::UnknownMemberId, id));
        m.answer_sync(SyncOutcome::failed(ResponseError::UnknownMemberId));
        Some(m)
    }

    /// A member left or expired: the others rebalance.
    fn remove_member(&mut self, id: &str, now: Instant, config: &GroupsConfig) {
        if self.detach_member(id).is_none() {
            return;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now);
                // The last member leaving empties the group at once.
                self.try_complete_join(now, config);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now, config),
            GroupState::Empty | GroupState::Dead | GroupState::Reconciling => {}
        }
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == GroupState::CompletingRebalance {
            self.ties_dirty = true;
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                m.answer_sync(SyncOutcome::failed(ResponseError::RebalanceInProgress));
            }
        }
        self.not_before = (self.state == GroupState::Empty).then_some(now);
        self.state = GroupState::PreparingRebalance;
        self.rebalance_started = Some(now);
        self.sync_deadline = None;
    }

    fn try_complete_join(&mut self, now: Instant, config: &GroupsConfig) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined =
            self.pending.is_empty() && self.members.values().all(|m| m.joining.is_some());
        let delay_over = self
            .not_before
            .is_none_or(|t| now >= t + config.initial_rebalance_delay);
        let deadline = self
            .rebalance_started
            .is_some_and(|t| now >= t + self.max_rebalance_timeout());
        if (all_joined && delay_over) || deadline {
            self.complete_join(now);
        }
    }

    /// Ends the join phase: who has not rejoined is out (static members
    /// keep their place until their session expires), the generation moves
    /// on, and every joined member gets its answer.
    fn complete_join(&mut self, now: Instant) {
        let late: Vec<String> = self
            .members
            .values()
            .filter(|m| m.joining.is_none() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in late {
            self.detach_member(&id);
        }
        self.generation = self.generation.wrapping_add(1).max(1);
        self.rebalance_started = None;
        self.not_before = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            self.emptied_at = Some(now);
            return;
        }
        self.protocol = self.select_protocol();
        self.state = GroupState::CompletingRebalance;
        self.sync_deadline = Some(now + self.max_rebalance_timeout());
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.seq)
                .map(|m| m.id.clone());
        }
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let outcome = self.join_outcome(&id, true, false);
            if let Some(m) = self.members.get_mut(&id) {
                m.keep_alive(now);
                m.answer_join(outcome);
            }
        }
    }

    fn joined_members(&self) -> Vec<JoinedMember> {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        members
            .into_iter()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata(self.protocol.as_deref()),
            })
            .collect()
    }

    /// The answer for `member_id` in the current generation; the leader
    /// gets the members when `members_to_leader`.
    fn join_outcome(&self, member_id: &str, members_to_leader: bool, skip: bool) -> JoinOutcome {
        let leads = self.is_leader(member_id);
        JoinOutcome {
            error: None,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_owned(),
            members: if leads && members_to_leader {
                self.joined_members()
            } else {
                Vec::new()
            },
            skip_assignment: leads && skip,
        }
    }

    fn tick(&mut self, now: Instant, config: &GroupsConfig) {
        let before = self.pending.len();
        self.pending.retain(|_, expires| *expires > now);
        let pending_expired = self.pending.len() < before;
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.joining.is_none() && m.syncing.is_none() && m.expires <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "member expired: no heartbeat within its session timeout");
            self.remove_member(id, now, config);
        }
        if self.state == GroupState::CompletingRebalance
            && self.sync_deadline.is_some_and(|d| now >= d)
        {
            // The leader never sent the assignment: who has not synced is out.
            let silent: Vec<String> = self
                .members
                .values()
                .filter(|m| m.syncing.is_none())
                .map(|m| m.id.clone())
                .collect();
            for id in &silent {
                self.detach_member(id);
            }
            self.prepare_rebalance(now);
        }
        if pending_expired || self.state == GroupState::PreparingRebalance {
            self.try_complete_join(now, config);
        }
    }

    fn summary(&self) -> GroupSummary {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        GroupSummary {
            group: self.id.clone(),
            state: self.state,
            generation: self.generation,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: self.protocol.clone().unwrap_or_default(),
            leader: self.leader.clone(),
            members: members
                .into_iter()
                .map(|m| MemberSummary {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata(self.protocol.as_deref()),
                    assignment: m.assignment.clone(),
                })
                .collect(),
            group_type: "classic",
        }
    }
}

/// Every group's membership state.
pub(crate) struct Coordinator {
    config: GroupsConfig,
    groups: HashMap<String, Group>,
    /// Groups of the KIP-848 consumer protocol.
    consumers: HashMap<String, ConsumerGroup>,
    next_seq: u64,
    ties: Arc<Ties>,
}

impl Coordinator {
    pub(crate) fn new(config: GroupsConfig) -> Self {
        Coordinator {
            config,
            groups: HashMap::new(),
            consumers: HashMap::new(),
            next_seq: 0,
            ties: Arc::new(Ties::default()),
        }
    }

    /// A ConsumerGroupHeartbeat (KIP-848). A classic group of the same id
    /// is taken over while it has no members, and refused while it has.
    pub(crate) fn consumer_heartbeat(
        &mut self,
        hb: Heartbeat,
        catalog: &dyn Catalog,
        now: Instant,
    ) -> Beat {
        let group_id = hb.group_id.clone();
        if group_id.is_empty() {
            return Beat {
                error: Some((
                    ResponseError::InvalidGroupId,
                    "the group id is empty".into(),
                )),
                member_id: hb.member_id,
                member_epoch: hb.member_epoch,
                assignment: None,
            };
        }
        if let Some(classic) = self.groups.get(&group_id) {
            if !classic.members.is_empty() || !classic.pending.is_empty() {
                return Beat {
                    error: Some((
                        ResponseError::InconsistentGroupProtocol,
                        format!(
                            "group \"{group_id}\" has members of the classic protocol: it cannot take consumer-protocol members too"
                        ),
                    )),
                    member_id: hb.member_id,
                    member_epoch: hb.member_epoch,
                    assignment: None,
                };
            }
            self.groups.remove(&group_id);
        }
        let max = self.config.max_group_size;
        let group = self
            .consumers
            .entry(group_id.clone())
            .or_insert_with(|| ConsumerGroup::new(&group_id, now));
        let beat = group.heartbeat(hb, catalog, now, max);
        if group.ties_dirty {
            group.ties_dirty = false;
            self.ties.set(&group_id, group.assigned());
        }
        beat
    }

    /// ConsumerGroupDescribe: `None` when the id is no consumer-protocol group.
    pub(crate) fn describe_consumer(&self, group_id: &str) -> Option<DescribedConsumerGroup> {
        self.consumers.get(group_id).map(ConsumerGroup::described)
    }

    /// The fetch ties this coordinator keeps current.
    pub(crate) fn ties(&self) -> Arc<Ties> {
        self.ties.clone()
    }

    /// Puts a group whose members or assignments changed back in the ties.
    fn publish(&mut self, group_id: &str) {
        if let Some(g) = self.groups.get_mut(group_id)
            && g.ties_dirty
        {
            g.ties_dirty = false;
            self.ties.set(group_id, g.assigned());
        }
    }

    fn new_member_id(prefix: &str) -> String {
        // Kafka's shape: the client id (or instance id) and a UUID.
        format!("{prefix}-{}", uuid::Uuid::new_v4())
    }

    pub(crate) fn join(&mut self, req: JoinRequest, now: Instant) -> Reply<JoinOutcome> {
        let group_id = req.group_id.clone();
        let reply = self.join_group(req, now);
        self.publish(&group_id);
        reply
    }

    fn join_group(&mut self, req: JoinRequest, now: Instant) -> Reply<JoinOutcome> {
        let fail = |e| Reply::Now(JoinOutcome::failed(e, &req.member_id));
        if req.group_id.is_empty() {
            return fail(ResponseError::InvalidGroupId);
        }
        // A consumer-protocol group is taken over only while it is empty.
        if let Some(c) = self.consumers.get(&req.group_id) {
            if !c.is_empty() {
                return fail(ResponseError::InconsistentGroupProtocol);
            }
            self.consumers.remove(&req.group_id);
        }
        let session = req.session_timeout_ms;
        if session < 0
            || !(self.config.min_session_timeout..=self.config.max_session_timeout)
                .contains(&Duration::from_millis(session as u64))
        {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        if !req.member_id.is_empty() && !self.groups.contains_key(&req.group_id) {
            return fail(ResponseError::UnknownMemberId);
        }
        let config = self.config.clone();
        let group = self
            .groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(&req.group_id, now));
        if !group.accepts(&req) {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let known = group.members.contains_key(&req.member_id)
            || req
                .instance_id
                .as_ref()
                .is_some_and(|i| group.statics.contains_key(i));
        if !known && group.members.len() + group.pending.len() >= config.max_group_size {
            return fail(ResponseError::GroupMaxSizeReached);
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        if req.member_id.is_empty() {
            join_new(group, req, seq, now, &config)
        } else {
            join_known(group, req, seq, now, &config)
        }
    }

    pub(crate) fn sync(&mut self, req: SyncRequest, now: Instant) -> Reply<SyncOutcome> {
        let group_id = req.group_id.clone();
        let reply = self.sync_group(req, now);
        self.publish(&group_id);
        reply
    }

    fn sync_group(&mut self, req: SyncRequest, now: Instant) -> Reply<SyncOutcome> {
        let fail = |e| Reply::Now(SyncOutcome::failed(e));
        let Some(group) = self.groups.get_mut(&req.group_id) else {
            return fail(ResponseError::UnknownMemberId);
        };
        if group.is_fenced(&req.member_id, req.instance_id.as_deref()) {
            return fail(ResponseError::FencedInstanceId);
        }
        if !group.members.contains_key(&req.member_id) {
            return fail(ResponseError::UnknownMemberId);
        }
        if req.generation_id != group.generation {
            return fail(ResponseError::IllegalGeneration);
        }
        if req
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != group.protocol_type.as_ref())
            || req
                .protocol_name
                .as_ref()
                .is_some_and(|p| Some(p) != group.protocol.as_ref())
        {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let protocol_type = group.protocol_type.clone();
        let protocol_name = group.protocol.clone();
        let answer = |assignment: Bytes| SyncOutcome {
            error: None,
            protocol_type: protocol_type.clone(),
            protocol_name: protocol_name.clone(),
            assignment,
        };
        match group.state {
            GroupState::Empty | GroupState::Dead | GroupState::Reconciling => {
                fail(ResponseError::UnknownMemberId)
            }
            GroupState::PreparingRebalance => fail(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let Some(m) = group.members.get_mut(&req.member_id) else {
                    return fail(ResponseError::UnknownMemberId);
                };
                m.keep_alive(now);
                Reply::Now(answer(m.assignment.clone()))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = group.members.get_mut(&req.member_id) {
                    m.answer_sync(SyncOutcome::failed(ResponseError::RebalanceInProgress));
                    m.syncing = Some(tx);
                    m.keep_alive(now);
                }
                if group.is_leader(&req.member_id) {
                    let mut given: HashMap<String, Bytes> = req.assignments.into_iter().collect();
                    for m in group.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    group.state = GroupState::Stable;
                    group.sync_deadline = None;
                    group.ties_dirty = true;
                    for m in group.members.values_mut() {
                        let a = answer(m.assignment.clone());
                        m.answer_sync(a);
                    }
                }
                Reply::Later(rx)
            }
        }
    }

    pub(crate) fn heartbeat(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> Option<ResponseError> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if group.is_fenced(member_id, instance_id) {
            return Some(ResponseError::FencedInstanceId);
        }
        let state = group.state;
        let generation = group.generation;
        let Some(m) = group.members.get_mut(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if generation_id != generation {
            return Some(ResponseError::IllegalGeneration);
        }
        m.keep_alive(now);
        match state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            GroupState::Empty | GroupState::Dead | GroupState::Reconciling => {
                Some(ResponseError::UnknownMemberId)
            }
            GroupState::CompletingRebalance | GroupState::Stable => None,
        }
    }

    /// Takes members out; one answer per member, in order.
    pub(crate) fn leave(
        &mut self,
        group_id: &str,
        leaving: &[LeavingMember],
        now: Instant,
    ) -> Vec<Option<ResponseError>> {
        let answers = self.leave_group(group_id, leaving, now);
        self.publish(group_id);
        answers
    }

    fn leave_group(
        &mut self,
        group_id: &str,
        leaving: &[LeavingMember],
        now: Instant,
    ) -> Vec<Option<ResponseError>> {
        let config = self.config.clone();
        let Some(group) = self.groups.get_mut(group_id) else {
            return vec![Some(ResponseError::UnknownMemberId); leaving.len()];
        };
        leaving
            .iter()
            .map(|l| {
                let id = match (&l.instance_id, l.member_id.is_empty()) {
                    (Some(i), true) => match group.statics.get(i) {
                        Some(id) => id.clone(),
                        None => return Some(ResponseError::UnknownMemberId),
                    },
                    (Some(i), false) => match group.statics.get(i) {
                        Some(id) if *id == l.member_id => l.member_id.clone(),
                        Some(_) => return Some(ResponseError::FencedInstanceId),
                        None => return Some(ResponseError::UnknownMemberId),
                    },
                    (None, _) => l.member_id.clone(),
                };
                if group.pending.remove(&id).is_some() {
                    group.try_complete_join(now, &config);
                    None
                } else if group.members.contains_key(&id) {
                    tracing::debug!(group = %group.id, member = %id, "member left");
                    group.remove_member(&id, now, &config);
                    None
                } else {
                    Some(ResponseError::UnknownMemberId)
                }
            })
            .collect()
    }

    /// Whether an OffsetCommit by this member may write; a commit without
    /// a generation (-1) is allowed for a group without members.
    pub(crate) fn check_commit(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        if let Some(c) = self.consumers.get(group_id) {
            return c.check_commit(member_id, generation_id);
        }
        let Some(group) = self.groups.get_mut(group_id) else {
            if generation_id < 0 {
                self.groups
                    .insert(group_id.to_owned(), Group::new(group_id, now));
                return Ok(());
            }
            return Err(ResponseError::IllegalGeneration);
        };
        if generation_id < 0 && group.state == GroupState::Empty {
            return Ok(());
        }
        if group.is_fenced(member_id, instance_id) {
            return Err(ResponseError::FencedInstanceId);
        }
        let state = group.state;
        let generation = group.generation;
        let Some(m) = group.members.get_mut(member_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        if generation_id != generation {
            return Err(ResponseError::IllegalGeneration);
        }
        match state {
            GroupState::CompletingRebalance => Err(ResponseError::RebalanceInProgress),
            _ => {
                m.keep_alive(now);
                Ok(())
            }
        }
    }

    /// Makes sure a group known only from its committed offsets is listed.
    pub(crate) fn ensure_group(&mut self, group_id: &str) {
        if self.consumers.contains_key(group_id) {
            return;
        }
        self.groups
            .entry(group_id.to_owned())
            .or_insert_with(|| Group::new(group_id, Instant::now()));
    }

    pub(crate) fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        self.groups
            .get(group_id)
            .map(Group::summary)
            .or_else(|| self.consumers.get(group_id).map(ConsumerGroup::summary))
    }

    pub(crate) fn list(&self) -> Vec<GroupListing> {
        let mut all: Vec<GroupListing> = self
            .groups
            .values()
            .map(|g| GroupListing {
                group: g.id.clone(),
                state: g.state,
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                group_type: "classic",
            })
            .chain(self.consumers.values().map(ConsumerGroup::listing))
            .collect();
        all.sort_by(|a, b| a.group.cmp(&b.group));
        all
    }

    /// Forgets an empty group; `GroupIdNotFound` when there is none.
    /// Members past their session timeout are out first, rather than at the
    /// next tick: a client that waits out the timeout finds the group empty.
    pub(crate) fn delete(&mut self, group_id: &str) -> Result<(), ResponseError> {
        self.tick_group(group_id, Instant::now());
        if let Some(c) = self.consumers.get(group_id) {
            if !c.is_empty() {
                return Err(ResponseError::NonEmptyGroup);
            }
            self.consumers.remove(group_id);
            self.ties.forget(group_id);
            return Ok(());
        }
        match self.groups.get(group_id) {
            None => Err(ResponseError::GroupIdNotFound),
            Some(g) if g.state != GroupState::Empty || !g.members.is_empty() => {
                Err(ResponseError::NonEmptyGroup)
            }
            Some(_) => {
                self.groups.remove(group_id);
                self.ties.forget(group_id);
                Ok(())
            }
        }
    }

    /// Expires members, pending ids, rebalance and sync deadlines.
    pub(crate) fn tick(&mut self, now: Instant) {
        for g in self.groups.values_mut() {
            tick_classic(g, now, &self.config, &self.ties);
        }
        for (id, g) in &mut self.consumers {
            tick_consumer(id, g, now, &self.ties);
        }
    }

    /// `tick` for one group.
    fn tick_group(&mut self, group_id: &str, now: Instant) {
        if let Some(g) = self.groups.get_mut(group_id) {
            tick_classic(g, now, &self.config, &self.ties);
        }
        if let Some(g) = self.consumers.get_mut(group_id) {
            tick_consumer(group_id, g, now, &self.ties);
        }
    }

    /// Forgets groups that have been empty for `empty_group_retention` and
    /// have no committed offsets, as Kafka's offsets cleanup does.
    /// Returns the groups forgotten.
    pub(crate) fn sweep(
        &mut self,
        now: Instant,
        has_offsets: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let retention = self.config.empty_group_retention;
        let mut gone = Vec::new();
        self.groups.retain(|id, g| {
            let idle = g.state == GroupState::Empty
                && g.members.is_empty()
                && g.pending.is_empty()
                && g.emptied_at.is_some_and(|t| now >= t + retention);
            let keep = !idle || has_offsets(id);
            if !keep {
                gone.push(id.clone());
            }
            keep
        });
        self.consumers.retain(|id, g| {
            let idle = g.is_empty() && g.emptied_at.is_some_and(|t| now >= t + retention);
            let keep = !idle || has_offsets(id);
            if !keep {
                gone.push(id.clone());
            }
            keep
        });
        for id in &gone {
            self.ties.forget(id);
        }
        gone
    }
}

fn tick_classic(g: &mut Group, now: Instant, config: &GroupsConfig, ties: &Ties) {
    g.tick(now, config);
    if g.ties_dirty {
        g.ties_dirty = false;
        ties.set(&g.id, g.assigned());
    }
}

fn tick_consumer(id: &str, g: &mut ConsumerGroup, now: Instant, ties: &Ties) {
    g.tick(now);
    if g.ties_dirty {
        g.ties_dirty = false;
        ties.set(id, g.assigned());
    }
}

fn new_member(req: &JoinRequest, id: String, seq: u64, now: Instant) -> Member {
    let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
    // v0 has no rebalance timeout: the session timeout stands in for it.
    let rebalance = if req.rebalance_timeout_ms > 0 {
        Duration::from_millis(req.rebalance_timeout_ms as u64)
    } else {
        session
    };
    Member {
        id,
        instance_id: req.instance_id.clone(),
        client_id: req.client_id.clone(),
        client_host: req.client_host.clone(),
        session_timeout: session,
        rebalance_timeout: rebalance,
        protocol_type: req.protocol_type.clone(),
        protocols: req.protocols.clone(),
        assignment: Bytes::new(),
        expires: now + session,
        joining: None,
        syncing: None,
        seq,
    }
}

fn add_and_rebalance(
    group: &mut Group,
    mut member: Member,
    now: Instant,
    config: &GroupsConfig,
) -> Reply<JoinOutcome> {
    let (tx, rx) = oneshot::channel();
    member.joining = Some(tx);
    group.add_member(member);
    if group.state != GroupState::PreparingRebalance {
        group.prepare_rebalance(now);
    }
    group.try_complete_join(now, config);
    Reply::Later(rx)
}

fn join_new(
    group: &mut Group,
    req: JoinRequest,
    seq: u64,
    now: Instant,
    config: &GroupsConfig,
) -> Reply<JoinOutcome> {
    if let Some(instance) = req.instance_id.clone() {
        return match group.statics.get(&instance).cloned() {
            Some(old_id) => replace_static(group, &old_id, req, now, config),
            None => {
                let id = Coordinator::new_member_id(&instance);
                let member = new_member(&req, id, seq, now);
                add_and_rebalance(group, member, now, config)
            }
        };
    }
    let prefix = if req.client_id.is_empty() {
        "member"
    } else {
        req.client_id.as_str()
    };
    let id = Coordinator::new_member_id(prefix);
    if req.require_known_member_id {
        let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        group.pending.insert(id.clone(), now + session);
        return Reply::Now(JoinOutcome::failed(ResponseError::MemberIdRequired, &id));
    }
    let member = new_member(&req, id, seq, now);
    add_and_rebalance(group, member, now, config)
}

/// A static member came back under a new member id: the old id is fenced,
/// and a rebalance happens only where the group needs one.
fn replace_static(
    group: &mut Group,
    old_id: &str,
    req: JoinRequest,
    now: Instant,
    config: &GroupsConfig,
) -> Reply<JoinOutcome> {
    group.ties_dirty = true;
    let Some(mut old) = group.members.remove(old_id) else {
        return Reply::Now(JoinOutcome::failed(
            ResponseError::UnknownMemberId,
            &req.member_id,
        ));
    };
    old.answer_join(JoinOutcome::failed(ResponseError::FencedInstanceId, old_id));
    old.answer_sync(SyncOutcome::failed(ResponseError::FencedInstanceId));
    let prefix = req.instance_id.as_deref().unwrap_or("member");
    let new_id = Coordinator::new_member_id(prefix);
    let unchanged = old.protocols == req.protocols && old.protocol_type == req.protocol_type;
    let mut member = new_member(&req, new_id.clone(), old.seq, now);
    member.assignment = old.assignment;
    if group.is_leader(old_id) {
        group.leader = Some(new_id.clone());
    }
    let state = group.state;
    if state == GroupState::Stable && unchanged {
        group.add_member(member);
        tracing::info!(group = %group.id, member = %new_id, "static member rejoined without a rebalance");
        let skip = req.supports_skip_assignment;
        return Reply::Now(group.join_outcome(&new_id, skip, skip));
    }
    match state {
        GroupState::PreparingRebalance => {
            let (tx, rx) = oneshot::channel();
            member.joining = Some(tx);
            group.add_member(member);
            group.try_complete_join(now, config);
            Reply::Later(rx)
        }
        _ => add_and_rebalance(group, member, now, config),
    }
}

fn join_known(
    group: &mut Group,
    req: JoinRequest,
    seq: u64,
    now: Instant,
    config: &GroupsConfig,
) -> Reply<JoinOutcome> {
    let fail = |e| Reply::Now(JoinOutcome::failed(e, &req.member_id));
    if group.pending.remove(&req.member_id).is_some() {
        let member = new_member(&req, req.member_id.clone(), seq, now);
        return add_and_rebalance(group, member, now, config);
    }
    if let Some(i) = &req.instance_id {
        match group.statics.get(i) {
            Some(id) if *id != req.member_id => return fail(ResponseError::FencedInstanceId),
            None => return fail(ResponseError::UnknownMemberId),
            Some(_) => {}
        }
    }
    let state = group.state;
    let is_leader = group.is_leader(&req.member_id);
    let Some(member) = group.members.get_mut(&req.member_id) else {
        return fail(ResponseError::UnknownMemberId);
    };
    let unchanged = member.protocols == req.protocols;
    if member.client_id != req.client_id || member.client_host != req.client_host {
        group.ties_dirty = true;
    }
    member.client_id = req.client_id.clone();
    member.client_host = req.client_host.clone();
    member.session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
    if req.rebalance_timeout_ms > 0 {
        member.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms as u64);
    }
    member.keep_alive(now);
    let wait = |member: &mut Member| {
        let (tx, rx) = oneshot::channel();
        member.answer_join(JoinOutcome::failed(
            ResponseError::RebalanceInProgress,
            &member.id,
        ));
        member.joining = Some(tx);
        rx
    };
    match state {
        GroupState::Empty | GroupState::Dead | GroupState::Reconciling => {
            fail(ResponseError::UnknownMemberId)
        }
        GroupState::PreparingRebalance => {
            member.protocols = req.protocols;
            let rx = wait(member);
            group.try_complete_join(now, config);
            Reply::Later(rx)
        }
        GroupState::CompletingRebalance | GroupState::Stable
            if unchanged && !(state == GroupState::Stable && is_leader) =>
        {
            Reply::Now(group.join_outcome(&req.member_id, true, false))
        }
        GroupState::CompletingRebalance | GroupState::Stable => {
            member.protocols = req.protocols;
            let rx = wait(member);
            group.prepare_rebalance(now);
            group.try_complete_join(now, config);
            Reply::Later(rx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GroupsConfig {
        GroupsConfig::default()
    }

    fn join(group: &str, member: &str, protocols: &[(&str, &[u8])]) -> JoinRequest {
        JoinRequest {
            group_id: group.into(),
            member_id: member.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 1_000,
            rebalance_timeout_ms: 2_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|(n, m)| ((*n).to_owned(), Bytes::copy_from_slice(m)))
                .collect(),
            require_known_member_id: false,
            supports_skip_assignment: false,
        }
    }

    fn now_answer<T>(r: Reply<T>) -> T {
        match r {
            Reply::Now(t) => t,
            Reply::Later(mut rx) => rx.try_recv().expect("answered"),
        }
    }

    #[test]
    fn the_protocol_most_members_prefer_among_the_common_ones_wins() {
        let mut c = Coordinator::new(config());
        let t = Instant::now();
        let a = now_answer(c.join(join("g", "", &[("range", b"a"), ("rr", b"a")]), t));
        assert_eq!(a.protocol_name.as_deref(), Some("range"));
        let a_id = a.member_id;
        // b prefers rr; a must rejoin for the rebalance to complete.
        let b = c.join(join("g", "", &[("rr", b"b"), ("range", b"b")]), t);
        let c2 = c.join(join("g", "", &[("rr", b"c"), ("range", b"c")]), t);
        let a2 = now_answer(c.join(join("g", &a_id, &[("range", b"a"), ("rr", b"a")]), t));
        assert_eq!(a2.protocol_name.as_deref(), Some("rr"));
        assert_eq!(a2.members.len(), 3, "the leader sees every member");
        assert_eq!(now_answer(b).protocol_name.as_deref(), Some("rr"));
        assert!(
            now_answer(c2).members.is_empty(),
            "followers see no members"
        );
        let refused = now_answer(c.join(join("g", "", &[("sticky", b"d")]), t));
        assert_eq!(
            refused.error,
            Some(ResponseError::InconsistentGroupProtocol)
        );
    }

    #[test]
    fn a_member_that_does_not_rejoin_in_time_is_dropped_at_the_deadline() {
        let mut c = Coordinator::new(config());
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let a = now_answer(c.join(join("g", "", &[("range", b"")]), t));
        assert_eq!(a.generation_id, 1);
        let Reply::Later(mut b) = c.join(join("g", "", &[("range", b"")]), t) else {
            panic!("a second member waits for the first to rejoin");
        };
        // a heartbeats, so only the rebalance timeout (2 s) can drop it.
        for at in [600, 1_200, 1_800] {
            assert_eq!(
                c.heartbeat("g", 1, &a.member_id, None, ms(at)),
                Some(ResponseError::RebalanceInProgress)
            );
            c.tick(ms(at));
        }
        c.tick(ms(1_999));
        assert!(b.try_recv().is_err());
        c.tick(ms(2_000));
        let b = b.try_recv().unwrap();
        assert_eq!(b.generation_id, 2);
        assert_eq!(b.leader, b.member_id);
        assert_eq!(b.members.len(), 1);
        assert_eq!(
            c.heartbeat("g", 1, &a.member_id, None, ms(2_001)),
            Some(ResponseError::UnknownMemberId)
        );
    }

    #[test]
    fn a_static_member_that_rejoins_unchanged_keeps_its_assignment_without_a_rebalance() {
        let mut c = Coordinator::new(config());
        let t = Instant::now();
        let mut req = join("g", "", &[("range", b"m")]);
        req.instance_id = Some("i-1".into());
        let a = now_answer(c.join(req.clone(), t));
        let synced = now_answer(c.sync(
            SyncRequest {
                group_id: "g".into(),
                generation_id: a.generation_id,
                member_id: a.member_id.clone(),
                instance_id: Some("i-1".into()),
                protocol_type: None,
                protocol_name: None,
                assignments: vec![(a.member_id.clone(), Bytes::from_static(b"p0"))],
            },
            t,
        ));
        assert_eq!(synced.assignment, Bytes::from_static(b"p0"));
        let again = now_answer(c.join(req, t));
        assert_eq!(again.error, None);
        assert_ne!(again.member_id, a.member_id);
        assert_eq!(again.generation_id, a.generation_id, "no rebalance");
        assert_eq!(
            c.heartbeat("g", a.generation_id, &a.member_id, Some("i-1"), t),
            Some(ResponseError::FencedInstanceId)
        );
        let summary = c.describe("g").unwrap();
        assert_eq!(summary.state, GroupState::Stable);
        assert_eq!(summary.members.len(), 1);
        assert_eq!(summary.members[0].assignment, Bytes::from_static(b"p0"));
    }

    #[test]
    fn a_group_whose_members_timed_out_can_be_deleted_before_the_next_tick() {
        let mut c = Coordinator::new(config());
        // The member's last sign of life was 5 s ago, its session is 1 s.
        let t = Instant::now() - Duration::from_secs(5);
        let a = now_answer(c.join(join("g", "", &[("range", b"")]), t));
        now_answer(c.sync(
            SyncRequest {
                group_id: "g".into(),
                generation_id: a.generation_id,
                member_id: a.member_id.clone(),
                instance_id: None,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![(a.member_id.clone(), Bytes::from_static(b"p0"))],
            },
            t,
        ));
        assert_eq!(c.describe("g").unwrap().members.len(), 1, "no tick yet");
        assert_eq!(c.delete("g"), Ok(()));
        assert!(c.describe("g").is_none());
        assert_eq!(c.delete("g"), Err(ResponseError::GroupIdNotFound));
    }

    #[test]
    fn groups_empty_for_long_and_without_offsets_are_forgotten() {
        let mut c = Coordinator::new(config());
        let t = Instant::now();
        let a = now_answer(c.join(join("gone", "", &[("range", b"")]), t));
        c.leave(
            "gone",
            &[LeavingMember {
                member_id: a.member_id,
                instance_id: None,
            }],
            t,
        );
        c.ensure_group("kept");
        let retention = config().empty_group_retention;
        c.sweep(t + retention / 2, |_| false);
        assert_eq!(c.list().len(), 2);
        c.sweep(t + retention * 2, |g| g == "kept");
        let left: Vec<String> = c.list().into_iter().map(|g| g.group).collect();
        assert_eq!(left, vec!["kept".to_owned()]);
    }
}
