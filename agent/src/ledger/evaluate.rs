//! Evaluation: the books, buckets, latency and group health of a snapshot.

use super::*;

impl Ledger {
    /// Evaluates the books and the groups' health at `now_ms`.
    pub fn evaluate(&mut self, now_ms: i64) -> Snapshot {
        let width = self.cfg.width;
        let window_start = width
            .bucket_of(now_ms.saturating_sub(self.cfg.window_ms as i64))
            .start_ms();
        let mut topics = Vec::with_capacity(self.topics.len());
        let mut buckets = Vec::with_capacity(self.topics.len());
        let mut order: Vec<u32> = (0..self.topics.len() as u32).collect();
        order.sort_by(|a, b| {
            let (a, b) = (&self.topics[*a as usize], &self.topics[*b as usize]);
            (&a.cluster, &a.topic).cmp(&(&b.cluster, &b.topic))
        });
        let changed_topics = self.changed_topics(now_ms, window_start);
        let (groups, changed_groups) = self.evaluate_groups(now_ms);
        // A topic that did not change is the same as at the last evaluation:
        // its books and buckets are shared.
        self.evaluated.resize_with(self.topics.len(), || None);
        for tid in order {
            let unchanged = changed_topics.as_ref().is_some_and(|c| !c.contains(&tid));
            let reused = match &self.evaluated[tid as usize] {
                Some((books, view)) if unchanged => Some((books.clone(), view.clone())),
                _ => None,
            };
            let (books, view) = match reused {
                Some(both) => both,
                None => {
                    let (books, view) = self.evaluate_topic(tid, window_start, now_ms);
                    let both = (Arc::new(books), view);
                    self.evaluated[tid as usize] = Some(both.clone());
                    both
                }
            };
            topics.push(books);
            buckets.push(view);
        }
        if !self.late_outside.is_empty() {
            self.judge_late_outside(now_ms);
        }
        self.evaluations += 1;
        let changes = tally_audit::feed::Changes {
            seq: self.evaluations,
            topics: changed_topics.map(|changed| {
                changed
                    .into_iter()
                    .filter_map(|tid| self.topics.get(tid as usize))
                    .map(|t| tally_audit::feed::TopicKey {
                        cluster: t.cluster.clone(),
                        topic: t.topic.clone(),
                    })
                    .collect()
            }),
            groups: Some(changed_groups),
        };
        Snapshot {
            at_ms: now_ms,
            width_ms: width.ms(),
            grace_ms: self.cfg.grace_ms,
            window_ms: self.cfg.window_ms,
            topics,
            buckets,
            groups,
            sources: self.source_infos(),
            alerts: Vec::new(),
            latency: self.latency_books(),
            clusters: self.cluster_infos(),
            changes,
        }
    }

    /// The topics that may differ from the last evaluation (for the reuse
    /// of the others and the stream feed's hint): those whose counts changed,
    /// or None (every topic) when the clock moved a bucket's close or the
    /// window's start since.
    fn changed_topics(&mut self, now_ms: i64, window_start: i64) -> Option<FxHashSet<u32>> {
        let width = self.cfg.width;
        let span = width.ms().saturating_add(self.cfg.grace_ms);
        let newest_closed = width
            .bucket_of(now_ms.saturating_sub(i64::try_from(span).unwrap_or(i64::MAX)))
            .start_ms();
        let epoch = (newest_closed, window_start);
        // A copy that stopped rising a grace period ago turns its short
        // buckets from pending to incomplete: judge its topic again.
        if !self.mirror_recheck.is_empty() {
            let grace = i64::try_from(self.cfg.grace_ms).unwrap_or(i64::MAX);
            self.mirror_rose
                .retain(|_, at| now_ms.saturating_sub(*at) < grace);
            let due: Vec<u32> = self
                .mirror_recheck
                .iter()
                .filter(|(_, at)| **at <= now_ms)
                .map(|(tid, _)| *tid)
                .collect();
            for tid in due {
                self.mirror_recheck.remove(&tid);
                self.dirty_topics.insert(tid);
            }
        }
        let dirty = std::mem::take(&mut self.dirty_topics);
        let all = std::mem::replace(&mut self.all_topics_dirty, false)
            || self.last_epoch.replace(epoch) != Some(epoch);
        (!all).then_some(dirty)
    }

