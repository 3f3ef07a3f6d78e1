//! What each rule finds active in a snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use tally_audit::Snapshot;
use tally_audit::feed::{GroupKey, TopicKey};
use tally_audit::snapshot::{GroupHealth, TopicBooks, TopicBuckets};

use crate::rules::{Matchers, Rule, RuleKind, RuleSet};

/// One alert a rule finds active in a snapshot: its labels (the kind's
/// labels, not yet the rule's own) and the value that crossed the threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Active {
    /// The kind's labels (`cluster`, `group`, `topic`, …).
    pub labels: BTreeMap<String, String>,
    /// The value that crossed the threshold.
    pub value: f64,
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Whether a group's tier (`group:<name>`) matches the `tier` selector.
fn group_tier_matches(m: &Matchers, group: &str) -> bool {
    m.tier.is_any() || m.tier.matches(&format!("group:{group}"))
}

/// Whether a tier matches the `tier` selector and, when one is given, the
/// `group` selector (then only group tiers can match).
fn tier_matches(m: &Matchers, tier: &str) -> bool {
    m.tier.matches(tier)
        && (m.group.is_any()
            || tier
                .strip_prefix("group:")
                .is_some_and(|g| m.group.matches(g)))
}

/// The alerts `rule` finds active in `snapshot`.
pub fn active(rule: &Rule, snapshot: &Snapshot) -> Vec<Active> {
    let mut out = Vec::new();
    match &rule.kind {
        RuleKind::ConsumerLag { .. } | RuleKind::GroupStatus { .. } => {
            for g in &snapshot.groups {
                group_active(rule, g, &mut out);
            }
        }
        RuleKind::Completeness { .. } | RuleKind::Mirror { .. } => {
            for t in &snapshot.topics {
                topic_active(rule, t, &mut out);
            }
        }
        RuleKind::Expired { .. } => {
            for t in &snapshot.buckets {
                buckets_active(rule, t, &mut out);
            }
        }
        RuleKind::SourceSilent { .. } => sources_active(rule, snapshot, &mut out),
    }
    out
}

/// What each rule found per group and per topic at the last evaluation, so
/// that an evaluation judges again only the groups and topics that the
/// snapshot's change hint ([`tally_audit::feed::Changes`]) names. A
/// snapshot that does not follow the last one (its `seq`), or new rules,
/// start it afresh; `source_silent` follows the clock and is judged each time.
#[derive(Debug, Default)]
pub struct ActiveCache {
    rules: Option<Arc<RuleSet>>,
    seq: u64,
    per_rule: Vec<RuleCache>,
}

#[derive(Debug, Default)]
struct RuleCache {
    groups: HashMap<GroupKey, Vec<Active>>,
    topics: HashMap<TopicKey, Vec<Active>>,
}

/// Each item's findings: those of the last evaluation where the hint
/// (`changed`, None = all) leaves the item out, else judged afresh; added
/// to `out` in the items' order, and kept in `cache` for the next time.
fn judge_each<'r, T, K: Hash + Eq>(
    rule: &'r Rule,
    items: &[T],
    key_of: impl Fn(&T) -> K,
    changed: Option<&HashSet<K>>,
    cache: &mut HashMap<K, Vec<Active>>,
    judge: impl Fn(&T, &mut Vec<Active>),
    out: &mut Vec<(&'r Rule, Active)>,
) {
    let mut next = HashMap::with_capacity(items.len());
    for item in items {
        let key = key_of(item);
        let unchanged = changed.is_some_and(|c| !c.contains(&key));
        let found = match cache.remove(&key) {
            Some(found) if unchanged => found,
            _ => {
                let mut found = Vec::new();
                judge(item, &mut found);
                found
            }
        };
        out.extend(found.iter().map(|a| (rule, a.clone())));
        next.insert(key, found);
    }
    *cache = next;
}

