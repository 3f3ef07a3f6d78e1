//! Consumer groups over TCP against an in-process broker: joining, the
//! leader's assignment, heartbeats and rebalances, session expiry, static
//! membership, leaving, committed offsets and their durability, and the
//! errors clients rely on.

// Helpers outside #[test] functions unwrap too; a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod client;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiVersionsRequest, DeleteGroupsRequest, DeleteTopicsRequest, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use tally_broker::config::BrokerConfig;
use tally_broker::groups::{CommittedOffset, Groups, GroupsConfig};
use tally_broker::server::{RunningBroker, start};

use client::{Client, topic_name};

const TOPIC: &str = "events";
const PARTITIONS: i32 = 3;

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

fn gid(v: &str) -> GroupId {
    GroupId(s(v))
}

fn config(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        data_dir: dir.to_path_buf(),
        // The protocol's steps, not Kafka's 3 s wait for more members.
        group_initial_rebalance_delay: std::time::Duration::ZERO,
        ..BrokerConfig::default()
    }
}

async fn start_with(cfg: BrokerConfig) -> RunningBroker {
    let broker = start(cfg).await.unwrap();
    if broker.broker().topics().get(TOPIC).is_none() {
        broker
            .broker()
            .topics()
            .create(TOPIC, PARTITIONS, Default::default(), false)
            .unwrap();
    }
    broker
}

async fn start_in(dir: &Path) -> RunningBroker {
    start_with(config(dir)).await
}

/// Stops the broker and waits until nothing holds it, so that its data
/// folder can be opened again.
async fn stop(broker: RunningBroker) {
    let weak = Arc::downgrade(broker.broker());
    broker.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while weak.upgrade().is_some() {
        assert!(Instant::now() < deadline, "the broker is still in use");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn join_request(
    group: &str,
    member_id: &str,
    instance: Option<&str>,
    session_ms: i32,
    metadata: Bytes,
) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(gid(group))
        .with_session_timeout_ms(session_ms)
        .with_rebalance_timeout_ms(session_ms)
        .with_member_id(s(member_id))
        .with_group_instance_id(instance.map(s))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(metadata),
        ])
}

/// One group member on a connection of its own, speaking JoinGroup v5,
/// SyncGroup v3 and Heartbeat v3 as librdkafka and kafka-python do.
struct Member {
    client: Client,
    group: String,
    id: String,
    instance: Option<String>,
    generation: i32,
    session_ms: i32,
    assignment: Bytes,
}

impl Member {
    async fn connect(addr: std::net::SocketAddr, group: &str) -> Member {
        Member {
            client: Client::connect(addr).await.unwrap(),
            group: group.to_owned(),
            id: String::new(),
            instance: None,
            generation: -1,
            session_ms: 3_000,
            assignment: Bytes::new(),
        }
    }

    async fn join_once(&mut self) -> JoinGroupResponse {
        let request = join_request(
            &self.group,
            &self.id,
            self.instance.as_deref(),
            self.session_ms,
            Bytes::from(format!("subscription of {TOPIC}")),
        );
        self.client.call(&request, 5).await.unwrap()
    }

    /// A new dynamic member's first JoinGroup: MEMBER_ID_REQUIRED and an id.
    async fn take_id(&mut self) {
        assert!(self.id.is_empty());
        let r = self.join_once().await;
        assert_eq!(r.error_code, MEMBER_ID_REQUIRED);
        assert!(!r.member_id.is_empty());
        self.id = r.member_id.to_string();
    }

    /// Joins until the rebalance completes.
    async fn join(&mut self) -> JoinGroupResponse {
        if self.id.is_empty() && self.instance.is_none() {
            self.take_id().await;
        }
        let r = self.join_once().await;
        assert_eq!(r.error_code, NONE, "JoinGroup of {}", self.id);
        self.id = r.member_id.to_string();
        self.generation = r.generation_id;
        r
    }

