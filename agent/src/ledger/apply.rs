//! Applying what the sources send: sessions, counts, lag, latency, forget
//! and cluster state.

use super::*;

impl Ledger {
    /// Opens a session for the source of `hello`; a new source beyond
    /// [`MAX_SOURCES`] is refused (`cardinality`).
    pub fn hello(&mut self, hello: &Hello, now_ms: i64) -> Result<Session> {
        let id = match self.source_ids.get(&hello.source) {
            Some(&id) => id,
            None if self.sources.len() >= MAX_SOURCES => {
                return Err(refuse(
                    Reason::Cardinality,
                    format!(
                        "source \"{}\" would be one more than the {MAX_SOURCES} sources this agent keeps: reuse a source id per emitter",
                        crate::error::shown(&hello.source)
                    ),
                ));
            }
            None => {
                let id = self.sources.len() as u32;
                self.sources.push(Source {
                    name: hello.source.clone(),
                    cluster: hello.cluster.clone(),
                    tier_kinds: Vec::new(),
                    epoch: hello.started_at_ms,
                    last_seen_ms: now_ms,
                    messages: [0; 6],
                    errors: 0,
                    sessions: 0,
                    duplicate_entries: 0,
                    series: FxHashSet::default(),
                    lag_series: 0,
                    latency_series: 0,
                    cluster_series: 0,
                });
                self.source_ids.insert(hello.source.clone(), id);
                id
            }
        };
        let src = &mut self.sources[id as usize];
        let heard = now_ms.saturating_sub(src.last_seen_ms);
        if src.sessions > 0 && heard <= self.cfg.live_ms as i64 {
            return Err(refuse(
                Reason::DuplicateSource,
                format!(
                    "source \"{}\" has a live session (heard from {heard} ms ago): another emitter uses the same source id; two collectors for one cluster? Give each cluster one collector, or its own cluster name",
                    crate::error::shown(&hello.source)
                ),
            ));
        }
        src.cluster = hello.cluster.clone();
        src.tier_kinds = hello.tier_kinds.clone();
        src.epoch = src.epoch.max(hello.started_at_ms);
        src.last_seen_ms = now_ms;
        src.messages[0] += 1;
        src.sessions += 1;
        self.dirty_sources.insert(id);
        Ok(Session {
            source: id,
            epoch: hello.started_at_ms,
        })
    }

    /// The range of buckets accepted at `now_ms`: from the oldest bucket the
    /// retention keeps to max(grace, 1 h) ahead (DESIGN §5).
    pub fn accept_range(&self, now_ms: i64) -> AcceptRange {
        AcceptRange::at(
            now_ms,
            self.cfg.width,
            self.cfg.retention_ms,
            self.cfg.grace_ms,
        )
    }

    /// Refuses `fresh` new series of `source` over either limit: the
    /// source's own, or the one over all sources.
    pub(super) fn admit(&self, source: &Source, fresh: usize) -> Result<()> {
        source.admit(fresh, self.cfg.max_series_per_source)?;
        if fresh > 0 && self.open_series + fresh > self.cfg.max_series {
            return Err(refuse(
                Reason::Cardinality,
                format!(
                    "source \"{}\" would take the agent to {} series, over the limit of {} across all sources (--max-series)",
                    crate::error::shown(&source.name),
                    self.open_series + fresh,
                    self.cfg.max_series
                ),
            ));
        }
        Ok(())
    }

    /// The id of a series already interned, without creating it.
    pub(super) fn known_series(&mut self, cluster: &str, topic: &str, tier: &Tier) -> Option<u32> {
        self.key_buf.clear();
        let _ = write!(self.key_buf, "{cluster}\u{0}{topic}\u{0}{tier}");
        self.series_ids.get(self.key_buf.as_str()).copied()
    }