impl ActiveCache {
    /// What `rules` find active in `snapshot`: the same as [`active`] for
    /// each rule, in the same order.
    pub fn active<'r>(
        &mut self,
        rules: &'r Arc<RuleSet>,
        snapshot: &Snapshot,
    ) -> Vec<(&'r Rule, Active)> {
        let hint = &snapshot.changes;
        let follows = hint.seq != 0
            && hint.seq == self.seq.wrapping_add(1)
            && self.rules.as_ref().is_some_and(|r| Arc::ptr_eq(r, rules));
        self.seq = hint.seq;
        if !follows {
            self.rules = Some(rules.clone());
            self.per_rule = rules.rules.iter().map(|_| RuleCache::default()).collect();
        }
        let topics = hint.topics.as_ref().filter(|_| follows);
        let groups = hint.groups.as_ref().filter(|_| follows);
        let mut out = Vec::new();
        for (rule, cache) in rules.rules.iter().zip(&mut self.per_rule) {
            match &rule.kind {
                RuleKind::ConsumerLag { .. } | RuleKind::GroupStatus { .. } => judge_each(
                    rule,
                    &snapshot.groups,
                    |g| GroupKey {
                        cluster: g.cluster.clone(),
                        group: g.group.clone(),
                    },
                    groups,
                    &mut cache.groups,
                    |g, found| group_active(rule, g, found),
                    &mut out,
                ),
                RuleKind::Completeness { .. } | RuleKind::Mirror { .. } => judge_each(
                    rule,
                    &snapshot.topics,
                    |t| TopicKey {
                        cluster: t.cluster.clone(),
                        topic: t.topic.clone(),
                    },
                    topics,
                    &mut cache.topics,
                    |t, found| topic_active(rule, t, found),
                    &mut out,
                ),
                RuleKind::Expired { .. } => judge_each(
                    rule,
                    &snapshot.buckets,
                    |t| TopicKey {
                        cluster: t.cluster.clone(),
                        topic: t.topic.clone(),
                    },
                    topics,
                    &mut cache.topics,
                    |t, found| buckets_active(rule, t, found),
                    &mut out,
                ),
                RuleKind::SourceSilent { .. } => {
                    let mut found = Vec::new();
                    sources_active(rule, snapshot, &mut found);
                    out.extend(found.into_iter().map(|a| (rule, a)));
                }
            }
        }
        out
    }
}

/// What a `consumer_lag` or `group_status` rule finds active in one group.
fn group_active(rule: &Rule, g: &GroupHealth, out: &mut Vec<Active>) {
    let m = &rule.matchers;
    match &rule.kind {
        RuleKind::ConsumerLag { records, seconds } => {
            if !m.cluster.matches(&g.cluster)
                || !m.group.matches(&g.group)
                || !group_tier_matches(m, &g.group)
            {
                return;
            }
            // Per topic: records summed over partitions, seconds the
            // largest. A group's partitions come sorted by topic: each
            // run of one topic is matched and summed once.
            let mut per_topic: Vec<(&str, u64, f64)> = Vec::new();
            for run in g.partitions.chunk_by(|a, b| a.topic == b.topic) {
                if m.topic.matches(&run[0].topic) {
                    per_topic.push((
                        run[0].topic.as_str(),
                        run.iter().map(|p| p.lag_records).sum(),
                        run.iter().map(|p| p.lag_seconds).fold(0.0, f64::max),
                    ));
                }
            }
            if !per_topic.is_sorted_by(|a, b| a.0 < b.0) {
                // Not sorted after all: merge the runs of each topic.
                per_topic.sort_by(|a, b| a.0.cmp(b.0));
                per_topic.dedup_by(|later, kept| {
                    let same = later.0 == kept.0;
                    if same {
                        kept.1 += later.1;
                        kept.2 = kept.2.max(later.2);
                    }
                    same
                });
            }
            for (topic, lag_records, lag_seconds) in per_topic {
                let by_records = records.is_some_and(|r| lag_records > r);
                let by_seconds = seconds.is_some_and(|s| lag_seconds > s);
                if by_records || by_seconds {
                    out.push(Active {
                        labels: labels(&[
                            ("cluster", &g.cluster),
                            ("group", &g.group),
                            ("topic", topic),
                        ]),
                        value: if by_records {
                            lag_records as f64
                        } else {
                            lag_seconds
                        },
                    });
                }
            }
        }
        RuleKind::GroupStatus { statuses } => {
            let topic_ok =
                m.topic.is_any() || g.partitions.iter().any(|p| m.topic.matches(&p.topic));
            if m.cluster.matches(&g.cluster)
                && m.group.matches(&g.group)
                && group_tier_matches(m, &g.group)
                && topic_ok
                && statuses.contains(&g.status)
            {
                out.push(Active {
                    labels: labels(&[
                        ("cluster", &g.cluster),
                        ("group", &g.group),
                        ("status", g.status.as_str()),
                    ]),
                    value: 1.0,
                });
            }
        }
        _ => {}
    }
}

