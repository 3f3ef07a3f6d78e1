//! Which consumer group a Fetch belongs to, for the audit's start rule
//! (DESIGN §2): a Fetch is tied to a group when exactly one group has a
//! member with the fetch's client id and host that the group assigned the
//! partition. Members' client ids and hosts come from JoinGroup, their
//! partitions from the `consumer` protocol's assignment in SyncGroup.
//!
//! The coordinator keeps [`Ties`] current as groups sync, lose members and
//! expire; the fetch path only reads it. Each tie carries an `open` flag,
//! cleared once the group's start on that partition is settled (it fetched
//! there before, or committed there), so that a settled partition costs a
//! fetch one lookup and nothing more.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use super::cursor::Cursor;

/// The topics and partitions of a `consumer` protocol assignment
/// (Kafka's ConsumerProtocolAssignment, any version: an i16 version, then
/// an array of topic name and partition array, then user data). `None`
/// when the bytes do not hold one. Empty bytes are an empty assignment.
///
/// Never trusts a count from the wire: every array is bounded by the bytes
/// left before anything is allocated for it.
pub fn assigned_partitions(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut c = Cursor(bytes);
    // Versions 0-3 share this layout, and later ones keep it as a prefix,
    // as Kafka's own ConsumerProtocol assumes.
    let version = i16::from_be_bytes(c.array()?);
    if version < 0 {
        return None;
    }
    let topics = i32::from_be_bytes(c.array()?);
    let mut out = Vec::new();
    // A null array (-1) is no partitions.
    for _ in 0..topics.max(0) {
        let len = i16::from_be_bytes(c.array()?);
        let topic = std::str::from_utf8(c.take(usize::try_from(len).ok()?)?).ok()?;
        let n = usize::try_from(i32::from_be_bytes(c.array()?).max(0)).ok()?;
        if n > c.0.len() / 4 {
            return None;
        }
        let mut partitions = Vec::with_capacity(n);
        for _ in 0..n {
            partitions.push(i32::from_be_bytes(c.array()?));
        }
        out.push((topic.to_owned(), partitions));
    }
    Some(out)
}

/// The host part of a member's `client_host` (`/127.0.0.1`).
pub(crate) fn host_ip(client_host: &str) -> Option<IpAddr> {
    client_host
        .strip_prefix('/')
        .unwrap_or(client_host)
        .parse()
        .ok()
}

/// One partition assigned to a member, as the index files it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Assigned {
    pub(crate) client_id: String,
    pub(crate) host: IpAddr,
    pub(crate) topic: String,
    pub(crate) partition: i32,
}

/// A group that has a member behind a (client id, host) assigned a partition.
struct Owner {
    group: Arc<str>,
    /// Whether the group's start on the partition may still be unsettled.
    open: AtomicBool,
}

/// topic → partition → owners.
type PartitionOwners = HashMap<String, HashMap<i32, Vec<Owner>>>;

#[derive(Default)]
struct Index {
    /// client id → (host, its partitions); a client id is on few hosts.
    clients: HashMap<String, Vec<(IpAddr, PartitionOwners)>>,
    /// What each group put in, to take it out again.
    by_group: HashMap<String, Vec<Assigned>>,
}

impl Index {
    fn remove(&mut self, group: &str) {
        for a in self.by_group.remove(group).unwrap_or_default() {
            let Some(hosts) = self.clients.get_mut(&a.client_id) else {
                continue;
            };
            for (ip, topics) in hosts.iter_mut() {
                if *ip != a.host {
                    continue;
                }
                if let Some(parts) = topics.get_mut(&a.topic) {
                    if let Some(owners) = parts.get_mut(&a.partition) {
                        owners.retain(|o| &*o.group != group);
                        if owners.is_empty() {
                            parts.remove(&a.partition);
                        }
                    }
                    if parts.is_empty() {
                        topics.remove(&a.topic);
                    }
                }
            }
            hosts.retain(|(_, topics)| !topics.is_empty());
            if hosts.is_empty() {
                self.clients.remove(&a.client_id);
            }
        }
    }

    fn add(&mut self, group: &str, assigned: Vec<Assigned>) {
        if assigned.is_empty() {
            return;
        }
        let name: Arc<str> = Arc::from(group);
        for a in &assigned {
            let hosts = self.clients.entry(a.client_id.clone()).or_default();
            let i = match hosts.iter().position(|(ip, _)| *ip == a.host) {
                Some(i) => i,
                None => {
                    hosts.push((a.host, HashMap::new()));
                    hosts.len() - 1
                }
            };
            let owners = hosts[i]
                .1
                .entry(a.topic.clone())
                .or_default()
                .entry(a.partition)
                .or_default();
            // Two members of one group behind one client id and host are
            // still one group.
            if !owners.iter().any(|o| *o.group == *group) {
                owners.push(Owner {
                    group: name.clone(),
                    open: AtomicBool::new(true),
                });
            }
        }
        self.by_group.insert(group.to_owned(), assigned);
    }
}