    /// Closes a session (the connection ended).
    pub fn goodbye(&mut self, session: Session) {
        if let Some(src) = self.sources.get_mut(session.source as usize) {
            src.sessions = src.sessions.saturating_sub(1);
        }
    }

    /// The cluster a session reports on.
    pub fn cluster_of(&self, session: Session) -> Option<String> {
        self.sources
            .get(session.source as usize)
            .map(|s| s.cluster.clone())
    }

    /// The source id of a session.
    pub fn source_name(&self, session: Session) -> Option<String> {
        self.sources
            .get(session.source as usize)
            .map(|s| s.name.clone())
    }

    /// Counts a refused message against the session's source.
    pub fn refused(&mut self, session: Option<Session>) {
        if let Some(session) = session
            && let Some(src) = self.sources.get_mut(session.source as usize)
        {
            src.errors += 1;
            self.dirty_sources.insert(session.source);
        }
    }

    /// Whether `source` may report the `broker` and `group:` tiers of `topic` in
    /// `cluster`: no other source does, or the one that did is gone (no session,
    /// and not heard from within the grace period).
    pub(super) fn may_report_log(
        &self,
        source: u32,
        cluster: &str,
        topic: &str,
        now_ms: i64,
    ) -> bool {
        let Some(&owner) = self.log_owners.get(cluster).and_then(|t| t.get(topic)) else {
            return true;
        };
        if owner == source {
            return true;
        }
        let Some(o) = self.sources.get(owner as usize) else {
            return true;
        };
        let recent = now_ms.saturating_sub(o.last_seen_ms) <= self.cfg.grace_ms as i64;
        !(o.sessions > 0 || recent)
    }

    pub(super) fn series_id(&mut self, cluster: &str, topic: &str, tier: &Tier) -> u32 {
        self.key_buf.clear();
        let _ = write!(self.key_buf, "{cluster}\u{0}{topic}\u{0}{tier}");
        if let Some(&id) = self.series_ids.get(self.key_buf.as_str()) {
            return id;
        }
        let topic_id = self.topic_id(cluster, topic);
        let id = self.series.len() as u32;
        self.series.push(Series {
            cluster: cluster.to_owned(),
            topic: topic.to_owned(),
            tier: tier.clone(),
            live: CellCounts::default(),
            pruned: CellCounts::default(),
            first_bucket: None,
            tid: topic_id,
        });
        self.topics[topic_id as usize].series.push(id);
        self.dirty_topics.insert(topic_id);
        self.series_ids.insert(self.key_buf.clone(), id);
        self.dirty_series.insert(id);
        id
    }

    pub(super) fn topic_id(&mut self, cluster: &str, topic: &str) -> u32 {
        let key = (cluster.to_owned(), topic.to_owned());
        if let Some(&id) = self.topic_ids.get(&key) {
            return id;
        }
        let id = self.topics.len() as u32;
        self.topics.push(Topic {
            cluster: cluster.to_owned(),
            topic: topic.to_owned(),
            series: Vec::new(),
        });
        self.topic_ids.insert(key, id);
        id
    }