    async fn sync(&mut self, assignments: Vec<(String, Bytes)>) -> i16 {
        let request = SyncGroupRequest::default()
            .with_group_id(gid(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(s(&self.id))
            .with_group_instance_id(self.instance.as_deref().map(s))
            .with_assignments(
                assignments
                    .into_iter()
                    .map(|(m, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(s(&m))
                            .with_assignment(a)
                    })
                    .collect(),
            );
        let r = self.client.call(&request, 3).await.unwrap();
        self.assignment = r.assignment;
        r.error_code
    }

    async fn heartbeat(&mut self) -> i16 {
        let request = HeartbeatRequest::default()
            .with_group_id(gid(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(s(&self.id))
            .with_group_instance_id(self.instance.as_deref().map(s));
        self.client.call(&request, 3).await.unwrap().error_code
    }

    fn partitions(&self) -> Vec<i32> {
        self.assignment.iter().map(|p| i32::from(*p)).collect()
    }
}

/// The test's assignor: partition p goes to the (p mod n)-th member id.
fn assign(members: &[String]) -> Vec<(String, Bytes)> {
    let mut sorted = members.to_vec();
    sorted.sort();
    sorted
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let parts: Vec<u8> = (0..PARTITIONS as u8)
                .filter(|p| usize::from(*p) % sorted.len() == i)
                .collect();
            (m.clone(), Bytes::from(parts))
        })
        .collect()
}

type Joining = tokio::task::JoinHandle<(Member, JoinGroupResponse)>;

fn start_join(mut m: Member) -> Joining {
    tokio::spawn(async move {
        let r = m.join().await;
        (m, r)
    })
}

/// Every member joins at once, the leader assigns, everyone syncs.
async fn rebalance(members: Vec<Member>) -> Vec<Member> {
    finish(members.into_iter().map(start_join).collect()).await
}

/// Heartbeats until each member hears of a rebalance.
async fn wait_for_rebalance(members: &mut [Member]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for m in members {
        loop {
            let e = m.heartbeat().await;
            if e == REBALANCE_IN_PROGRESS {
                break;
            }
            assert_eq!(e, NONE);
            assert!(Instant::now() < deadline, "no rebalance announced");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A newcomer joins a stable group; the members hear of the rebalance
/// from their heartbeats and rejoin, and everyone syncs.
async fn grow(mut members: Vec<Member>, newcomer: Member) -> Vec<Member> {
    let newcomer = start_join(newcomer);
    wait_for_rebalance(&mut members).await;
    let mut joins: Vec<Joining> = members.into_iter().map(start_join).collect();
    joins.push(newcomer);
    finish(joins).await
}

/// Awaits the joins of one generation, then the leader assigns and
/// everyone syncs.
async fn finish(joins: Vec<Joining>) -> Vec<Member> {
    let mut joined = Vec::new();
    for j in joins {
        joined.push(j.await.unwrap());
    }
    let generation = joined[0].1.generation_id;
    assert!(joined.iter().all(|(_, r)| r.generation_id == generation));
    let leaders: Vec<&JoinGroupResponse> = joined
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.leader == r.member_id)
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader");
    let leader = leaders[0].member_id.to_string();
    let ids: Vec<String> = leaders[0]
        .members
        .iter()
        .map(|m| m.member_id.to_string())
        .collect();
    assert_eq!(ids.len(), joined.len(), "the leader sees every member");
    for (m, r) in &joined {
        if r.member_id.as_str() != leader {
            assert!(r.members.is_empty(), "followers see no members");
        }
        assert!(ids.contains(&m.id));
    }
    let plan = assign(&ids);
    let syncs: Vec<_> = joined
        .into_iter()
        .map(|(mut m, _)| {
            let plan = if m.id == leader { plan.clone() } else { vec![] };
            tokio::spawn(async move {
                let e = m.sync(plan).await;
                assert_eq!(e, NONE, "SyncGroup of {}", m.id);
                m
            })
        })
        .collect();
    let mut synced = Vec::new();
    for s in syncs {
        synced.push(s.await.unwrap());
    }
    synced
}

fn assert_disjoint_cover(members: &[Member]) {
    let mut seen = BTreeSet::new();
    for m in members {
        for p in m.partitions() {
            assert!(seen.insert(p), "partition {p} assigned twice");
        }
    }
    assert_eq!(seen, (0..PARTITIONS).collect::<BTreeSet<_>>());
}

async fn describe(client: &mut Client, group: &str, version: i16) -> DescribeGroupsResponse {
    let request = DescribeGroupsRequest::default().with_groups(vec![gid(group)]);
    client.call(&request, version).await.unwrap()
}

#[tokio::test]
async fn two_members_join_sync_and_heartbeat_with_disjoint_assignments() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut a = Member::connect(broker.addr(), "billing").await;
    let mut b = Member::connect(broker.addr(), "billing").await;
    // Both ids are handed out first, so that both join one generation.
    a.take_id().await;
    b.take_id().await;
    let mut members = rebalance(vec![a, b]).await;
    assert_eq!(members[0].generation, 1);
    assert_disjoint_cover(&members);
    assert!(members.iter().all(|m| !m.partitions().is_empty()));
    for m in &mut members {
        assert_eq!(m.heartbeat().await, NONE);
    }

    let mut admin = Client::connect(broker.addr()).await.unwrap();
    let d = describe(&mut admin, "billing", 5).await;
    let g = &d.groups[0];
    assert_eq!(g.error_code, NONE);
    assert_eq!(g.group_state.as_str(), "Stable");
    assert_eq!(g.protocol_type.as_str(), "consumer");
    assert_eq!(g.protocol_data.as_str(), "range");
    assert_eq!(g.members.len(), 2);
    for dm in &g.members {
        let m = members
            .iter()
            .find(|m| m.id == dm.member_id.as_str())
            .unwrap();
        assert_eq!(dm.client_id.as_str(), client::CLIENT_ID);
        assert_eq!(dm.client_host.as_str(), "/127.0.0.1");
        assert_eq!(dm.member_assignment, m.assignment);
        assert_eq!(
            dm.member_metadata,
            Bytes::from(format!("subscription of {TOPIC}"))
        );
    }
    drop((members, admin));
    stop(broker).await;
}

#[tokio::test]
async fn new_members_of_v4_and_later_first_get_a_member_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    let fresh = |v: i16| {
        join_request(
            &format!("ids-v{v}"),
            "",
            None,
            3_000,
            Bytes::from_static(b"m"),
        )
        .with_group_instance_id(None)
    };
    for v in 4..=9 {
        let r = c.call(&fresh(v), v).await.unwrap();
        assert_eq!(r.error_code, MEMBER_ID_REQUIRED, "v{v}");
        assert!(
            r.member_id.starts_with(client::CLIENT_ID),
            "v{v}: {:?}",
            r.member_id
        );
        let again = join_request(
            &format!("ids-v{v}"),
            &r.member_id,
            None,
            3_000,
            Bytes::new(),
        );
        let r2 = c.call(&again, v).await.unwrap();
        assert_eq!(r2.error_code, NONE, "v{v}");
        assert_eq!(r2.member_id, r.member_id);
        assert_eq!(r2.leader, r.member_id);
        assert_eq!(r2.generation_id, 1);
    }
    // Before v4 a new member is let in at once.
    for v in 0..=3 {
        let r = c.call(&fresh(v), v).await.unwrap();
        assert_eq!(r.error_code, NONE, "v{v}");
        assert!(!r.member_id.is_empty());
        assert_eq!(r.generation_id, 1);
    }
    // A member id the group never handed out.
    let forged = join_request("ids-v5", "forged-id", None, 3_000, Bytes::new());
    assert_eq!(
        c.call(&forged, 5).await.unwrap().error_code,
        UNKNOWN_MEMBER_ID
    );
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn a_third_member_triggers_a_rebalance_into_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut a = Member::connect(broker.addr(), "g3").await;
    let mut b = Member::connect(broker.addr(), "g3").await;
    a.take_id().await;
    b.take_id().await;
    let members = rebalance(vec![a, b]).await;
    let first = members[0].generation;

    let c = Member::connect(broker.addr(), "g3").await;
    let all = grow(members, c).await;
    assert_eq!(all[0].generation, first + 1);
    assert_disjoint_cover(&all);
    assert!(all.iter().all(|m| m.partitions().len() == 1));
    drop(all);
    stop(broker).await;
}

#[tokio::test]
async fn a_member_that_stops_heartbeating_is_expired_and_the_rest_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut a = Member::connect(broker.addr(), "expiry").await;
    let mut b = Member::connect(broker.addr(), "expiry").await;
    a.session_ms = 1_000;
    b.session_ms = 1_000;
    a.take_id().await;
    b.take_id().await;
    let members = rebalance(vec![a, b]).await;
    let generation = members[0].generation;
    let mut it = members.into_iter();
    let mut alive = it.next().unwrap();
    let mut silent = it.next().unwrap();
    let started = Instant::now();
    loop {
        let e = alive.heartbeat().await;
        if e == REBALANCE_IN_PROGRESS {
            break;
        }
        assert_eq!(e, NONE);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the silent member was never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // On time: its session (1 s) after its last heartbeat, give or take the
    // coordinator's 100 ms tick and a loaded machine, not a second late.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1_800),
        "expired after {took:?}, its session being 1 s"
    );
    let mut survivors = rebalance(vec![alive]).await;
    assert_eq!(survivors[0].generation, generation + 1);
    assert_eq!(survivors[0].partitions(), vec![0, 1, 2]);
    assert_eq!(survivors[0].heartbeat().await, NONE);
    assert_eq!(silent.heartbeat().await, UNKNOWN_MEMBER_ID);
    drop((survivors, silent));
    stop(broker).await;
}

#[tokio::test]
async fn a_static_member_that_restarts_keeps_its_assignment_without_a_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut a = Member::connect(broker.addr(), "static").await;
    let mut b = Member::connect(broker.addr(), "static").await;
    a.instance = Some("host-a".into());
    b.instance = Some("host-b".into());
    // Static members skip MEMBER_ID_REQUIRED: the first one's generation
    // completes before the second arrives.
    let members = rebalance(vec![a]).await;
    let members = grow(members, b).await;
    let generation = members[0].generation;
    let mut it = members.into_iter();
    let mut a = it.next().unwrap();
    let old_b = it.next().unwrap();
    let (old_id, old_assignment) = (old_b.id.clone(), old_b.assignment.clone());
    drop(old_b);