    /// Each (cluster, topic, tier)'s latency, summed over its sources. Sums
    /// only make sense over equal bounds: the first source's bounds win, and
    /// a source with other bounds is left out (and warned about once).
    fn latency_books(&mut self) -> Vec<LatencyBooks> {
        let mut books: BTreeMap<(&str, &str, &Tier), LatencyBooks> = BTreeMap::new();
        let mut skipped = Vec::new();
        for (key, cell) in &self.latency {
            let h = &cell.histogram;
            let sum = books
                .entry((key.1.as_str(), key.2.as_str(), &key.3))
                .or_insert_with(|| LatencyBooks {
                    cluster: key.1.clone(),
                    topic: key.2.clone(),
                    tier: key.3.to_string(),
                    bounds_ms: h.bounds_ms.clone(),
                    counts: vec![0; h.counts.len()],
                    count: 0,
                    sum_ms: 0,
                });
            if sum.bounds_ms != h.bounds_ms {
                skipped.push(key);
                continue;
            }
            for (total, n) in sum.counts.iter_mut().zip(&h.counts) {
                *total = total.saturating_add(*n);
            }
            sum.count = sum.count.saturating_add(h.count);
            sum.sum_ms = sum.sum_ms.saturating_add(h.sum_ms);
        }
        let out = books.into_values().collect();
        for key in skipped {
            if self.latency_bounds_warned.insert(key.clone()) {
                let source = self
                    .sources
                    .get(key.0 as usize)
                    .map_or("", |s| s.name.as_str());
                tracing::warn!(
                    source,
                    cluster = %key.1,
                    topic = %key.2,
                    tier = %key.3,
                    "left a latency histogram out of the sum: its bounds differ from another source's"
                );
            }
        }
        out
    }