    /// Applies a `counts` message: each entry replaces the last value of its
    /// key unless the stored one came from a later (session, `seq`).
    ///
    /// The message is applied whole or not at all: a tier kind the source did
    /// not announce, or more series than the cardinality limit, refuses it.
    pub fn apply_counts(
        &mut self,
        session: Session,
        seq: u64,
        entries: &[CountEntry],
        now_ms: i64,
    ) -> Result<Applied> {
        let src = self
            .sources
            .get(session.source as usize)
            .ok_or_else(|| refuse(Reason::Protocol, "counts before hello".into()))?;
        let cluster = src.cluster.clone();
        if let Some(e) = entries
            .iter()
            .find(|e| !src.tier_kinds.contains(&e.tier.kind()))
        {
            return Err(refuse(
                Reason::BadField,
                format!(
                    "tier \"{}\" is not among the tier kinds this source announced in its hello ({:?})",
                    crate::error::shown(&e.tier.to_string()),
                    src.tier_kinds
                ),
            ));
        }
        // An entry outside the accepted range is dropped on its own.
        let range = self.accept_range(now_ms);
        let in_range: Vec<&CountEntry> = entries
            .iter()
            .filter(|e| range.contains(e.bucket))
            .collect();
        let out_of_range = entries.len() - in_range.len();
        // So is a `broker` or `group:` entry of a topic another live source reports.
        let mut owned: HashMap<&str, bool> = HashMap::new();
        for e in &in_range {
            if matches!(e.tier.kind(), TierKind::Broker | TierKind::Group) {
                let topic = e.topic.as_str();
                if !owned.contains_key(topic) {
                    let ours = self.may_report_log(session.source, &cluster, topic, now_ms);
                    owned.insert(topic, ours);
                }
            }
        }
        let kept: Vec<&CountEntry> = in_range
            .into_iter()
            .filter(|e| {
                !matches!(e.tier.kind(), TierKind::Broker | TierKind::Group)
                    || owned.get(e.topic.as_str()).copied().unwrap_or(true)
            })
            .collect();
        let mut applied = Applied {
            out_of_range,
            duplicate_source: entries.len() - out_of_range - kept.len(),
            ..Applied::default()
        };
        // A `broker` count of a topic that the mirror rules name a copy of
        // is also its source topic's `mirror:<this cluster>` count (§11).
        let derived = self.mirrored(&cluster, &kept);
        let kept: Vec<(&str, &CountEntry)> = kept
            .into_iter()
            .map(|e| (cluster.as_str(), e))
            .chain(derived.iter().map(|(c, e)| (c.as_str(), e)))
            .collect();
        // Look series up without creating any, so that a refused message
        // leaves nothing behind. Emitters group entries by topic and tier:
        // look each run up once.
        let mut ids: Vec<Option<u32>> = Vec::with_capacity(kept.len());
        let mut last: Option<(&str, &str, &Tier, Option<u32>)> = None;
        for &(c, e) in &kept {
            let id = match last {
                Some((cl, topic, tier, id)) if cl == c && topic == e.topic && *tier == e.tier => id,
                _ => self.known_series(c, &e.topic, &e.tier),
            };
            last = Some((c, &e.topic, &e.tier, id));
            ids.push(id);
        }
        // A late count for a bucket left to the store (or any count while the
        // window's cells are still read in after a start) reads its cell and
        // sum back first (a failed read refuses the message, changing nothing).
        for ((_, e), id) in kept.iter().zip(&ids) {
            if let Some(series) = id
                && (self.warming || e.bucket.start_ms() < self.resident_from)
            {
                self.load_outside(session.source, *series, e.partition, e.bucket.start_ms())?;
            }
        }
        let src = &self.sources[session.source as usize];
        let mut fresh: FxHashSet<(u32, i32)> = FxHashSet::default();
        let mut fresh_new: FxHashSet<(&str, &str, &Tier, i32)> = FxHashSet::default();
        for (&(c, e), id) in kept.iter().zip(&ids) {
            match id {
                Some(id) if !src.series.contains(&(*id, e.partition)) => {
                    fresh.insert((*id, e.partition));
                }
                Some(_) => {}
                None => {
                    fresh_new.insert((c, &e.topic, &e.tier, e.partition));
                }
            }
            // Far more distinct series than allowed: stop counting early.
            if fresh.len() + fresh_new.len() > self.cfg.max_series_per_source {
                break;
            }
        }
        self.admit(src, fresh.len() + fresh_new.len())?;
        drop(fresh_new);
        let ids: Vec<u32> = kept
            .iter()
            .zip(ids)
            .map(|((c, e), id)| id.unwrap_or_else(|| self.series_id(c, &e.topic, &e.tier)))
            .collect();
        for (topic, ours) in owned {
            let known = self.log_owners.get(&cluster).and_then(|t| t.get(topic));
            if ours && known != Some(&session.source) {
                self.log_owners
                    .entry(cluster.clone())
                    .or_default()
                    .insert(topic.to_owned(), session.source);
            }
        }
        let src = &mut self.sources[session.source as usize];
        if applied.duplicate_source > 0 {
            applied.first_duplicate = src.duplicate_entries == 0;
            src.duplicate_entries += applied.duplicate_source as u64;
        }
        let before = src.series.len();
        src.series
            .extend(ids.iter().zip(&kept).map(|(&id, (_, e))| (id, e.partition)));
        self.open_series += src.series.len() - before;
        src.last_seen_ms = now_ms;
        src.messages[1] += 1;
        self.dirty_sources.insert(session.source);

        let mut last_touched = None;
        let window_start = self
            .cfg
            .width
            .bucket_of(now_ms.saturating_sub(self.cfg.window_ms as i64))
            .start_ms();
        for ((_, e), &series) in kept.into_iter().zip(&ids) {
            let key = CellKey {
                source: session.source,
                series,
                partition: e.partition,
                bucket: e.bucket.start_ms(),
            };
            let new = e.counts;
            let old = match self.cells.get_mut(&key) {
                Some(cell) => {
                    if (session.epoch, seq) < (cell.epoch, cell.seq) {
                        applied.stale += 1;
                        continue;
                    }
                    cell.epoch = session.epoch;
                    cell.seq = seq;
                    if cell.v == new {
                        applied.unchanged += 1;
                        continue;
                    }
                    std::mem::replace(&mut cell.v, new)
                }
                None => {
                    self.cells.insert(
                        key,
                        Cell {
                            epoch: session.epoch,
                            seq,
                            v: new,
                        },
                    );
                    CellCounts::default()
                }
            };
            applied.changed += 1;
            self.sums
                .entry((series, key.bucket))
                .or_default()
                .swap(&old, &new);
            let sr = &mut self.series[series as usize];
            sr.live.swap(&old, &new);
            if new.records > old.records && sr.tier.kind() == TierKind::Mirror {
                // The copy is moving: a short bucket is pending, not lost,
                // until a grace period passes without a rise.
                self.mirror_rose.insert((series, key.bucket), now_ms);
                let recheck = now_ms.saturating_add(self.cfg.grace_ms as i64);
                let at = self.mirror_recheck.entry(sr.tid).or_insert(recheck);
                *at = (*at).max(recheck);
            }
            if sr.first_bucket.is_none_or(|f| key.bucket < f) {
                sr.first_bucket = Some(key.bucket);
            }
            // The topic's totals change even where the bucket is outside
            // the window; a bucket before the window, which no evaluation
            // of the window judges, is judged again on its own.
            self.dirty_topics.insert(sr.tid);
            if key.bucket < window_start {
                self.late_outside.insert((sr.tid, key.bucket));
            }
            if last_touched != Some(key.bucket) {
                self.touched.insert(key.bucket, self.generation);
                last_touched = Some(key.bucket);
            }
            self.dirty_cells.push(key);
            self.dirty_sums.insert((series, key.bucket));
            self.dirty_series.insert(series);
        }
        Ok(applied)
    }