    let mut b = Member::connect(broker.addr(), "static").await;
    b.instance = Some("host-b".into());
    let r = b.join().await;
    assert_ne!(b.id, old_id, "a new member id replaces the old one");
    assert_eq!(r.generation_id, generation, "no rebalance");
    assert_eq!(b.sync(vec![]).await, NONE);
    assert_eq!(b.assignment, old_assignment);
    assert_eq!(a.heartbeat().await, NONE);
    assert_eq!(b.heartbeat().await, NONE);

    // The old incarnation is fenced.
    let mut zombie = Member::connect(broker.addr(), "static").await;
    zombie.instance = Some("host-b".into());
    zombie.id = old_id;
    zombie.generation = generation;
    assert_eq!(zombie.heartbeat().await, FENCED_INSTANCE_ID);
    drop((a, b, zombie));
    stop(broker).await;
}

#[tokio::test]
async fn members_leave_one_at_a_time_and_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut ms = Vec::new();
    for _ in 0..3 {
        let mut m = Member::connect(broker.addr(), "leavers").await;
        m.take_id().await;
        ms.push(m);
    }
    let mut ms = rebalance(ms).await;
    let mut gone = ms.pop().unwrap();
    let leave_v1 = LeaveGroupRequest::default()
        .with_group_id(gid("leavers"))
        .with_member_id(s(&gone.id));
    let r = gone.client.call(&leave_v1, 1).await.unwrap();
    assert_eq!(r.error_code, NONE);
    for m in &mut ms {
        assert_eq!(m.heartbeat().await, REBALANCE_IN_PROGRESS);
    }
    let mut ms = rebalance(ms).await;
    assert_disjoint_cover(&ms);
    // Leaving again: the member is no longer known.
    assert_eq!(
        gone.client.call(&leave_v1, 1).await.unwrap().error_code,
        UNKNOWN_MEMBER_ID
    );

    let batch = LeaveGroupRequest::default()
        .with_group_id(gid("leavers"))
        .with_members(
            ms.iter()
                .map(|m| m.id.clone())
                .chain(["nobody".to_owned()])
                .map(|id| MemberIdentity::default().with_member_id(s(&id)))
                .collect(),
        );
    let r = ms[0].client.call(&batch, 3).await.unwrap();
    assert_eq!(r.error_code, NONE);
    let codes: Vec<i16> = r.members.iter().map(|m| m.error_code).collect();
    assert_eq!(codes, vec![NONE, NONE, UNKNOWN_MEMBER_ID]);
    let d = describe(&mut ms[0].client, "leavers", 5).await;
    assert_eq!(d.groups[0].group_state.as_str(), "Empty");
    assert!(d.groups[0].members.is_empty());
    assert_eq!(ms[0].heartbeat().await, UNKNOWN_MEMBER_ID);
    drop((ms, gone));
    stop(broker).await;
}

fn commit_request(
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(gid(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(*o)
                                .with_committed_metadata(Some(s(&format!("at {o}"))))
                        })
                        .collect(),
                ),
        ])
}

async fn commit(
    client: &mut Client,
    group: &str,
    offsets: &[(i32, i64)],
    version: i16,
) -> Vec<i16> {
    let r = client
        .call(&commit_request(group, -1, "", TOPIC, offsets), version)
        .await
        .unwrap();
    r.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect()
}

/// (partition, offset, metadata) of one group's answer, v1–7.
fn fetched(r: &OffsetFetchResponse) -> Vec<(i32, i64, String)> {
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                assert_eq!(p.error_code, NONE);
                (
                    p.partition_index,
                    p.committed_offset,
                    p.metadata.as_deref().unwrap_or_default().to_owned(),
                )
            })
        })
        .collect()
}

fn fetch_request(group: &str, partitions: Option<Vec<i32>>) -> OffsetFetchRequest {
    OffsetFetchRequest::default()
        .with_group_id(gid(group))
        .with_topics(partitions.map(|ps| {
            vec![
                OffsetFetchRequestTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partition_indexes(ps),
            ]
        }))
}