    pub(super) fn cluster_infos(&self) -> Vec<ClusterInfo> {
        let mut out: Vec<ClusterInfo> = self
            .clusters
            .iter()
            .map(|(&source, h)| {
                let partitions = || h.state.topics.iter().flat_map(|t| &t.partitions);
                ClusterInfo {
                    cluster: h.cluster.clone(),
                    source: self
                        .sources
                        .get(source as usize)
                        .map_or_else(String::new, |s| s.name.clone()),
                    at_ms: h.state.at_ms,
                    received_ms: h.received_ms,
                    brokers: h.state.brokers,
                    partitions: h.state.partition_count() as u64,
                    offline_partitions: partitions().filter(|p| p.is_offline()).count() as u64,
                    under_replicated_partitions: partitions()
                        .filter(|p| p.is_under_replicated())
                        .count() as u64,
                    topics: h.state.topics.clone(),
                    groups: h.state.groups.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.cluster, &a.source).cmp(&(&b.cluster, &b.source)));
        out
    }

    fn reference_of(&self, topic: &Topic) -> Option<u32> {
        let find = |t: &Tier| {
            topic
                .series
                .iter()
                .copied()
                .find(|&s| self.series[s as usize].tier == *t)
        };
        find(&Tier::Broker).or_else(|| find(&Tier::Produced))
    }

    fn evaluate_topic(
        &mut self,
        tid: u32,
        window_start: i64,
        now_ms: i64,
    ) -> (TopicBooks, TopicBuckets) {
        let topic = &self.topics[tid as usize];
        let reference = self.reference_of(topic);
        let width = self.cfg.width;
        let plan = self.plan_of(&topic.series);
        let mut per_bucket: BTreeMap<i64, Vec<(u32, CellCounts)>> = BTreeMap::new();
        for s in &plan {
            for (&(_, b), c) in self.sums.range((s.id, window_start)..=(s.id, i64::MAX)) {
                per_bucket.entry(b).or_default().push((s.id, *c));
            }
        }
        let mut books = TopicBooks {
            cluster: topic.cluster.clone(),
            topic: topic.topic.clone(),
            reference: reference.map(|r| self.series[r as usize].tier.to_string()),
            tiers: BTreeMap::new(),
        };
        // Per series (in plan order): its tier's name and completeness ratio.
        let mut names: Vec<String> = Vec::with_capacity(plan.len());
        let mut ratios: Vec<(u64, u64)> = vec![(0, 0); plan.len()];
        for s in &plan {
            let sr = &self.series[s.id as usize];
            let is_group = sr.tier.kind() == TierKind::Group;
            let mut tb = TierBooks {
                records: sr.live.records + sr.pruned.records,
                bytes: sr.live.bytes,
                completeness: 1.0,
                no_timestamp: sr.live.no_timestamp,
                aborted: sr.live.aborted,
                ..TierBooks::default()
            };
            if sr.tier.kind() == TierKind::Mirror {
                tb.mirror_lag = Some(tally_audit::snapshot::MirrorLag::default());
            }
            if is_group {
                tb.expired = Some(sr.live.expired + sr.pruned.expired);
                tb.skipped = Some(sr.live.skipped);
                let reference_total = reference.map_or(0, |r| self.series[r as usize].live.records);
                let accounted = sr.live.records + sr.live.expired + sr.live.skipped;
                tb.pending = Some(reference_total.saturating_sub(accounted));
            }
            let name = sr.tier.to_string();
            books.tiers.insert(name.clone(), tb);
            names.push(name);
        }
        let mut view_buckets = Vec::with_capacity(per_bucket.len());
        // The closes to record, once the series are no longer borrowed.
        let mut to_close: Vec<(u32, i64, Judgement, CellCounts)> = Vec::new();
        for (bucket, present) in per_bucket {
            let closed = self.cfg.is_closed(bucket, now_ms);
            let judged = self.judge(&plan, reference, bucket, &present, closed, now_ms);
            let mut bb = BucketBooks {
                bucket,
                tiers: BTreeMap::new(),
            };
            for (i, counts, j) in judged {
                let s = plan[i].id;
                let name = &names[i];
                if closed {
                    to_close.push((s, bucket, j, counts));
                    ratios[i].0 += j.ratio.0;
                    ratios[i].1 += j.ratio.1;
                    if let Some(tb) = books.tiers.get_mut(name) {
                        tb.missing += j.missing;
                        tb.excess += j.excess;
                        if let Some(lag) = &mut tb.mirror_lag {
                            let short = j.missing + j.pending.unwrap_or(0);
                            if short > 0 {
                                lag.records += short;
                                // Buckets come oldest first: the first short
                                // one holds the oldest records not copied.
                                if lag.seconds == 0.0 {
                                    lag.seconds =
                                        now_ms.saturating_sub(bucket).max(0) as f64 / 1000.0;
                                }
                            }
                        }
                    }
                }
                if let Some(tb) = books.tiers.get_mut(name) {
                    *tb.buckets.entry(j.status).or_default() += 1;
                }
                bb.tiers
                    .insert(name.clone(), bucket_tier(plan[i].tier, &counts, &j));
            }
            view_buckets.push(bb);
        }
        let view = TopicBuckets {
            cluster: books.cluster.clone(),
            topic: books.topic.clone(),
            width_ms: width.ms(),
            buckets: Arc::new(view_buckets),
        };
        for (s, bucket, j, counts) in to_close {
            self.close(s, bucket, &j, &counts, now_ms);
        }
        for (name, (num, den)) in names.iter().zip(ratios) {
            if let Some(tb) = books.tiers.get_mut(name) {
                tb.completeness = if den == 0 {
                    1.0
                } else {
                    num as f64 / den as f64
                };
            }
        }
        (books, view)
    }

    /// Judges `bucket` of the series of `plan` from `present`, with what the
    /// ledger holds of the bucket's closes and of the copies that rose.
    fn judge(
        &self,
        plan: &[SeriesRef<'_>],
        reference: Option<u32>,
        bucket: i64,
        present: &[(u32, CellCounts)],
        closed: bool,
        now_ms: i64,
    ) -> Vec<(usize, CellCounts, Judgement)> {
        judge_bucket(
            plan,
            reference,
            bucket,
            present,
            closed,
            |s| {
                self.closed
                    .get(&(s, bucket))
                    .is_some_and(|p| p.unresolved_at_close)
            },
            |s| rising(&self.mirror_rose, s, bucket, now_ms, self.cfg.grace_ms),
        )
    }

    /// The series `ids` as judging their buckets needs them.
    fn plan_of(&self, ids: &[u32]) -> Vec<SeriesRef<'_>> {
        ids.iter()
            .map(|&s| {
                let sr = &self.series[s as usize];
                SeriesRef {
                    id: s,
                    tier: &sr.tier,
                    first_bucket: sr.first_bucket,
                }
            })
            .collect()
    }

    /// Records the judgement of a closed bucket where it differs from the
    /// one on record, for the history table.
    fn close(&mut self, series: u32, bucket: i64, j: &Judgement, counts: &CellCounts, now_ms: i64) {
        let prior = self.closed.get(&(series, bucket)).copied();
        let entry = Closed {
            status: j.status,
            unresolved_at_close: prior.map_or(
                matches!(j.status, BucketStatus::Pending | BucketStatus::Incomplete),
                |p| p.unresolved_at_close,
            ),
        };
        if prior != Some(entry) {
            self.closed.insert((series, bucket), entry);
            self.touched.insert(bucket, self.generation);
            self.dirty_history.push(HistoryRow {
                series,
                bucket,
                status: j.status.as_str().to_owned(),
                unresolved_at_close: entry.unresolved_at_close,
                records: counts.records,
                reference: j.reference,
                pending: j.pending.unwrap_or(0),
                expired: counts.expired,
                skipped: counts.skipped,
                closed_at_ms: now_ms,
            });
        }
    }

    /// Judges again the buckets before the window that took a late count,
    /// from what memory holds of them and, for the rest, what the store
    /// holds, so that their history says what they are now (`late` where a
    /// bucket unresolved at close has become complete).
    pub(super) fn judge_late_outside(&mut self, now_ms: i64) {
        for (tid, bucket) in std::mem::take(&mut self.late_outside) {
            let Some(topic) = self.topics.get(tid as usize) else {
                continue;
            };
            let reference = self.reference_of(topic);
            let ids = topic.series.clone();
            let mut present = Vec::with_capacity(ids.len());
            let mut failed = false;
            for &s in &ids {
                // What memory holds of the bucket is the newest; what it does
                // not hold is committed.
                if !self.closed.contains_key(&(s, bucket))
                    && let Some(link) = &self.cold
                {
                    match link.0.closed(s, bucket) {
                        Ok(Some((status, unresolved))) => {
                            if let Some(status) = status_named(&status) {
                                self.closed.insert(
                                    (s, bucket),
                                    Closed {
                                        status,
                                        unresolved_at_close: unresolved,
                                    },
                                );
                                self.touched.entry(bucket).or_insert(0);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!("cannot judge a late bucket again: {e}");
                            failed = true;
                        }
                    }
                }
                let sum = match self.sums.get(&(s, bucket)) {
                    Some(c) => Some(*c),
                    None => match &self.cold {
                        Some(link) => match link.0.sum(s, bucket) {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!("cannot judge a late bucket again: {e}");
                                failed = true;
                                None
                            }
                        },
                        None => None,
                    },
                };
                if let Some(c) = sum {
                    present.push((s, c));
                }
            }
            if failed {
                // Tried again at the next evaluation.
                self.late_outside.insert((tid, bucket));
                continue;
            }
            let plan = self.plan_of(&ids);
            let judged = self.judge(&plan, reference, bucket, &present, true, now_ms);
            let judged: Vec<(u32, CellCounts, Judgement)> = judged
                .into_iter()
                .map(|(i, c, j)| (plan[i].id, c, j))
                .collect();
            for (s, counts, j) in judged {
                self.close(s, bucket, &j, &counts, now_ms);
            }
        }
    }

    /// What answering the bucket view of `topic` (in `cluster`, or in any
    /// cluster) from the store needs: one plan per cluster that has it.
    pub fn topic_plans(&self, cluster: Option<&str>, topic: &str) -> Vec<TopicPlan> {
        let mut plans: Vec<TopicPlan> = self
            .topics
            .iter()
            .filter(|t| t.topic == topic && cluster.is_none_or(|c| c == t.cluster))
            .map(|t| TopicPlan {
                cluster: t.cluster.clone(),
                topic: t.topic.clone(),
                series: t
                    .series
                    .iter()
                    .map(|&s| {
                        let sr = &self.series[s as usize];
                        (s, sr.tier.clone(), sr.first_bucket)
                    })
                    .collect(),
                reference: self.reference_of(t),
                cfg: self.cfg.clone(),
            })
            .collect();
        plans.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        plans
    }

    /// Each group's lag and health. A group whose lag did not change since
    /// the last evaluation, and whose partitions the clock cannot have moved
    /// (none went stale or stopped since), is the same as then and reused.
    /// Returns the groups, and those that may differ from the last
    /// evaluation's (the change hint).
    fn evaluate_groups(
        &mut self,
        now_ms: i64,
    ) -> (Vec<Arc<GroupHealth>>, HashSet<tally_audit::feed::GroupKey>) {
        let dirty = std::mem::take(&mut self.dirty_groups);
        let mut before = std::mem::take(&mut self.judged_groups);
        let mut groups: Vec<Arc<GroupHealth>> = Vec::new();
        let mut changed = HashSet::new();
        for (key, group) in &self.lag {
            let last = before.remove(key);
            if let Some(judged) = last.filter(|j| !dirty.contains(key) && now_ms < j.until_ms) {
                groups.push(judged.health.clone());
                self.judged_groups.insert(key.clone(), judged);
                continue;
            }
            let mut partitions = Vec::new();
            let mut until_ms = i64::MAX;
            for (topic, partition, e) in group.entries() {
                let stale = e.is_stale(now_ms);
                // Stale lag is judged as of its last refresh: a source that
                // went away is no news of the consumer.
                let judged_at = if stale { e.refreshed_ms } else { now_ms };
                let status = e.health.status(judged_at, &self.cfg.health);
                if !stale {
                    until_ms = until_ms.min(e.stale_after().saturating_add(1));
                    if let Some(stop) = e.health.stops_at(&self.cfg.health)
                        && stop > now_ms
                    {
                        until_ms = until_ms.min(stop);
                    }
                }
                partitions.push(PartitionLag {
                    stable_offset: e.last.stable_offset,
                    estimated: e.last.estimated,
                    stale,
                    topic: topic.to_string(),
                    partition,
                    committed: e.last.committed,
                    end_offset: e.last.end_offset,
                    start_offset: e.last.start_offset,
                    lag_records: e.last.lag_records,
                    lag_seconds: e.last.lag_seconds,
                    status,
                    commit_at_ms: e.last.commit_at_ms,
                    commits: e.health.commits().cloned().collect(),
                });
            }
            let fresh = || partitions.iter().filter(|p| !p.stale);
            let health = Arc::new(GroupHealth {
                cluster: key.0.to_string(),
                group: key.1.to_string(),
                status: group_status(partitions.iter().map(|p| p.status)),
                lag_records: fresh().map(|p| p.lag_records).sum(),
                max_lag_seconds: fresh().map(|p| p.lag_seconds).fold(0.0, f64::max),
                stale: partitions.iter().all(|p| p.stale),
                partitions: Arc::new(partitions),
            });
            changed.insert(tally_audit::feed::GroupKey {
                cluster: key.0.to_string(),
                group: key.1.to_string(),
            });
            groups.push(health.clone());
            self.judged_groups
                .insert(key.clone(), JudgedGroup { health, until_ms });
        }
        // Groups gone since: their lag was forgotten.
        for (cluster, group) in before.into_keys() {
            changed.insert(tally_audit::feed::GroupKey {
                cluster: cluster.to_string(),
                group: group.to_string(),
            });
        }
        (groups, changed)
    }

    fn source_infos(&self) -> Vec<SourceInfo> {
        let mut out: Vec<SourceInfo> = self
            .sources
            .iter()
            .filter(|s| !s.is_placeholder())
            .map(|s| SourceInfo {
                source: s.name.clone(),
                cluster: s.cluster.clone(),
                tier_kinds: s
                    .tier_kinds
                    .iter()
                    .map(|k| {
                        serde_json::to_value(k)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    })
                    .collect(),
                last_seen_ms: s.last_seen_ms,
                messages: MESSAGE_TYPES
                    .iter()
                    .zip(s.messages)
                    .map(|(t, n)| ((*t).to_owned(), n))
                    .collect(),
                errors: s.errors,
                connected: s.sessions > 0,
                duplicate_entries: s.duplicate_entries,
            })
            .collect();
        out.sort_by(|a, b| a.source.cmp(&b.source));
        out
    }

    /// Buckets with a sum, for diagnostics and tests: (cluster, topic, tier, bucket) → records.
    pub fn bucket_records(&self) -> BTreeSet<(String, String, String, i64, u64)> {
        self.sums
            .iter()
            .map(|(&(s, b), c)| {
                let sr = &self.series[s as usize];
                (
                    sr.cluster.clone(),
                    sr.topic.clone(),
                    sr.tier.to_string(),
                    b,
                    c.records,
                )
            })
            .collect()
    }
}

/// One series of a topic, as judging its buckets needs it.
struct SeriesRef<'a> {
    id: u32,
    tier: &'a Tier,
    first_bucket: Option<i64>,
}