    /// The mirror tier entries that the `broker` entries of `cluster` among
    /// `kept` make, each with the cluster of its source topic.
    fn mirrored(&self, cluster: &str, kept: &[&CountEntry]) -> Vec<(String, CountEntry)> {
        if self.cfg.mirrors.is_empty() {
            return Vec::new();
        }
        let mut sources: HashMap<&str, Option<(&str, String)>> = HashMap::new();
        let mut out = Vec::new();
        for e in kept.iter().filter(|e| e.tier == Tier::Broker) {
            let source = sources
                .entry(e.topic.as_str())
                .or_insert_with(|| self.cfg.mirrors.source_of(cluster, &e.topic));
            if let Some((from, topic)) = source {
                out.push((
                    (*from).to_owned(),
                    CountEntry {
                        topic: topic.clone(),
                        tier: Tier::Mirror(cluster.to_owned()),
                        ..(*e).clone()
                    },
                ));
            }
        }
        out
    }

    /// Reads back the stored cell, and the series' sum, of a bucket left to
    /// the store, unless they are in memory already; the bucket then stays in
    /// memory until what changes in it is committed.
    pub(super) fn load_outside(
        &mut self,
        source: u32,
        series: u32,
        partition: i32,
        bucket: i64,
    ) -> Result<()> {
        let Some(link) = &self.cold else {
            return Ok(());
        };
        let key = CellKey {
            source,
            series,
            partition,
            bucket,
        };
        if let std::collections::btree_map::Entry::Vacant(slot) = self.sums.entry((series, bucket))
        {
            slot.insert(link.0.sum(series, bucket)?.unwrap_or_default());
            self.touched.entry(bucket).or_insert(0);
        }
        if self.cells.get(&key).is_some() {
            return Ok(());
        }
        if let Some(row) = link.0.cell(bucket, source, series, partition)? {
            self.cells.insert(
                key,
                Cell {
                    epoch: row.epoch,
                    seq: row.seq,
                    v: row.counts,
                },
            );
            self.touched.entry(bucket).or_insert(0);
        }
        Ok(())
    }