#[tokio::test]
async fn commits_are_fetched_back_by_partition_all_at_once_and_for_several_groups() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    assert_eq!(
        commit(&mut c, "simple", &[(0, 10), (1, 20)], 8).await,
        vec![NONE, NONE]
    );
    assert_eq!(commit(&mut c, "simple", &[(0, 12)], 2).await, vec![NONE]);
    for v in 1..=7 {
        let r = c
            .call(&fetch_request("simple", Some(vec![0, 1, 2])), v)
            .await
            .unwrap();
        assert_eq!(
            fetched(&r),
            vec![
                (0, 12, "at 12".to_owned()),
                (1, 20, "at 20".to_owned()),
                (2, -1, String::new())
            ],
            "v{v}"
        );
    }
    for v in 2..=7 {
        let r = c.call(&fetch_request("simple", None), v).await.unwrap();
        assert_eq!(
            fetched(&r),
            vec![(0, 12, "at 12".to_owned()), (1, 20, "at 20".to_owned())],
            "v{v}: all partitions of the group"
        );
    }
    assert_eq!(commit(&mut c, "other", &[(2, 7)], 9).await, vec![NONE]);
    for v in 8..=9 {
        let request = OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(gid("simple"))
                .with_topics(Some(vec![
                    OffsetFetchRequestTopics::default()
                        .with_name(topic_name(TOPIC))
                        .with_partition_indexes(vec![1]),
                ])),
            OffsetFetchRequestGroup::default()
                .with_group_id(gid("other"))
                .with_topics(None),
            OffsetFetchRequestGroup::default()
                .with_group_id(gid("never-committed"))
                .with_topics(Some(vec![
                    OffsetFetchRequestTopics::default()
                        .with_name(topic_name(TOPIC))
                        .with_partition_indexes(vec![0]),
                ])),
        ]);
        let r = c.call(&request, v).await.unwrap();
        let flat: Vec<(String, i32, i64)> = r
            .groups
            .iter()
            .flat_map(|g| {
                assert_eq!(g.error_code, NONE);
                g.topics.iter().flat_map(move |t| {
                    t.partitions.iter().map(move |p| {
                        (
                            g.group_id.to_string(),
                            p.partition_index,
                            p.committed_offset,
                        )
                    })
                })
            })
            .collect();
        assert_eq!(
            flat,
            vec![
                ("simple".to_owned(), 1, 20),
                ("other".to_owned(), 2, 7),
                ("never-committed".to_owned(), 0, -1)
            ],
            "v{v}"
        );
    }
    // The history the audit reads.
    let groups = broker.broker().groups();
    let history: Vec<i64> = groups
        .history("simple", TOPIC, 0)
        .iter()
        .map(|c| c.offset)
        .collect();
    assert_eq!(history, vec![10, 12]);
    let latest = groups.committed("simple", TOPIC, 0).unwrap();
    assert_eq!(latest.metadata.as_deref(), Some("at 12"));
    assert!(latest.commit_time_ms > 1_600_000_000_000);
    assert_eq!(groups.all_committed().len(), 3);
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn commits_of_a_managed_group_check_generation_and_member() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut m = Member::connect(broker.addr(), "managed").await;
    m.take_id().await;
    let mut ms = rebalance(vec![m]).await;
    let m = &mut ms[0];
    let (generation, id) = (m.generation, m.id.clone());
    let call = |generation: i32, member: &str, topic: &str| {
        commit_request("managed", generation, member, topic, &[(0, 5)])
    };
    let code =
        |r: kafka_protocol::messages::OffsetCommitResponse| r.topics[0].partitions[0].error_code;
    let ok = m
        .client
        .call(&call(generation, &id, TOPIC), 8)
        .await
        .unwrap();
    assert_eq!(code(ok), NONE);
    let stale = m
        .client
        .call(&call(generation - 1, &id, TOPIC), 8)
        .await
        .unwrap();
    assert_eq!(code(stale), ILLEGAL_GENERATION);
    let stranger = m
        .client
        .call(&call(generation, "stranger", TOPIC), 8)
        .await
        .unwrap();
    assert_eq!(code(stranger), UNKNOWN_MEMBER_ID);
    let simple = m.client.call(&call(-1, "", TOPIC), 8).await.unwrap();
    assert_eq!(
        code(simple),
        UNKNOWN_MEMBER_ID,
        "a group with members refuses simple commits"
    );
    let unknown_topic = m
        .client
        .call(&call(generation, &id, "no-such-topic"), 8)
        .await
        .unwrap();
    assert_eq!(code(unknown_topic), UNKNOWN_TOPIC_OR_PARTITION);
    let r = m
        .client
        .call(
            &commit_request(
                "managed",
                generation,
                &id,
                TOPIC,
                &[(PARTITIONS, 1), (1, 9)],
            ),
            8,
        )
        .await
        .unwrap();
    let codes: Vec<i16> = r.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, vec![UNKNOWN_TOPIC_OR_PARTITION, NONE]);
    assert_eq!(
        broker
            .broker()
            .groups()
            .committed("managed", TOPIC, 1)
            .unwrap()
            .offset,
        9
    );
    assert!(
        broker
            .broker()
            .groups()
            .committed("managed", "no-such-topic", 0)
            .is_none()
    );
    drop(ms);
    stop(broker).await;
}