/// What a `completeness` or `mirror` rule finds active in one topic's books.
fn topic_active(rule: &Rule, t: &TopicBooks, out: &mut Vec<Active>) {
    let m = &rule.matchers;
    if !m.cluster.matches(&t.cluster) || !m.topic.matches(&t.topic) {
        return;
    }
    if let RuleKind::Mirror {
        missing,
        records,
        seconds,
    } = &rule.kind
    {
        for (tier, books) in &t.tiers {
            let Some(lag) = books.mirror_lag.filter(|_| tier_matches(m, tier)) else {
                continue;
            };
            // The value: records lost where that threshold is crossed,
            // else the lag in records or seconds, whichever is crossed.
            let value = if missing.is_some_and(|n| books.missing >= n) {
                Some(books.missing as f64)
            } else if records.is_some_and(|n| lag.records > n) {
                Some(lag.records as f64)
            } else if seconds.is_some_and(|s| lag.seconds > s) {
                Some(lag.seconds)
            } else {
                None
            };
            if let Some(value) = value {
                out.push(Active {
                    labels: labels(&[("cluster", &t.cluster), ("topic", &t.topic), ("tier", tier)]),
                    value,
                });
            }
        }
        return;
    }
    let RuleKind::Completeness { min_ratio } = &rule.kind else {
        return;
    };
    for (tier, books) in &t.tiers {
        let is_reference = t.reference.as_deref() == Some(tier.as_str());
        if !is_reference && tier_matches(m, tier) && books.completeness < *min_ratio {
            out.push(Active {
                labels: labels(&[("cluster", &t.cluster), ("topic", &t.topic), ("tier", tier)]),
                value: books.completeness,
            });
        }
    }
}

/// What an `expired` rule finds active in one topic's buckets.
fn buckets_active(rule: &Rule, t: &TopicBuckets, out: &mut Vec<Active>) {
    let m = &rule.matchers;
    let RuleKind::Expired { min_records } = &rule.kind else {
        return;
    };
    if !m.cluster.matches(&t.cluster) || !m.topic.matches(&t.topic) {
        return;
    }
    // A topic has a few group tiers, the same in most of its
    // buckets: a short list, each tier's place remembered.
    let mut per_group: Vec<(&str, u64)> = Vec::new();
    for b in t.buckets.iter() {
        let mut at = 0;
        for (tier, books) in &b.tiers {
            let Some(group) = tier.strip_prefix("group:") else {
                continue;
            };
            if per_group.get(at).is_none_or(|(g, _)| *g != group) {
                match per_group.iter().position(|(g, _)| *g == group) {
                    Some(i) => at = i,
                    None if m.group.matches(group) && m.tier.matches(tier) => {
                        at = per_group.len();
                        per_group.push((group, 0));
                    }
                    None => continue,
                }
            }
            per_group[at].1 += books.expired.unwrap_or(0);
            at += 1;
        }
    }
    per_group.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (group, expired) in per_group {
        if expired >= *min_records {
            out.push(Active {
                labels: labels(&[
                    ("cluster", &t.cluster),
                    ("topic", &t.topic),
                    ("group", group),
                ]),
                value: expired as f64,
            });
        }
    }
}