/// Judges each tier of a topic in one bucket, from the sums `present`:
/// per series (its index in `series`) that counted in the bucket, or that is
/// judged at zero because the reference counted there from the series'
/// first bucket on, its counts and judgement.
/// Whether mirror series `series` rose in `bucket` within the last grace
/// period before `now_ms`.
fn rising(
    rose: &FxHashMap<(u32, i64), i64>,
    series: u32,
    bucket: i64,
    now_ms: i64,
    grace_ms: u64,
) -> bool {
    rose.get(&(series, bucket))
        .is_some_and(|&at| now_ms.saturating_sub(at) < grace_ms as i64)
}

fn judge_bucket(
    series: &[SeriesRef<'_>],
    reference: Option<u32>,
    bucket: i64,
    present: &[(u32, CellCounts)],
    closed: bool,
    unresolved_at_close: impl Fn(u32) -> bool,
    rising: impl Fn(u32) -> bool,
) -> Vec<(usize, CellCounts, Judgement)> {
    let reference_counts = reference.map(|r| {
        present
            .iter()
            .find(|(s, _)| *s == r)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    });
    let mut out = Vec::with_capacity(series.len());
    for (i, s) in series.iter().enumerate() {
        // A tier that counted nothing in a bucket the reference has is
        // judged at zero, from its first bucket on.
        let counts = match present.iter().find(|(p, _)| *p == s.id) {
            Some((_, c)) => *c,
            None if reference_counts.is_some_and(|r| r.records > 0)
                && s.first_bucket.is_some_and(|f| f <= bucket) =>
            {
                CellCounts::default()
            }
            None => continue,
        };
        let mut j = judge(
            s.tier,
            Some(s.id) == reference,
            &counts,
            reference_counts.as_ref(),
            closed,
            unresolved_at_close(s.id),
            rising(s.id),
        );
        j.reference = reference_counts.map_or(0, |r| r.records);
        out.push((i, counts, j));
    }
    out
}

/// A tier's cell of the bucket view.
fn bucket_tier(tier: &Tier, counts: &CellCounts, j: &Judgement) -> BucketTier {
    let is_group = tier.kind() == TierKind::Group;
    BucketTier {
        records: counts.records,
        status: j.status,
        missing: j.missing,
        excess: j.excess,
        pending: j.pending,
        expired: is_group.then_some(counts.expired),
        skipped: is_group.then_some(counts.skipped),
        aborted: counts.aborted,
    }
}

/// What the bucket view of one topic needs to be answered from the store
/// ([`Ledger::topic_plan`]): its series, reference and the judging settings.
#[derive(Clone, Debug)]
pub struct TopicPlan {
    /// The cluster.
    pub cluster: String,
    /// The topic.
    pub topic: String,
    /// Per series: id, tier and first bucket.
    series: Vec<(u32, Tier, Option<i64>)>,
    reference: Option<u32>,
    cfg: LedgerConfig,
}

impl TopicPlan {
    /// The ids of the topic's series, to read their stored buckets.
    pub fn series_ids(&self) -> Vec<u32> {
        self.series.iter().map(|s| s.0).collect()
    }

    /// The bucket view of the stored buckets `stored` (of this topic's
    /// series, as [`crate::store::ColdReader::buckets`] reads them), judged at
    /// `now_ms` as the ledger judges the buckets of its window.
    pub fn view(&self, stored: &[crate::store::StoredBucket], now_ms: i64) -> Vec<BucketBooks> {
        let plan: Vec<SeriesRef<'_>> = self
            .series
            .iter()
            .map(|(id, tier, first_bucket)| SeriesRef {
                id: *id,
                tier,
                first_bucket: *first_bucket,
            })
            .collect();
        let mut per_bucket: BTreeMap<i64, Vec<(u32, CellCounts, Option<bool>)>> = BTreeMap::new();
        for b in stored {
            per_bucket.entry(b.bucket).or_default().push((
                b.series,
                b.counts,
                b.unresolved_at_close,
            ));
        }
        per_bucket
            .into_iter()
            .map(|(bucket, entries)| {
                let present: Vec<(u32, CellCounts)> =
                    entries.iter().map(|(s, c, _)| (*s, *c)).collect();
                let closed = self.cfg.is_closed(bucket, now_ms);
                let judged = judge_bucket(
                    &plan,
                    self.reference,
                    bucket,
                    &present,
                    closed,
                    |s| {
                        entries
                            .iter()
                            .find(|(id, _, _)| *id == s)
                            .and_then(|(_, _, u)| *u)
                            .unwrap_or(false)
                    },
                    // The store keeps no rises: its buckets are past any
                    // grace period but the window's.
                    |_| false,
                );
                BucketBooks {
                    bucket,
                    tiers: judged
                        .into_iter()
                        .map(|(i, counts, j)| {
                            (
                                plan[i].tier.to_string(),
                                bucket_tier(plan[i].tier, &counts, &j),
                            )
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Judgement {
    status: BucketStatus,
    missing: u64,
    excess: u64,
    pending: Option<u64>,
    /// Numerator and denominator of this bucket's share of completeness.
    ratio: (u64, u64),
    /// Records the reference tier counted in the bucket.
    reference: u64,
}

/// Judges one tier's counts in one bucket against the reference's.
///
/// Downstream tiers (groups, consumers, and `broker` where only `produced`
/// is the reference) compare their count with the reference's; the
/// `produced` tier, upstream of `broker`, is judged the other way round:
/// fewer appended than produced is loss in produce, more is duplicates.
fn judge(
    tier: &Tier,
    is_reference: bool,
    counts: &CellCounts,
    reference: Option<&CellCounts>,
    closed: bool,
    unresolved_at_close: bool,
    rising: bool,
) -> Judgement {
    let settle = |status: BucketStatus| {
        if !closed {
            BucketStatus::Open
        } else if status == BucketStatus::Complete && unresolved_at_close {
            BucketStatus::Late
        } else {
            status
        }
    };
    let Some(reference) = reference.filter(|_| !is_reference) else {
        return Judgement {
            status: settle(BucketStatus::Complete),
            missing: 0,
            excess: 0,
            pending: None,
            ratio: (counts.records, counts.records),
            reference: 0,
        };
    };
    match tier.kind() {
        TierKind::Group => {
            let accounted = counts.records + counts.expired + counts.skipped;
            let pending = reference.records.saturating_sub(accounted);
            let excess = accounted.saturating_sub(reference.records);
            let status = if counts.expired > 0 {
                BucketStatus::Incomplete
            } else if pending > 0 {
                BucketStatus::Pending
            } else if excess > 0 {
                BucketStatus::Excess
            } else {
                BucketStatus::Complete
            };
            Judgement {
                status: settle(status),
                missing: if closed { counts.expired } else { 0 },
                excess: if closed { excess } else { 0 },
                pending: Some(pending),
                ratio: (
                    counts.records,
                    reference.records.saturating_sub(counts.skipped),
                ),
                reference: 0,
            }
        }
        TierKind::Mirror => {
            // Short in a closed bucket: pending while the copy still rose
            // within the last grace period, lost once it has not.
            let short = reference.records.saturating_sub(counts.records);
            let excess = counts.records.saturating_sub(reference.records);
            let pending = if rising { short } else { 0 };
            let status = if short > 0 && rising {
                BucketStatus::Pending
            } else if short > 0 {
                BucketStatus::Incomplete
            } else if excess > 0 {
                BucketStatus::Excess
            } else {
                BucketStatus::Complete
            };
            Judgement {
                status: settle(status),
                missing: if closed { short - pending } else { 0 },
                excess: if closed { excess } else { 0 },
                pending: Some(if closed { pending } else { short }),
                ratio: (counts.records, reference.records),
                reference: 0,
            }
        }
        kind => {
            let (upstream, downstream) = if kind == TierKind::Produced {
                (counts.records, reference.records)
            } else {
                (reference.records, counts.records)
            };
            let missing = upstream.saturating_sub(downstream);
            let excess = downstream.saturating_sub(upstream);
            let status = if missing > 0 {
                BucketStatus::Incomplete
            } else if excess > 0 {
                BucketStatus::Excess
            } else {
                BucketStatus::Complete
            };
            Judgement {
                status: settle(status),
                missing,
                excess,
                pending: None,
                ratio: (downstream, upstream),
                reference: 0,
            }
        }
    }
}