#[tokio::test]
async fn commits_survive_a_restart_and_a_torn_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    assert_eq!(
        commit(&mut c, "durable", &[(0, 100), (2, 300)], 7).await,
        vec![NONE, NONE]
    );
    drop(c);
    stop(broker).await;

    let log = dir.path().join("groups").join("offsets.log");
    let intact = std::fs::metadata(&log).unwrap().len();
    // A record cut short by a crash: a length that promises more bytes.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, &[0, 0, 0, 60, 1, 2, 3, 4, 1, 0, 7]).unwrap();
    drop(f);

    let broker = start_in(dir.path()).await;
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        intact,
        "torn tail truncated"
    );
    let mut c = Client::connect(broker.addr()).await.unwrap();
    let r = c
        .call(&fetch_request("durable", Some(vec![0, 1, 2])), 7)
        .await
        .unwrap();
    assert_eq!(
        fetched(&r),
        vec![
            (0, 100, "at 100".to_owned()),
            (1, -1, String::new()),
            (2, 300, "at 300".to_owned())
        ]
    );
    assert_eq!(commit(&mut c, "durable", &[(1, 200)], 7).await, vec![NONE]);
    let listed = c.call(&ListGroupsRequest::default(), 4).await.unwrap();
    assert!(
        listed
            .groups
            .iter()
            .any(|g| g.group_id.as_str() == "durable" && g.group_state.as_str() == "Empty"),
        "a group known from its offsets is listed after the restart"
    );
    drop(c);
    stop(broker).await;

    let broker = start_in(dir.path()).await;
    let groups = broker.broker().groups();
    assert_eq!(groups.committed("durable", TOPIC, 1).unwrap().offset, 200);
    assert_eq!(groups.committed("durable", TOPIC, 0).unwrap().offset, 100);
    stop(broker).await;
}

fn offset(o: i64) -> CommittedOffset {
    CommittedOffset {
        offset: o,
        leader_epoch: 0,
        metadata: Some(format!("m{o}")),
        commit_time_ms: 1_700_000_000_000 + o,
    }
}

#[tokio::test]
async fn the_offsets_log_compacts_to_the_latest_values() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GroupsConfig {
        compact_min_bytes: 4_096,
        compact_ratio: 4,
        ..GroupsConfig::default()
    };
    let groups = Groups::open(dir.path(), cfg.clone()).unwrap();
    assert!(groups.is_loaded());
    for round in 0..500 {
        let commits = (0..3)
            .map(|p| (TOPIC.to_owned(), p, offset(round * 10 + i64::from(p))))
            .collect();
        groups.commit("compacted", commits).await.unwrap();
    }
    let bytes = groups.offsets_log_bytes();
    assert!(bytes < 4 * 4_096, "the log stayed small: {bytes} bytes");
    let history = groups.history("compacted", TOPIC, 2);
    assert_eq!(history.len(), 10);
    assert_eq!(history.last().unwrap().offset, 4_992);
    drop(groups);

    let groups = Groups::open(dir.path(), cfg).unwrap();
    for p in 0..3 {
        assert_eq!(
            groups.committed("compacted", TOPIC, p),
            Some(offset(4_990 + i64::from(p))),
            "partition {p}"
        );
    }
    assert_eq!(groups.all_committed().len(), 3);
    assert_eq!(
        groups.describe("compacted").unwrap().state.as_str(),
        "Empty"
    );
}

#[tokio::test]
async fn a_large_offsets_log_loads_in_the_background_and_the_coordinator_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let groups = Groups::open(dir.path(), GroupsConfig::default()).unwrap();
        groups
            .commit("bg", vec![(TOPIC.to_owned(), 0, offset(42))])
            .await
            .unwrap();
    }
    let cfg = GroupsConfig {
        background_load_bytes: 0,
        ..GroupsConfig::default()
    };
    let groups = Groups::open(dir.path(), cfg).unwrap();
    tokio::time::timeout(Duration::from_secs(10), groups.wait_loaded())
        .await
        .unwrap();
    assert_eq!(groups.committed("bg", TOPIC, 0), Some(offset(42)));
}

#[tokio::test]
async fn bad_requests_get_their_error_codes_and_the_broker_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(BrokerConfig {
        max_frame_bytes: 64 * 1024,
        ..config(dir.path())
    })
    .await;
    let mut m = Member::connect(broker.addr(), "errors").await;
    m.take_id().await;
    let mut ms = rebalance(vec![m]).await;
    let m = &mut ms[0];

    // Heartbeat from an unknown member.
    let mut stranger = Member::connect(broker.addr(), "errors").await;
    stranger.id = "who-am-i".into();
    stranger.generation = m.generation;
    assert_eq!(stranger.heartbeat().await, UNKNOWN_MEMBER_ID);
    // SyncGroup with a stale generation.
    m.generation -= 1;
    assert_eq!(m.sync(vec![]).await, ILLEGAL_GENERATION);
    assert_eq!(m.heartbeat().await, ILLEGAL_GENERATION);
    m.generation += 1;
    assert_eq!(m.heartbeat().await, NONE);
    // A commit to an unknown topic.
    let request = commit_request("errors", m.generation, &m.id, "nowhere", &[(0, 1)]);
    let r = m.client.call(&request, 8).await.unwrap();
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        UNKNOWN_TOPIC_OR_PARTITION
    );

    // A join whose metadata is larger than a frame may be: the connection goes.
    let mut huge = Client::connect(broker.addr()).await.unwrap();
    let blob = Bytes::from(vec![7u8; 1 << 20]);
    let sent = huge
        .send(&join_request("errors-huge", "", None, 3_000, blob), 5)
        .await;
    assert!(sent.is_err() || huge.is_closed_by_broker().await);
    // Metadata within the frame limit is kept as it came.
    let mut big = Member::connect(broker.addr(), "errors-big").await;
    big.take_id().await;
    let request = join_request(
        "errors-big",
        &big.id,
        None,
        3_000,
        Bytes::from(vec![9u8; 32 * 1024]),
    );
    let r = big.client.call(&request, 5).await.unwrap();
    assert_eq!(r.error_code, NONE);
    assert_eq!(r.members[0].metadata.len(), 32 * 1024);
    // And the broker still serves.
    let mut after = Client::connect(broker.addr()).await.unwrap();
    after.api_versions().await.unwrap();
    assert_eq!(m.heartbeat().await, NONE);
    drop((ms, stranger, huge, big, after));
    stop(broker).await;
}