/// A fetched partition whose group start may be unsettled: the fetch is
/// tied to `group` and the tie was still open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OpenTie {
    pub(crate) group: Arc<str>,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// The index (client id, host, topic, partition) → groups.
#[derive(Default)]
pub(crate) struct Ties {
    index: RwLock<Index>,
    /// Whether each group's tied fetches read committed records only (the
    /// latest fetch decides): its lag is then measured to the last stable offset.
    read_committed: RwLock<HashMap<Arc<str>, bool>>,
}

impl Ties {
    /// Replaces what `group` has in the index with `assigned`.
    pub(crate) fn set(&self, group: &str, assigned: Vec<Assigned>) {
        let mut index = self.index.write();
        index.remove(group);
        index.add(group, assigned);
    }

    /// Takes `group` out of the index.
    pub(crate) fn forget(&self, group: &str) {
        self.index.write().remove(group);
        self.read_committed.write().remove(group);
    }

    /// Whether the group's latest tied fetch was `read_committed`.
    pub(crate) fn is_read_committed(&self, group: &str) -> bool {
        self.read_committed
            .read()
            .get(group)
            .copied()
            .unwrap_or(false)
    }

    /// The fetched `(topic, partition, offset)`s from `client_id` at `host`
    /// that are tied to exactly one group whose tie is still open; `settle`
    /// decides for each whether the tie closes (it returns true once the
    /// group's start there is known). Everything else costs one lookup.
    pub(crate) fn open_ties<'a>(
        &self,
        client_id: &str,
        host: IpAddr,
        read_committed: bool,
        fetched: impl IntoIterator<Item = (&'a str, i32, i64)>,
        mut settle: impl FnMut(&OpenTie) -> bool,
    ) {
        let index = self.index.read();
        let Some(topics) = index
            .clients
            .get(client_id)
            .and_then(|hosts| hosts.iter().find(|(ip, _)| *ip == host))
            .map(|(_, topics)| topics)
        else {
            return;
        };
        for (topic, partition, offset) in fetched {
            let Some(owners) = topics.get(topic).and_then(|parts| parts.get(&partition)) else {
                continue;
            };
            // Ambiguous (several groups) or unknown: tied to nothing.
            let [owner] = owners.as_slice() else {
                continue;
            };
            if self.read_committed.read().get(&owner.group) != Some(&read_committed) {
                self.read_committed
                    .write()
                    .insert(owner.group.clone(), read_committed);
            }
            if !owner.open.load(Ordering::Acquire) {
                continue;
            }
            let tie = OpenTie {
                group: owner.group.clone(),
                topic: topic.to_owned(),
                partition,
                offset,
            };
            if settle(&tie) {
                owner.open.store(false, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::messages::{ConsumerProtocolAssignment, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn encoded(version: i16, topics: &[(&str, &[i32])]) -> Vec<u8> {
        let a = ConsumerProtocolAssignment::default()
            .with_assigned_partitions(
                topics
                    .iter()
                    .map(|(t, p)| {
                        TopicPartition::default()
                            .with_topic(TopicName(StrBytes::from_string((*t).to_owned())))
                            .with_partitions(p.to_vec())
                    })
                    .collect(),
            )
            .with_user_data(Some(bytes::Bytes::from_static(b"sticky")));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&version.to_be_bytes());
        a.encode(&mut buf, version).unwrap();
        buf.to_vec()
    }

    #[test]
    fn every_version_of_the_consumer_assignment_decodes() {
        for version in 0..=3 {
            let bytes = encoded(version, &[("orders", &[0, 2]), ("audit.log", &[1])]);
            assert_eq!(
                assigned_partitions(&bytes),
                Some(vec![
                    ("orders".to_owned(), vec![0, 2]),
                    ("audit.log".to_owned(), vec![1])
                ]),
                "version {version}"
            );
        }
        assert_eq!(assigned_partitions(&[]), Some(Vec::new()));
        // A null topic array is no partitions.
        assert_eq!(
            assigned_partitions(&[0, 1, 0xff, 0xff, 0xff, 0xff]),
            Some(Vec::new())
        );
    }

    #[test]
    fn a_lying_or_cut_assignment_is_refused_without_allocating_its_counts() {
        // 2^31-1 topics, and one topic claiming 2^31-1 partitions.
        assert_eq!(assigned_partitions(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
        let mut lying = vec![0, 0, 0, 0, 0, 1, 0, 1, b't'];
        lying.extend_from_slice(&i32::MAX.to_be_bytes());
        lying.extend_from_slice(&[0, 0, 0, 1]);
        assert_eq!(assigned_partitions(&lying), None);
        assert_eq!(assigned_partitions(&[0xff, 0xff, 0, 0, 0, 0]), None);
        let whole = encoded(3, &[("orders", &[0, 1, 2])]);
        // Every cut inside the topics fails; user data may be cut off.
        for cut in 1..whole.len() {
            let got = assigned_partitions(&whole[..cut]);
            assert!(
                got.is_none() || got == Some(vec![("orders".to_owned(), vec![0, 1, 2])]),
                "cut at {cut}: {got:?}"
            );
        }
        // Random bytes, and valid assignments with random bytes changed,
        // never panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let r = next();
            let len = (r % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (r >> (i % 8 * 8)) as u8).collect();
            let _ = assigned_partitions(&bytes);
            let mut mutated = whole.clone();
            for _ in 0..1 + next() % 3 {
                let at = (next() % mutated.len() as u64) as usize;
                mutated[at] = next() as u8;
            }
            let _ = assigned_partitions(&mutated);
        }
    }

    fn assigned(client: &str, host: &str, topic: &str, partition: i32) -> Assigned {
        Assigned {
            client_id: client.into(),
            host: host.parse().unwrap(),
            topic: topic.into(),
            partition,
        }
    }

    fn open(ties: &Ties, client: &str, host: &str, fetched: &[(&str, i32, i64)]) -> Vec<OpenTie> {
        let mut out = Vec::new();
        ties.open_ties(
            client,
            host.parse().unwrap(),
            false,
            fetched.iter().copied(),
            |t| {
                out.push(t.clone());
                true
            },
        );
        out
    }

    #[test]
    fn a_fetch_ties_to_the_one_group_assigned_the_partition_and_only_once() {
        let ties = Ties::default();
        ties.set("a", vec![assigned("rdkafka", "10.0.0.1", "t", 0)]);
        ties.set("b", vec![assigned("rdkafka", "10.0.0.1", "t", 1)]);
        let got = open(&ties, "rdkafka", "10.0.0.1", &[("t", 0, 40), ("t", 1, 7)]);
        let groups: Vec<&str> = got.iter().map(|t| &*t.group).collect();
        assert_eq!(groups, ["a", "b"]);
        assert_eq!(got[0].offset, 40);
        // Settled: the next fetch of the same partitions finds nothing open.
        assert!(open(&ties, "rdkafka", "10.0.0.1", &[("t", 0, 41), ("t", 1, 8)]).is_empty());
        // Another host or client id is not the member.
        ties.set("c", vec![assigned("app", "10.0.0.2", "t", 2)]);
        assert!(open(&ties, "app", "10.0.0.1", &[("t", 2, 0)]).is_empty());
        assert!(open(&ties, "rdkafka", "10.0.0.2", &[("t", 2, 0)]).is_empty());
        assert_eq!(open(&ties, "app", "10.0.0.2", &[("t", 2, 0)]).len(), 1);
    }

    #[test]
    fn an_ambiguous_fetch_ties_to_nothing_until_one_group_is_left() {
        let ties = Ties::default();
        ties.set("a", vec![assigned("rdkafka", "127.0.0.1", "t", 0)]);
        ties.set("b", vec![assigned("rdkafka", "127.0.0.1", "t", 0)]);
        assert!(open(&ties, "rdkafka", "127.0.0.1", &[("t", 0, 5)]).is_empty());
        ties.forget("b");
        let got = open(&ties, "rdkafka", "127.0.0.1", &[("t", 0, 5)]);
        assert_eq!(got.len(), 1);
        assert_eq!(&*got[0].group, "a");
        // A new assignment opens the tie again; a group's own two members
        // behind one client id are one owner.
        ties.set(
            "a",
            vec![
                assigned("rdkafka", "127.0.0.1", "t", 0),
                assigned("rdkafka", "127.0.0.1", "t", 0),
            ],
        );
        assert_eq!(open(&ties, "rdkafka", "127.0.0.1", &[("t", 0, 9)]).len(), 1);
        ties.forget("a");
        assert!(ties.index.read().clients.is_empty());
    }

    #[test]
    fn a_tie_stays_open_until_settled() {
        let ties = Ties::default();
        ties.set("a", vec![assigned("c", "::1", "t", 0)]);
        let mut seen = 0;
        for _ in 0..2 {
            ties.open_ties("c", "::1".parse().unwrap(), false, [("t", 0, 3)], |_| {
                seen += 1;
                false
            });
        }
        assert_eq!(seen, 2);
        assert_eq!(host_ip("/::1"), Some("::1".parse().unwrap()));
        assert_eq!(host_ip("/127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(host_ip("/nope"), None);
    }
}