    /// Applies a `lag` message to each partition's health.
    pub fn apply_lag(&mut self, session: Session, lag: &Lag, now_ms: i64) -> Result<()> {
        let src = self
            .sources
            .get(session.source as usize)
            .ok_or_else(|| refuse(Reason::Protocol, "lag before hello".into()))?;
        let cluster: Arc<str> = src.cluster.as_str().into();
        // A message lists a group's partitions together: the group is looked
        // up once per run of them, and each partition by borrowing its names.
        let runs = || lag.partitions.chunk_by(|a, b| a.group == b.group);
        let fresh: usize = runs()
            .map(|run| {
                let known = self
                    .lag
                    .get(&(cluster.clone(), Arc::from(run[0].group.as_str())));
                run.iter()
                    .filter(|s| {
                        !known
                            .and_then(|g| g.topics.get(s.topic.as_str()))
                            .is_some_and(|parts| parts.contains_key(&s.partition))
                    })
                    .count()
            })
            .sum();
        self.admit(src, fresh)?;
        self.open_series += fresh;
        let src = &mut self.sources[session.source as usize];
        src.lag_series += fresh;
        src.last_seen_ms = now_ms;
        src.messages[2] += 1;
        self.dirty_sources.insert(session.source);
        let health_cfg = self.cfg.health;
        for run in runs() {
            let key: GroupKey = (cluster.clone(), run[0].group.as_str().into());
            let group = self.lag.entry(key.clone()).or_default();
            for s in run {
                if !group.topics.contains_key(s.topic.as_str()) {
                    group
                        .topics
                        .insert(s.topic.as_str().into(), BTreeMap::new());
                }
                let Some(parts) = group.topics.get_mut(s.topic.as_str()) else {
                    continue;
                };
                let entry = parts.entry(s.partition).or_insert_with(|| {
                    let id = self.next_lag_id;
                    self.next_lag_id += 1;
                    LagEntry {
                        id,
                        dirty: true,
                        health: PartitionHealth::default(),
                        last: LastLag::from(s),
                        source: Some(session.source),
                        refreshed_ms: now_ms,
                        at_ms: lag.at_ms,
                        interval_ms: None,
                    }
                });
                entry.health.observe(s, &health_cfg);
                entry.last = LastLag::from(s);
                entry.source = Some(session.source);
                entry.refreshed_ms = now_ms;
                // One sample per partition per poll: the gap between two is the
                // source's lag interval (a resend repeats the `at_ms`).
                let gap = lag.at_ms.saturating_sub(entry.at_ms);
                if gap > 0 {
                    entry.interval_ms = Some(gap);
                }
                entry.at_ms = entry.at_ms.max(lag.at_ms);
                entry.dirty = true;
            }
            self.dirty_groups.insert(key.clone());
            self.dirty_health.insert(key);
        }
        Ok(())
    }