#[tokio::test]
async fn a_commit_to_an_unknown_topic_is_refused_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    let request = OffsetCommitRequest::default()
        .with_group_id(gid("lost"))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(topic_name("nowhere"))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default().with_committed_offset(1),
                ]),
            OffsetCommitRequestTopic::default()
                .with_name(topic_name(TOPIC))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default().with_committed_offset(4),
                ]),
        ]);
    let r = c.call(&request, 8).await.unwrap();
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(r.topics[1].partitions[0].error_code, NONE);
    assert!(
        broker
            .broker()
            .groups()
            .committed("lost", "nowhere", 0)
            .is_none()
    );
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn groups_are_described_listed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut m = Member::connect(broker.addr(), "busy").await;
    m.take_id().await;
    let mut ms = rebalance(vec![m]).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    assert_eq!(commit(&mut c, "idle", &[(0, 1)], 8).await, vec![NONE]);

    let listed = |r: kafka_protocol::messages::ListGroupsResponse| -> Vec<(String, String)> {
        r.groups
            .iter()
            .map(|g| (g.group_id.to_string(), g.group_state.to_string()))
            .collect()
    };
    let all = listed(c.call(&ListGroupsRequest::default(), 4).await.unwrap());
    assert_eq!(
        all,
        vec![
            ("busy".to_owned(), "Stable".to_owned()),
            ("idle".to_owned(), "Empty".to_owned())
        ]
    );
    let stable = ListGroupsRequest::default().with_states_filter(vec![s("stable")]);
    assert_eq!(
        listed(c.call(&stable, 4).await.unwrap()),
        vec![("busy".to_owned(), "Stable".to_owned())]
    );
    let v0 = c.call(&ListGroupsRequest::default(), 0).await.unwrap();
    assert_eq!(v0.groups.len(), 2);
    assert_eq!(v0.groups[0].protocol_type.as_str(), "consumer");

    let unknown = describe(&mut c, "ghost", 5).await;
    assert_eq!(unknown.groups[0].group_state.as_str(), "Dead");
    let unknown = describe(&mut c, "ghost", 6).await;
    assert_eq!(unknown.groups[0].error_code, GROUP_ID_NOT_FOUND);

    let delete = DeleteGroupsRequest::default().with_groups_names(vec![
        gid("busy"),
        gid("idle"),
        gid("ghost"),
    ]);
    let r = c.call(&delete, 2).await.unwrap();
    let codes: Vec<(String, i16)> = r
        .results
        .iter()
        .map(|g| (g.group_id.to_string(), g.error_code))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("busy".to_owned(), NON_EMPTY_GROUP),
            ("idle".to_owned(), NONE),
            ("ghost".to_owned(), GROUP_ID_NOT_FOUND)
        ]
    );
    let r = c
        .call(&fetch_request("idle", Some(vec![0])), 7)
        .await
        .unwrap();
    assert_eq!(fetched(&r), vec![(0, -1, String::new())]);
    let all = listed(c.call(&ListGroupsRequest::default(), 4).await.unwrap());
    assert_eq!(all, vec![("busy".to_owned(), "Stable".to_owned())]);
    assert_eq!(ms[0].heartbeat().await, NONE);
    drop((ms, c));
    stop(broker).await;

    // The deletion is durable.
    let broker = start_in(dir.path()).await;
    assert!(
        broker
            .broker()
            .groups()
            .committed("idle", TOPIC, 0)
            .is_none()
    );
    assert!(broker.broker().groups().describe("idle").is_none());
    stop(broker).await;
}

#[tokio::test]
async fn deleting_a_topic_removes_its_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    broker
        .broker()
        .topics()
        .create("doomed", 2, Default::default(), false)
        .unwrap();
    let mut c = Client::connect(broker.addr()).await.unwrap();
    let r = c
        .call(&commit_request("g", -1, "", "doomed", &[(0, 3), (1, 4)]), 8)
        .await
        .unwrap();
    assert!(r.topics[0].partitions.iter().all(|p| p.error_code == NONE));
    assert_eq!(commit(&mut c, "g", &[(0, 9)], 8).await, vec![NONE]);
    let delete = DeleteTopicsRequest::default()
        .with_topic_names(vec![topic_name("doomed")])
        .with_timeout_ms(5_000);
    let r = c.call(&delete, 4).await.unwrap();
    assert_eq!(r.responses[0].error_code, NONE);
    let left: Vec<(String, i32)> = broker
        .broker()
        .groups()
        .all_committed()
        .into_iter()
        .map(|o| (o.topic, o.partition))
        .collect();
    assert_eq!(left, vec![(TOPIC.to_owned(), 0)]);
    drop(c);
    stop(broker).await;
    let broker = start_in(dir.path()).await;
    assert!(
        broker
            .broker()
            .groups()
            .committed("g", "doomed", 0)
            .is_none()
    );
    stop(broker).await;
}