/// What a `source_silent` rule finds active: judged afresh each time, as
/// the clock moves it.
fn sources_active(rule: &Rule, snapshot: &Snapshot, out: &mut Vec<Active>) {
    let m = &rule.matchers;
    let RuleKind::SourceSilent { after_ms } = &rule.kind else {
        return;
    };
    for s in &snapshot.sources {
        let silent_ms = snapshot.at_ms.saturating_sub(s.last_seen_ms);
        let tier_ok = m.tier.is_any() || s.tier_kinds.iter().any(|k| m.tier.matches(k));
        if m.cluster.matches(&s.cluster)
            && m.source.matches(&s.source)
            && tier_ok
            && silent_ms > i64::try_from(*after_ms).unwrap_or(i64::MAX)
        {
            out.push(Active {
                labels: labels(&[("cluster", &s.cluster), ("source", &s.source)]),
                value: silent_ms as f64 / 1000.0,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSet;
    use tally_audit::snapshot::{
        BucketBooks, BucketStatus, BucketTier, GroupHealth, PartitionLag, SourceInfo, TierBooks,
        TopicBooks, TopicBuckets,
    };
    use tally_audit::{GroupStatus, PartitionStatus};

    fn partition(topic: &str, partition: i32, lag: u64, seconds: f64) -> PartitionLag {
        PartitionLag {
            topic: topic.into(),
            partition,
            committed: 0,
            end_offset: lag as i64,
            start_offset: 0,
            lag_records: lag,
            lag_seconds: seconds,
            status: PartitionStatus::Ok,
            commit_at_ms: 0,
            commits: Vec::new(),
            stable_offset: None,
            estimated: false,
            stale: false,
        }
    }

    pub(crate) fn snapshot() -> Snapshot {
        let tier = |records, completeness| TierBooks {
            records,
            completeness,
            ..TierBooks::default()
        };
        let expired = |n| BucketTier {
            records: 10,
            status: BucketStatus::Incomplete,
            missing: n,
            excess: 0,
            pending: Some(0),
            expired: Some(n),
            skipped: Some(0),
            aborted: 0,
        };
        Snapshot {
            at_ms: 1_000_000,
            groups: vec![
                GroupHealth {
                    cluster: "local".into(),
                    group: "billing".into(),
                    status: GroupStatus::Ok,
                    lag_records: 30,
                    max_lag_seconds: 1.0,
                    stale: false,
                    partitions: vec![
                        partition("orders", 0, 10, 1.0),
                        partition("orders", 1, 20, 0.5),
                    ]
                    .into(),
                }
                .into(),
                GroupHealth {
                    cluster: "local".into(),
                    group: "analytics".into(),
                    status: GroupStatus::Err,
                    lag_records: 500,
                    max_lag_seconds: 90.0,
                    stale: false,
                    partitions: vec![partition("orders", 0, 500, 90.0)].into(),
                }
                .into(),
            ],
            topics: vec![
                TopicBooks {
                    cluster: "local".into(),
                    topic: "orders".into(),
                    reference: Some("broker".into()),
                    tiers: [
                        ("broker".to_owned(), tier(100, 1.0)),
                        ("group:analytics".to_owned(), tier(70, 0.7)),
                        ("group:billing".to_owned(), tier(100, 1.0)),
                    ]
                    .into(),
                }
                .into(),
            ],
            buckets: vec![TopicBuckets {
                cluster: "local".into(),
                topic: "orders".into(),
                width_ms: 1000,
                buckets: vec![
                    BucketBooks {
                        bucket: 0,
                        tiers: [("group:analytics".to_owned(), expired(3))].into(),
                    },
                    BucketBooks {
                        bucket: 1000,
                        tiers: [
                            ("group:analytics".to_owned(), expired(4)),
                            ("group:billing".to_owned(), expired(0)),
                        ]
                        .into(),
                    },
                ]
                .into(),
            }],
            sources: vec![SourceInfo {
                source: "broker-0".into(),
                cluster: "local".into(),
                tier_kinds: vec!["broker".into()],
                last_seen_ms: 1_000_000 - 400_000,
                messages: BTreeMap::new(),
                errors: 0,
                connected: false,
                duplicate_entries: 0,
            }],
            ..Snapshot::default()
        }
    }

    fn run(yaml: &str) -> Vec<Active> {
        let set = RuleSet::parse(&format!("rules:\n  - {yaml}\n"), "t").unwrap();
        active(&set.rules[0], &snapshot())
    }

    #[test]
    fn consumer_lag_sums_records_and_takes_the_largest_seconds() {
        let a = run("{name: L, kind: consumer_lag, records: 25}");
        let groups: Vec<_> = a
            .iter()
            .map(|a| (a.labels["group"].as_str(), a.value))
            .collect();
        assert_eq!(groups, [("billing", 30.0), ("analytics", 500.0)]);
        let a = run("{name: L, kind: consumer_lag, seconds: 60}");
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].labels["group"].as_str(), a[0].value),
            ("analytics", 90.0)
        );
        assert!(run("{name: L, kind: consumer_lag, records: 25, group: \"x*\"}").is_empty());
        assert!(run("{name: L, kind: consumer_lag, records: 500}").is_empty());
        // A group is also its tier.
        let a = run("{name: L, kind: consumer_lag, records: 25, tier: \"group:an*\"}");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].labels["group"], "analytics");
    }

    #[test]
    fn expired_sums_each_selected_group_over_buckets_with_differing_tiers() {
        let set =
            RuleSet::parse("rules:\n  - {name: E, kind: expired, group: \"a*\"}\n", "t").unwrap();
        let tier = |expired| BucketTier {
            records: 10,
            status: BucketStatus::Incomplete,
            missing: expired,
            excess: 0,
            pending: Some(0),
            expired: Some(expired),
            skipped: Some(0),
            aborted: 0,
        };
        let bucket = |bucket, tiers: &[(&str, u64)]| BucketBooks {
            bucket,
            tiers: tiers
                .iter()
                .map(|(g, n)| (format!("group:{g}"), tier(*n)))
                .chain([("broker".to_owned(), tier(0))])
                .collect(),
        };
        let mut snap = snapshot();
        snap.buckets[0].buckets = vec![
            bucket(0, &[("alpha", 3)]),
            bucket(1000, &[("beta", 5), ("apex", 2)]),
            bucket(2000, &[("apex", 1), ("alpha", 4), ("beta", 9)]),
        ]
        .into();
        let a: Vec<_> = active(&set.rules[0], &snap)
            .into_iter()
            .map(|a| (a.labels["group"].clone(), a.value))
            .collect();
        assert_eq!(a, [("alpha".to_owned(), 7.0), ("apex".to_owned(), 3.0)]);
    }

    /// The cache finds what `active` finds, judging again only what the
    /// hint names, and starts afresh on a snapshot that does not follow or
    /// on new rules.
    #[test]
    fn the_cache_finds_what_a_fresh_evaluation_finds() {
        use std::collections::HashSet;
        use tally_audit::feed::Changes;
        let yaml = "rules:
  - {name: L, kind: consumer_lag, records: 25}
  - {name: S, kind: group_status, statuses: [err]}
  - {name: C, kind: completeness, min_ratio: 0.99}
  - {name: E, kind: expired}
  - {name: Q, kind: source_silent, after: 5m}
";
        let rules = Arc::new(RuleSet::parse(yaml, "t").unwrap());
        let fresh = |snap: &Snapshot| -> Vec<(String, Active)> {
            rules
                .rules
                .iter()
                .flat_map(|r| active(r, snap).into_iter().map(|a| (r.name.clone(), a)))
                .collect()
        };
        let cached = |cache: &mut ActiveCache, rules: &Arc<RuleSet>, snap: &Snapshot| {
            cache
                .active(rules, snap)
                .into_iter()
                .map(|(r, a)| (r.name.clone(), a))
                .collect::<Vec<_>>()
        };
        let hint = |seq, topics: &[&str], groups: &[&str]| Changes {
            seq,
            topics: Some(
                topics
                    .iter()
                    .map(|t| TopicKey {
                        cluster: "local".into(),
                        topic: (*t).into(),
                    })
                    .collect::<HashSet<_>>(),
            ),
            groups: Some(
                groups
                    .iter()
                    .map(|g| GroupKey {
                        cluster: "local".into(),
                        group: (*g).into(),
                    })
                    .collect::<HashSet<_>>(),
            ),
        };
        let mut cache = ActiveCache::default();
        let mut snap = snapshot();
        snap.changes = Changes {
            seq: 1,
            ..Changes::default()
        };
        let first = cached(&mut cache, &rules, &snap);
        assert_eq!(first, fresh(&snap));
        assert_eq!(first.len(), 6, "{first:?}");

        // billing falls behind and analytics catches up; the hint names both.
        let mut next = snap.clone();
        Arc::make_mut(&mut next.groups[0]).partitions =
            vec![partition("orders", 0, 40, 1.0)].into();
        let analytics = Arc::make_mut(&mut next.groups[1]);
        analytics.partitions = vec![partition("orders", 0, 0, 0.0)].into();
        analytics.status = GroupStatus::Ok;
        next.at_ms += 1_000;
        next.changes = hint(2, &[], &["billing", "analytics"]);
        let second = cached(&mut cache, &rules, &next);
        assert_eq!(second, fresh(&next));
        let lagging: Vec<_> = second
            .iter()
            .filter(|(r, _)| r == "L")
            .map(|(_, a)| a.labels["group"].as_str())
            .collect();
        assert_eq!(lagging, ["billing"]);

        // A change the hint leaves out, in a snapshot that does not follow
        // (seq 9 after 2): judged afresh, so it is seen.
        let mut later = next.clone();
        std::sync::Arc::make_mut(&mut later.topics[0])
            .tiers
            .get_mut("group:billing")
            .unwrap()
            .completeness = 0.5;
        later.changes = hint(9, &[], &[]);
        assert_eq!(cached(&mut cache, &rules, &later), fresh(&later));
        // Rules reloaded (another set, the same text): afresh too.
        let reloaded = Arc::new(RuleSet::parse(yaml, "t").unwrap());
        let mut again = later.clone();
        again.changes = hint(10, &[], &[]);
        assert_eq!(cached(&mut cache, &reloaded, &again), fresh(&again));
        // Followed by a hint naming nothing: the findings are kept as they were.
        let mut quiet = again.clone();
        quiet.changes = hint(11, &[], &[]);
        assert_eq!(cached(&mut cache, &reloaded, &quiet), fresh(&quiet));
    }

    #[test]
    fn consumer_lag_is_per_topic_whatever_the_order_of_the_partitions() {
        let set = RuleSet::parse(
            "rules:\n  - {name: L, kind: consumer_lag, records: 1, topic: \"o*\"}\n",
            "t",
        )
        .unwrap();
        let mut snap = snapshot();
        Arc::make_mut(&mut snap.groups[0]).partitions = vec![
            partition("payments", 0, 10, 1.0),
            partition("orders", 0, 10, 1.0),
            partition("payments", 1, 10, 1.0),
            partition("orders", 1, 5, 7.0),
            partition("outbox", 0, 1, 0.5),
        ]
        .into();
        let a = active(&set.rules[0], &snap);
        let billing: Vec<_> = a
            .iter()
            .filter(|a| a.labels["group"] == "billing")
            .map(|a| (a.labels["topic"].as_str(), a.value))
            .collect();
        // `outbox` lags 1 record: not more than the threshold.
        assert_eq!(billing, [("orders", 15.0)]);
    }

    #[test]
    fn group_status_completeness_expired_and_silence() {
        let a = run("{name: S, kind: group_status, statuses: [err]}");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].labels["status"], "err");
        let a = run("{name: C, kind: completeness, min_ratio: 0.99}");
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].labels["tier"].as_str(), a[0].value),
            ("group:analytics", 0.7)
        );
        let a = run("{name: C, kind: completeness, min_ratio: 0.99, group: \"bill*\"}");
        assert!(a.is_empty(), "billing is complete: {a:?}");
        let a =
            run("{name: C, kind: completeness, min_ratio: 0.99, group: \"*\", tier: \"broker\"}");
        assert!(a.is_empty(), "the reference is never judged: {a:?}");
        let a = run("{name: E, kind: expired}");
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].labels["group"].as_str(), a[0].value),
            ("analytics", 7.0)
        );
        assert!(run("{name: E, kind: expired, min_records: 8}").is_empty());
        let a = run("{name: Q, kind: source_silent, after: 5m}");
        assert_eq!(
            (a[0].labels["source"].as_str(), a[0].value),
            ("broker-0", 400.0)
        );
        assert!(run("{name: Q, kind: source_silent, after: 10m}").is_empty());
        assert!(run("{name: Q, kind: source_silent, after: 5m, tier: group}").is_empty());
        assert_eq!(
            run("{name: Q, kind: source_silent, after: 5m, tier: broker}").len(),
            1
        );
    }
}