    /// Applies a `latency` message: each histogram replaces the source's last
    /// one of its (tier, topic), unless that came later (by session and `seq`).
    pub fn apply_latency(
        &mut self,
        session: Session,
        latency: &Latency,
        now_ms: i64,
    ) -> Result<Applied> {
        let src = self
            .sources
            .get(session.source as usize)
            .ok_or_else(|| refuse(Reason::Protocol, "latency before hello".into()))?;
        let cluster = src.cluster.clone();
        if let Some(h) = latency
            .histograms
            .iter()
            .find(|h| !src.tier_kinds.contains(&h.tier.kind()))
        {
            return Err(refuse(
                Reason::BadField,
                format!(
                    "tier \"{}\" is not among the tier kinds this source announced in its hello ({:?})",
                    crate::error::shown(&h.tier.to_string()),
                    src.tier_kinds
                ),
            ));
        }
        let key_of = |h: &LatencyHistogram| -> LatencyKey {
            (
                session.source,
                cluster.clone(),
                h.topic.clone(),
                h.tier.clone(),
            )
        };
        let fresh: BTreeSet<LatencyKey> = latency
            .histograms
            .iter()
            .map(key_of)
            .filter(|k| !self.latency.contains_key(k))
            .collect();
        self.admit(src, fresh.len())?;
        self.open_series += fresh.len();
        let src = &mut self.sources[session.source as usize];
        src.latency_series += fresh.len();
        src.last_seen_ms = now_ms;
        src.messages[3] += 1;
        self.dirty_sources.insert(session.source);
        let mut applied = Applied::default();
        for h in &latency.histograms {
            let key = key_of(h);
            if let Some(cell) = self.latency.get(&key) {
                if (session.epoch, latency.seq) < (cell.epoch, cell.seq) {
                    applied.stale += 1;
                    continue;
                }
                if cell.histogram == *h {
                    applied.unchanged += 1;
                    continue;
                }
            }
            self.latency.insert(
                key.clone(),
                LatencyCell {
                    epoch: session.epoch,
                    seq: latency.seq,
                    cluster: cluster.clone(),
                    histogram: h.clone(),
                },
            );
            self.dirty_latency.insert(key);
            applied.changed += 1;
        }
        Ok(applied)
    }