#[tokio::test]
async fn every_advertised_version_of_the_group_apis_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    // The coordinator is the broker itself, at the port it listens on.
    let (host, port) = (
        broker.addr().ip().to_string(),
        i32::from(broker.addr().port()),
    );

    for v in 0..=3 {
        let r = c
            .call(&FindCoordinatorRequest::default().with_key(s("g")), v)
            .await
            .unwrap();
        assert_eq!(
            (r.error_code, r.host.to_string(), r.port),
            (NONE, host.clone(), port),
            "FindCoordinator v{v}"
        );
    }
    for v in 4..=6 {
        let request = FindCoordinatorRequest::default().with_coordinator_keys(vec![s("a"), s("b")]);
        let r = c.call(&request, v).await.unwrap();
        assert_eq!(r.coordinators.len(), 2, "FindCoordinator v{v}");
        assert!(
            r.coordinators
                .iter()
                .all(|k| k.error_code == NONE && k.host.as_str() == host && k.port == port)
        );
    }

    for v in 0..=9 {
        let group = format!("sweep-{v}");
        let instance = (v >= 5).then(|| format!("instance-{v}"));
        let mut request = join_request(
            &group,
            "",
            instance.as_deref(),
            3_000,
            Bytes::from_static(b"meta"),
        );
        if v == 0 {
            request = request.with_rebalance_timeout_ms(-1);
        }
        let mut r = c.call(&request, v).await.unwrap();
        if r.error_code == MEMBER_ID_REQUIRED {
            request = request.with_member_id(r.member_id.clone());
            r = c.call(&request, v).await.unwrap();
        }
        assert_eq!(r.error_code, NONE, "JoinGroup v{v}");
        assert_eq!(r.protocol_name.as_deref(), Some("range"), "JoinGroup v{v}");
        assert_eq!(r.members.len(), 1);
        let id = r.member_id.clone();
        let sync_v = v.min(5);
        let sync = SyncGroupRequest::default()
            .with_group_id(gid(&group))
            .with_generation_id(r.generation_id)
            .with_member_id(id.clone())
            .with_group_instance_id(if sync_v >= 3 {
                instance.as_deref().map(s)
            } else {
                None
            })
            .with_protocol_type(if sync_v >= 5 {
                Some(s("consumer"))
            } else {
                None
            })
            .with_protocol_name(if sync_v >= 5 { Some(s("range")) } else { None })
            .with_assignments(vec![
                SyncGroupRequestAssignment::default()
                    .with_member_id(id.clone())
                    .with_assignment(Bytes::from_static(b"all")),
            ]);
        let sr = c.call(&sync, sync_v).await.unwrap();
        assert_eq!(sr.error_code, NONE, "SyncGroup v{sync_v}");
        assert_eq!(sr.assignment, Bytes::from_static(b"all"));
        let hb_v = v.min(4);
        let hb = HeartbeatRequest::default()
            .with_group_id(gid(&group))
            .with_generation_id(r.generation_id)
            .with_member_id(id.clone())
            .with_group_instance_id(if hb_v >= 3 {
                instance.as_deref().map(s)
            } else {
                None
            });
        assert_eq!(
            c.call(&hb, hb_v).await.unwrap().error_code,
            NONE,
            "Heartbeat v{hb_v}"
        );
        let dv = v.min(6);
        let d = describe(&mut c, &group, dv).await;
        assert_eq!(d.groups[0].members.len(), 1, "DescribeGroups v{dv}");
        assert_eq!(
            d.groups[0].members[0].member_assignment,
            Bytes::from_static(b"all")
        );
        let lv = v.min(5);
        let leave = if lv >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(gid(&group))
                .with_members(vec![
                    MemberIdentity::default()
                        .with_member_id(id.clone())
                        .with_group_instance_id(instance.as_deref().map(s)),
                ])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(gid(&group))
                .with_member_id(id.clone())
        };
        let lr = c.call(&leave, lv).await.unwrap();
        assert_eq!(lr.error_code, NONE, "LeaveGroup v{lv}");
        assert!(lr.members.iter().all(|m| m.error_code == NONE));
    }

    for v in 2..=9 {
        let group = format!("commit-{v}");
        let r = c
            .call(
                &commit_request(&group, -1, "", TOPIC, &[(1, i64::from(v))]),
                v,
            )
            .await
            .unwrap();
        assert_eq!(
            r.topics[0].partitions[0].error_code, NONE,
            "OffsetCommit v{v}"
        );
        assert_eq!(
            broker
                .broker()
                .groups()
                .committed(&group, TOPIC, 1)
                .unwrap()
                .offset,
            i64::from(v)
        );
    }
    for v in 0..=5 {
        let r = c.call(&ListGroupsRequest::default(), v).await.unwrap();
        assert_eq!(r.error_code, NONE, "ListGroups v{v}");
        assert_eq!(r.groups.len(), 18, "ListGroups v{v}");
    }
    for v in 0..=2 {
        let r = c
            .call(
                &DeleteGroupsRequest::default().with_groups_names(vec![gid(&format!("sweep-{v}"))]),
                v,
            )
            .await
            .unwrap();
        assert_eq!(r.results[0].error_code, NONE, "DeleteGroups v{v}");
    }
    let r = c.call(&ApiVersionsRequest::default(), 0).await.unwrap();
    for key in [8, 9, 10, 11, 12, 13, 14, 15, 16, 42] {
        assert!(
            r.api_keys.iter().any(|k| k.api_key == key),
            "api {key} advertised"
        );
    }
    drop(c);
    stop(broker).await;
}

// ------------------------------------------------- where a group starts (§2)

/// A `consumer` protocol assignment (ConsumerProtocolAssignment v1, with
/// its version prefix), as real clients' assignors write it.
fn consumer_assignment(partitions: &[i32]) -> Bytes {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::Encodable;
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
        TopicPartition::default()
            .with_topic(topic_name(TOPIC))
            .with_partitions(partitions.to_vec()),
    ]);
    let mut buf = bytes::BytesMut::new();
    buf.extend_from_slice(&1i16.to_be_bytes());
    a.encode(&mut buf, 1).unwrap();
    buf.freeze()
}

/// A member of `group` alone in it, assigned `partitions` of the topic.
async fn sole_member(addr: std::net::SocketAddr, group: &str, partitions: &[i32]) -> Member {
    let mut m = Member::connect(addr, group).await;
    m.session_ms = 30_000;
    m.join().await;
    let id = m.id.clone();
    assert_eq!(
        m.sync(vec![(id, consumer_assignment(partitions))]).await,
        NONE
    );
    m
}

async fn produce_n(client: &mut Client, partition: i32, n: usize) {
    let values: Vec<Vec<u8>> = (0..n).map(|i| format!("r{i}").into_bytes()).collect();
    let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let request = client::produce_request(TOPIC, partition, -1, client::batch(&values));
    let r = client.call(&request, 8).await.unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, NONE);
}

async fn fetch_at(client: &mut Client, partition: i32, offset: i64) {
    let request = client::fetch_request(TOPIC, partition, offset, 1 << 20);
    let r = client.call(&request, 11).await.unwrap();
    assert_eq!(r.responses[0].partitions[0].error_code, NONE);
}

/// (consumed, skipped, expired) of `group` on a partition, over all buckets,
/// once the audit has taken in the commits.
fn books_of(broker: &RunningBroker, group: &str, partition: i32) -> (u64, u64, u64) {
    broker.broker().audit_tick(client::now_ms());
    let books = broker
        .broker()
        .audit()
        .unwrap()
        .books(TOPIC, partition)
        .unwrap();
    let mut sum = (0, 0, 0);
    for (bucket, _) in books.broker_buckets() {
        let t = books.group(group, bucket);
        sum.0 += t.consumed;
        sum.1 += t.skipped;
        sum.2 += t.expired;
    }
    sum
}

#[tokio::test]
async fn a_group_starts_at_its_first_tied_fetch_and_keeps_that_start_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut producer = Client::connect(broker.addr()).await.unwrap();
    for p in 0..PARTITIONS {
        produce_n(&mut producer, p, 10).await;
    }
    // "late" subscribes at the end of the log and fetches there (the test
    // client's id and host are the member's).
    let mut late = sole_member(broker.addr(), "late", &[0]).await;
    fetch_at(&mut late.client, 0, 10).await;
    // A later fetch does not move the start.
    fetch_at(&mut late.client, 0, 4).await;
    assert_eq!(
        broker.broker().groups().start_of("late", TOPIC, 0),
        Some(10)
    );
    // The start is on disk before the fetch was answered.
    let starts = std::fs::read_to_string(dir.path().join("groups").join("starts.json")).unwrap();
    assert!(starts.contains("\"late\""), "{starts}");
    // A member's fetch of a partition it was not assigned ties nothing.
    fetch_at(&mut late.client, 1, 3).await;
    assert_eq!(broker.broker().groups().start_of("late", TOPIC, 1), None);
    drop((late, producer));
    stop(broker).await;

    // Restarted between the fetch and the first commit.
    let broker = start_in(dir.path()).await;
    let mut client = Client::connect(broker.addr()).await.unwrap();
    produce_n(&mut client, 0, 5).await;
    assert_eq!(commit(&mut client, "late", &[(0, 15)], 8).await, vec![NONE]);
    assert_eq!(
        books_of(&broker, "late", 0),
        (5, 10, 0),
        "read 5, skipped the backlog of 10"
    );
    // "claims" commits 7 without any fetch: it asserts it processed them.
    assert_eq!(
        commit(&mut client, "claims", &[(1, 7)], 8).await,
        vec![NONE]
    );
    assert_eq!(books_of(&broker, "claims", 1), (7, 0, 0));
    drop(client);
    stop(broker).await;
}

#[tokio::test]
async fn an_earliest_group_consumes_what_it_read_before_its_first_commit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut producer = Client::connect(broker.addr()).await.unwrap();
    produce_n(&mut producer, 0, 12).await;
    let mut m = sole_member(broker.addr(), "earliest", &[0, 1, 2]).await;
    fetch_at(&mut m.client, 0, 0).await;
    fetch_at(&mut m.client, 0, 12).await;
    let r = m
        .client
        .call(
            &commit_request("earliest", m.generation, &m.id, TOPIC, &[(0, 12)]),
            8,
        )
        .await
        .unwrap();
    assert_eq!(r.topics[0].partitions[0].error_code, NONE);
    assert_eq!(books_of(&broker, "earliest", 0), (12, 0, 0));
    // Committed: its later fetches record nothing.
    fetch_at(&mut m.client, 0, 3).await;
    assert_eq!(
        broker.broker().groups().start_of("earliest", TOPIC, 0),
        Some(0)
    );
    drop((m, producer));
    stop(broker).await;
}

#[tokio::test]
async fn a_fetch_two_groups_could_have_sent_is_tied_to_neither() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut producer = Client::connect(broker.addr()).await.unwrap();
    produce_n(&mut producer, 2, 10).await;
    // Both members share the client id and host, as librdkafka's default
    // client id on one host does.
    let mut x = sole_member(broker.addr(), "x", &[2]).await;
    let _y = sole_member(broker.addr(), "y", &[2]).await;
    fetch_at(&mut x.client, 2, 10).await;
    assert_eq!(broker.broker().groups().start_of("x", TOPIC, 2), None);
    assert_eq!(broker.broker().groups().start_of("y", TOPIC, 2), None);
    // The no-fetch rule: committing 10 consumed all 10.
    let r = x
        .client
        .call(
            &commit_request("x", x.generation, &x.id, TOPIC, &[(2, 10)]),
            8,
        )
        .await
        .unwrap();
    assert_eq!(r.topics[0].partitions[0].error_code, NONE);
    assert_eq!(books_of(&broker, "x", 2), (10, 0, 0));
    drop((x, _y, producer));
    stop(broker).await;
}

#[tokio::test]
async fn a_static_member_that_rejoins_keeps_its_ties() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut producer = Client::connect(broker.addr()).await.unwrap();
    produce_n(&mut producer, 1, 6).await;
    let mut m = Member::connect(broker.addr(), "static").await;
    m.instance = Some("worker-1".into());
    m.session_ms = 30_000;
    m.join().await;
    let id = m.id.clone();
    assert_eq!(m.sync(vec![(id, consumer_assignment(&[1]))]).await, NONE);
    // It restarts: a new connection, the same instance id, no rebalance.
    let mut again = Member::connect(broker.addr(), "static").await;
    again.instance = Some("worker-1".into());
    again.session_ms = 30_000;
    let r = again.join_once().await;
    assert_eq!(r.error_code, NONE);
    assert_eq!(r.generation_id, m.generation, "no rebalance");
    fetch_at(&mut again.client, 1, 6).await;
    assert_eq!(
        broker.broker().groups().start_of("static", TOPIC, 1),
        Some(6)
    );
    drop((m, again, producer));
    stop(broker).await;
}

#[tokio::test]
async fn a_group_that_committed_before_fetching_records_no_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut producer = Client::connect(broker.addr()).await.unwrap();
    produce_n(&mut producer, 0, 8).await;
    let mut m = sole_member(broker.addr(), "committer", &[0]).await;
    let r = m
        .client
        .call(
            &commit_request("committer", m.generation, &m.id, TOPIC, &[(0, 4)]),
            8,
        )
        .await
        .unwrap();
    assert_eq!(r.topics[0].partitions[0].error_code, NONE);
    // Its fetch from the committed offset is not where it started.
    fetch_at(&mut m.client, 0, 4).await;
    assert_eq!(
        broker.broker().groups().start_of("committer", TOPIC, 0),
        None
    );
    assert_eq!(books_of(&broker, "committer", 0), (4, 0, 0));
    drop((m, producer));
    stop(broker).await;
}