    /// Applies a `forget` message: drops what this source reported for the
    /// named groups (their lag and status on every topic, the latency of
    /// their `group:` tiers) and topics (every group's lag on them, their
    /// latency, their cluster metadata), with no alarm. Counts already
    /// recorded stay in the books: they are history, pruned with the retention.
    pub fn apply_forget(
        &mut self,
        session: Session,
        forget: &tally_audit::Forget,
        now_ms: i64,
    ) -> Result<()> {
        let src = self
            .sources
            .get(session.source as usize)
            .ok_or_else(|| refuse(Reason::Protocol, "forget before hello".into()))?;
        let cluster = src.cluster.clone();
        let groups: HashSet<&str> = forget.groups.iter().map(String::as_str).collect();
        let topics: HashSet<&str> = forget.topics.iter().map(String::as_str).collect();
        let mut gone: Vec<(GroupKey, Arc<str>, i32)> = Vec::new();
        for (key, group) in self
            .lag
            .range((Arc::from(cluster.as_str()), Arc::from(""))..)
        {
            if *key.0 != *cluster {
                break;
            }
            for (topic, partition, e) in group.entries() {
                if e.source.is_none_or(|s| s == session.source)
                    && (groups.contains(&*key.1) || topics.contains(&**topic))
                {
                    gone.push((key.clone(), topic.clone(), partition));
                }
            }
        }
        for (key, topic, partition) in gone {
            let Some(group) = self.lag.get_mut(&key) else {
                continue;
            };
            let Some(parts) = group.topics.get_mut(&topic) else {
                continue;
            };
            if let Some(e) = parts.remove(&partition) {
                let owner = e.source.unwrap_or(session.source);
                if let Some(s) = self.sources.get_mut(owner as usize) {
                    s.lag_series = s.lag_series.saturating_sub(1);
                }
                self.open_series = self.open_series.saturating_sub(1);
                self.dirty_health_deleted.push(e.id);
            }
            if parts.is_empty() {
                group.topics.remove(&topic);
            }
            if group.topics.is_empty() {
                self.lag.remove(&key);
            }
            self.dirty_groups.insert(key);
        }
        let latency_gone: Vec<LatencyKey> = self
            .latency
            .keys()
            .filter(|(s, c, t, tier)| {
                *s == session.source
                    && *c == cluster
                    && (topics.contains(t.as_str())
                        || matches!(tier, Tier::Group(g) if groups.contains(g.as_str())))
            })
            .cloned()
            .collect();
        for key in latency_gone {
            self.latency.remove(&key);
            self.dirty_latency.remove(&key);
            self.dirty_kv_deleted.push(latency_kv_key(&key));
            self.open_series = self.open_series.saturating_sub(1);
            let src = &mut self.sources[session.source as usize];
            src.latency_series = src.latency_series.saturating_sub(1);
        }
        if let Some(held) = self.clusters.get_mut(&session.source) {
            let before = cluster_entries(&held.state);
            held.state
                .topics
                .retain(|t| !topics.contains(t.topic.as_str()));
            held.state
                .groups
                .retain(|g| !groups.contains(g.group.as_str()));
            let dropped = before - cluster_entries(&held.state);
            self.open_series = self.open_series.saturating_sub(dropped);
            let src = &mut self.sources[session.source as usize];
            src.cluster_series = src.cluster_series.saturating_sub(dropped);
        }
        let src = &mut self.sources[session.source as usize];
        src.last_seen_ms = now_ms;
        src.messages[4] += 1;
        self.dirty_sources.insert(session.source);
        Ok(())
    }

    /// Applies a `cluster` message: it replaces the source's last cluster
    /// state whole, unless that came later (by session and `seq`). A state
    /// with more entries (topics, partitions and groups) than the source's or
    /// the agent's series limit allows is refused (`cardinality`).
    pub fn apply_cluster(
        &mut self,
        session: Session,
        cluster: &tally_audit::Cluster,
        now_ms: i64,
    ) -> Result<()> {
        let src = self
            .sources
            .get(session.source as usize)
            .ok_or_else(|| refuse(Reason::Protocol, "cluster before hello".into()))?;
        let name = src.cluster.clone();
        let held = self.clusters.get(&session.source);
        let newer = held.is_none_or(|h| (session.epoch, cluster.seq) >= (h.epoch, h.seq));
        if newer {
            let entries = cluster_entries(&cluster.state);
            let before = held.map_or(0, |h| cluster_entries(&h.state));
            self.admit(src, entries.saturating_sub(before))?;
            self.open_series = (self.open_series + entries).saturating_sub(before);
            self.sources[session.source as usize].cluster_series = entries;
            self.clusters.insert(
                session.source,
                HeldCluster {
                    cluster: name,
                    epoch: session.epoch,
                    seq: cluster.seq,
                    received_ms: now_ms,
                    state: cluster.state.clone(),
                },
            );
        }
        let src = &mut self.sources[session.source as usize];
        src.last_seen_ms = now_ms;
        src.messages[5] += 1;
        self.dirty_sources.insert(session.source);
        Ok(())
    }
}
