//! Persistence: what the store writes of the ledger, what it loads back,
//! and what retention drops.

use super::*;

impl Ledger {
    fn oldest_kept_bucket(&self, now_ms: i64) -> i64 {
        let horizon = now_ms.saturating_sub(self.cfg.retention_ms as i64);
        self.cfg.width.bucket_of(horizon).start_ms()
    }

    /// Moves what retention drops (the buckets before the retention horizon
    /// at `now_ms`) from each series' live totals to its pruned ones, and
    /// drops those buckets from memory. Returns the rows to store, with the
    /// horizon to delete before, in one transaction; None when nothing is to
    /// be pruned, or when a change to a bucket being pruned is not committed
    /// yet (`committed`, see [`Ledger::seal`]): it waits for the next call.
    pub fn prune(&mut self, now_ms: i64, committed: u64) -> Result<Option<WriteBatch>> {
        let horizon = self.oldest_kept_bucket(now_ms);
        if horizon <= self.pruned_before {
            return Ok(None);
        }
        // With a store, what is pruned is read from it: wait until every
        // change to those buckets is committed.
        if self.cold.is_some() && self.touched.range(..horizon).any(|(_, &g)| g > committed) {
            return Ok(None);
        }
        // With a store, it holds every cell not pruned yet: its sums are the
        // ones to move; without, memory holds them all.
        let mut moved: Vec<(u32, CellCounts)> = match &self.cold {
            Some(link) => link.0.sums_before(horizon)?,
            None => Vec::new(),
        };
        let from_memory = self.cold.is_none();
        let old: Vec<i64> = self
            .cells
            .by_bucket
            .range(..horizon)
            .map(|(b, _)| *b)
            .collect();
        for b in old {
            self.cells.drop_bucket(b, |k, c| {
                if from_memory {
                    moved.push((k.series, c.v));
                }
            });
        }
        for (series, v) in moved {
            let Some(s) = self.series.get_mut(series as usize) else {
                continue;
            };
            s.live.swap(&v, &CellCounts::default());
            s.pruned.add(&v);
            self.dirty_series.insert(series);
            self.all_topics_dirty = true;
        }
        self.sums.retain(|(_, b), _| *b >= horizon);
        self.closed.retain(|(_, b), _| *b >= horizon);
        self.touched.retain(|b, _| *b >= horizon);
        self.late_outside.retain(|(_, b)| *b >= horizon);
        self.pruned_before = horizon;
        let mut batch = self.take_dirty();
        batch.prune_before = Some(horizon);
        Ok(Some(batch))
    }

    /// The oldest bucket that [`Ledger::prune`] keeps at `now_ms`.
    pub fn prune_horizon(&self, now_ms: i64) -> i64 {
        self.oldest_kept_bucket(now_ms)
    }

    /// Leaves the buckets before the window plus grace to `cold`: from now
    /// on they are dropped from memory once what changed in them is
    /// committed, and read back from `cold` when a late count comes.
    pub fn attach_cold(&mut self, cold: Box<dyn Cold>, now_ms: i64) {
        self.cold = Some(ColdLink(cold));
        self.resident_from = self.resident_from.max(self.cfg.resident_from(now_ms));
    }

    /// Closes the current generation of changes and returns it: every row
    /// handed out so far (by [`Ledger::take_message_rows`] and
    /// [`Ledger::take_dirty`]) belongs to it or an earlier one. The caller
    /// stores those rows and tells [`Ledger::evict`] and [`Ledger::prune`]
    /// which generations are committed.
    pub fn seal(&mut self) -> u64 {
        let sealed = self.generation;
        self.generation += 1;
        sealed
    }

    /// Drops from memory the buckets that left the window plus grace at
    /// `now_ms` and whose changes are committed (every generation up to
    /// `committed`). Returns the cells dropped.
    pub fn evict(&mut self, now_ms: i64, committed: u64) -> usize {
        if self.cold.is_none() {
            return 0;
        }
        self.resident_from = self.resident_from.max(self.cfg.resident_from(now_ms));
        let old: Vec<i64> = self
            .touched
            .range(..self.resident_from)
            .filter(|(_, g)| **g <= committed)
            .map(|(b, _)| *b)
            .collect();
        if old.is_empty() {
            return 0;
        }
        let before = self.cells.len();
        for &b in &old {
            self.cells.drop_bucket(b, |_, _| {});
            self.touched.remove(&b);
        }
        let gone = |b: &i64| old.binary_search(b).is_ok();
        self.sums.retain(|(_, b), _| !gone(b));
        self.closed.retain(|(_, b), _| !gone(b));
        before - self.cells.len()
    }

    /// Hands out every row changed since the last call, for the store.
    pub fn take_dirty(&mut self) -> WriteBatch {
        let mut batch = self.take_message_rows();
        for id in std::mem::take(&mut self.dirty_sources) {
            let s = &self.sources[id as usize];
            batch.sources.push(SourceRow {
                id,
                name: s.name.clone(),
                cluster: s.cluster.clone(),
                tier_kinds: serde_json::to_string(&s.tier_kinds).unwrap_or_default(),
                epoch: s.epoch,
                last_seen_ms: s.last_seen_ms,
                messages: s.messages.iter().sum(),
                errors: s.errors,
            });
            batch.kv.push((
                format!("source/{id}/messages"),
                serde_json::to_string(&s.messages).unwrap_or_default(),
            ));
        }
        batch.history = std::mem::take(&mut self.dirty_history);
        batch
    }

    /// Hands out the rows a message changes (cells, series, latency, health),
    /// so that each message is stored, or refused, on its own; the sources'
    /// rows and the history wait for [`Ledger::take_dirty`].
    pub fn take_message_rows(&mut self) -> WriteBatch {
        let mut batch = WriteBatch::default();
        let mut keys = std::mem::take(&mut self.dirty_cells);
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            if let Some(c) = self.cells.get(&k) {
                batch.cells.push(CellRow {
                    source: k.source,
                    series: k.series,
                    partition: k.partition,
                    bucket: k.bucket,
                    epoch: c.epoch,
                    seq: c.seq,
                    counts: c.v,
                });
            }
        }
        for id in std::mem::take(&mut self.dirty_series) {
            let s = &self.series[id as usize];
            batch.series.push(SeriesRow {
                id,
                cluster: s.cluster.clone(),
                topic: s.topic.clone(),
                tier: s.tier.to_string(),
                pruned_records: s.pruned.records,
                pruned_expired: s.pruned.expired,
                first_bucket: s.first_bucket,
                live: s.live,
            });
        }
        for key in std::mem::take(&mut self.dirty_sums) {
            if let Some(counts) = self.sums.get(&key) {
                batch.sums.push(SumRow {
                    series: key.0,
                    bucket: key.1,
                    counts: *counts,
                });
            }
        }
        for key in std::mem::take(&mut self.dirty_latency) {
            if let Some(cell) = self.latency.get(&key) {
                batch.kv.push((
                    latency_kv_key(&key),
                    serde_json::to_string(cell).unwrap_or_default(),
                ));
            }
        }
        batch.health_deleted = std::mem::take(&mut self.dirty_health_deleted);
        batch.kv_deleted = std::mem::take(&mut self.dirty_kv_deleted);
        for key in std::mem::take(&mut self.dirty_health) {
            let Some(group) = self.lag.get_mut(&key) else {
                continue;
            };
            for (topic, parts) in &mut group.topics {
                for (&partition, e) in parts.iter_mut().filter(|(_, e)| e.dirty) {
                    e.dirty = false;
                    let mut state = Vec::with_capacity(96);
                    e.encode(&mut state);
                    batch.health.push(HealthRow {
                        id: e.id,
                        cluster: key.0.clone(),
                        group: key.1.clone(),
                        topic: topic.clone(),
                        partition,
                        state,
                    });
                }
            }
        }
        batch
    }

    /// Rebuilds a ledger from what the store loaded.
    ///
    /// What cannot be used (a gap or a repeat in the ids, a tier that does
    /// not parse, a cell of an unknown source or series) is left out and
    /// counted in [`Ledger::restore_skipped`], so that the agent starts with
    /// what it can read instead of not at all.
    pub fn restore(cfg: LedgerConfig, mut loaded: Loaded) -> Result<Self> {
        let mut ledger = Ledger::new(cfg);
        ledger.restore_skipped = std::mem::take(&mut loaded.skipped);
        let kv: HashMap<String, String> = loaded.kv.into_iter().collect();
        let mut sources = loaded.sources;
        sources.sort_by_key(|s| s.id);
        sources.dedup_by_key(|s| s.id);
        for s in sources {
            if s.id as usize > MAX_SOURCES.max(ledger.sources.len()) * 2 {
                let id = s.id;
                ledger
                    .restore_skipped
                    .note(|| format!("source id \"{id}\" is out of range"));
                continue;
            }
            // A source row that was never stored leaves a gap: keep its id
            // taken, by a source no one can open again.
            while ledger.sources.len() < s.id as usize {
                let gap = ledger.sources.len();
                ledger
                    .restore_skipped
                    .note(|| format!("source id \"{gap}\" is missing"));
                ledger.sources.push(Source::placeholder());
            }
            if ledger.source_ids.contains_key(&s.name) {
                let (id, name) = (s.id, s.name.clone());
                ledger.restore_skipped.note(|| {
                    format!(
                        "source id \"{id}\" repeats the name \"{}\"",
                        crate::error::shown(&name)
                    )
                });
                ledger.sources.push(Source::placeholder());
                continue;
            }
            // Older stores kept three message types; a missing one counts from 0.
            let messages = kv
                .get(&format!("source/{}/messages", s.id))
                .and_then(|m| serde_json::from_str::<Vec<u64>>(m).ok())
                .map_or([0, s.messages, 0, 0, 0, 0], |stored| {
                    let mut messages = [0; 6];
                    for (slot, n) in messages.iter_mut().zip(stored) {
                        *slot = n;
                    }
                    messages
                });
            ledger.source_ids.insert(s.name.clone(), s.id);
            ledger.sources.push(Source {
                tier_kinds: serde_json::from_str(&s.tier_kinds).unwrap_or_default(),
                name: s.name,
                cluster: s.cluster,
                epoch: s.epoch,
                last_seen_ms: s.last_seen_ms,
                messages,
                errors: s.errors,
                sessions: 0,
                duplicate_entries: 0,
                series: FxHashSet::default(),
                lag_series: 0,
                latency_series: 0,
                cluster_series: 0,
            });
        }
        for (key, value) in &kv {
            let Some(rest) = key.strip_prefix("latency/") else {
                continue;
            };
            let source = rest.split('/').next().and_then(|id| id.parse::<u32>().ok());
            let cell = serde_json::from_str::<LatencyCell>(value);
            match (source, cell) {
                (Some(source), Ok(cell))
                    if ledger
                        .sources
                        .get(source as usize)
                        .is_some_and(|s| !s.is_placeholder()) =>
                {
                    ledger.sources[source as usize].latency_series += 1;
                    ledger.open_series += 1;
                    ledger.latency.insert(
                        (
                            source,
                            cell.cluster.clone(),
                            cell.histogram.topic.clone(),
                            cell.histogram.tier.clone(),
                        ),
                        cell,
                    );
                }
                _ => {
                    tracing::warn!(key = %key, "ignored a stored latency histogram that cannot be read")
                }
            }
        }
        let mut series = loaded.series;
        series.sort_by_key(|s| s.id);
        series.dedup_by_key(|s| s.id);
        let limit = ledger.cfg.max_series.max(series.len()).saturating_mul(2);
        for s in series {
            if s.id as usize > limit {
                let id = s.id;
                ledger
                    .restore_skipped
                    .note(|| format!("series id \"{id}\" is out of range"));
                continue;
            }
            while ledger.series.len() < s.id as usize {
                let gap = ledger.series.len();
                ledger
                    .restore_skipped
                    .note(|| format!("series id \"{gap}\" is missing"));
                ledger.series.push(Series::placeholder());
            }
            let tier = s.tier.parse::<Tier>();
            let known = tier
                .as_ref()
                .ok()
                .and_then(|t| ledger.known_series(&s.cluster, &s.topic, t));
            match tier {
                Ok(tier) if known.is_none() => {
                    let id = ledger.series_id(&s.cluster, &s.topic, &tier);
                    let sr = &mut ledger.series[id as usize];
                    sr.pruned.records = s.pruned_records;
                    sr.pruned.expired = s.pruned_expired;
                    // The totals over the stored cells, loaded or not.
                    sr.live = s.live;
                    sr.first_bucket = s.first_bucket;
                }
                _ => {
                    let id = s.id;
                    ledger.restore_skipped.note(|| {
                        format!(
                            "series id \"{id}\" has a tier that does not parse or repeats another series"
                        )
                    });
                    ledger.series.push(Series::placeholder());
                }
            }
        }
        // Series interned while restoring are stored already.
        ledger.dirty_series.clear();
        let cells = std::mem::take(&mut loaded.cells);
        for h in loaded.history {
            if let Some(status) = status_named(&h.status) {
                ledger.touched.entry(h.bucket).or_insert(0);
                ledger.closed.insert(
                    (h.series, h.bucket),
                    Closed {
                        status,
                        unresolved_at_close: h.unresolved_at_close,
                    },
                );
            }
        }
        let mut lag_entries = 0;
        for h in loaded.health {
            // Ids are never given twice, not even an unreadable row's.
            ledger.next_lag_id = ledger.next_lag_id.max(h.id.saturating_add(1));
            let entry = if h.state.first() == Some(&b'{') {
                serde_json::from_slice::<StoredLag>(&h.state)
                    .map(|state| LagEntry {
                        id: h.id,
                        dirty: false,
                        health: state.health,
                        last: LastLag::from(&state.last),
                        source: state.source,
                        refreshed_ms: state.refreshed_ms,
                        at_ms: state.at_ms,
                        interval_ms: state.interval_ms,
                    })
                    .map_err(|e| e.to_string())
            } else {
                LagEntry::decode(h.id, &h.state)
                    .ok_or_else(|| "its stored state does not read".to_owned())
            };
            let shown = |problem: &str| {
                format!(
                    "the health of group \"{}\" on \"{}\" {}: {problem}",
                    crate::error::shown(&h.group),
                    crate::error::shown(&h.topic),
                    h.partition
                )
            };
            let mut entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    ledger.restore_skipped.note(|| shown(&e));
                    continue;
                }
            };
            entry.source = entry.source.filter(|&s| {
                ledger
                    .sources
                    .get(s as usize)
                    .is_some_and(|s| !s.is_placeholder())
            });
            let parts = ledger
                .lag
                .entry((h.cluster.clone(), h.group.clone()))
                .or_default()
                .topics
                .entry(h.topic.clone())
                .or_default();
            if parts.contains_key(&h.partition) {
                ledger.restore_skipped.note(|| shown("it is stored twice"));
                ledger.dirty_health_deleted.push(h.id);
                continue;
            }
            if let Some(s) = entry.source {
                ledger.sources[s as usize].lag_series += 1;
            }
            lag_entries += 1;
            parts.insert(h.partition, entry);
        }
        ledger.open_series += lag_entries;
        ledger.restore_cells(cells)?;
        Ok(ledger)
    }

    /// Adds stored cells to a ledger being restored (the store streams them
    /// in chunks, so this runs while the rest are still being read). A cell
    /// of an unknown source or series is left out and counted in
    /// [`Ledger::restore_skipped`].
    pub fn restore_cells(&mut self, cells: Vec<CellRow>) -> Result<()> {
        self.take_cells(cells, false);
        Ok(())
    }

    /// Sets each (series, bucket)'s sum as stored (the window's, read at a
    /// start in place of its cells, which [`Ledger::warm_cells`] then brings).
    pub fn restore_sums(&mut self, sums: Vec<crate::store::SumRow>) {
        for s in sums {
            if self
                .series
                .get(s.series as usize)
                .is_some_and(|r| !r.is_placeholder())
            {
                self.sums.insert((s.series, s.bucket), s.counts);
                self.touched.entry(s.bucket).or_insert(0);
            }
        }
    }

    /// From a start until [`Ledger::warmed`]: the window's stored cells are
    /// not all in memory yet, so a count for any bucket reads its stored cell
    /// first (as a late count before the window does), and the agent is
    /// ready without waiting for them. Needs [`Ledger::attach_cold`].
    pub fn begin_warming(&mut self) {
        self.warming = self.cold.is_some();
    }

    /// Adds stored cells of the window while warming: a cell already in
    /// memory (read for a count since, or given one) is newer and stays, a
    /// cell of a bucket that has left the window since is not taken, and the
    /// sums, set by [`Ledger::restore_sums`], are left as they are.
    pub fn warm_cells(&mut self, cells: Vec<CellRow>) {
        self.take_cells(cells, true);
    }

    /// Every stored cell of the window is in memory: counts stop reading
    /// their cells from the store, but for buckets before the window.
    pub fn warmed(&mut self) {
        self.warming = false;
    }

    /// Whether [`Ledger::warmed`] is still to come.
    pub fn is_warming(&self) -> bool {
        self.warming
    }

    fn take_cells(&mut self, cells: Vec<CellRow>, warm: bool) {
        // The store hands cells in key order (bucket, source, series,
        // partition): one bucket's cells in a row, and one series' sum
        // added once per run of its partitions.
        let mut sum: Option<((u32, i64), CellCounts)> = None;
        let mut last_series = None;
        let mut rows = cells.into_iter().peekable();
        while let Some(bucket) = rows.peek().map(|c| c.bucket) {
            if warm && bucket < self.resident_from {
                while rows.next_if(|c| c.bucket == bucket).is_some() {}
                continue;
            }
            self.touched.entry(bucket).or_insert(0);
            // Buckets hold about as many cells as each other: a new one is
            // sized like the largest so far, instead of growing by doubling
            // (each doubling copies the cells and rehashes the index).
            let like = self.cells.by_bucket.values().map(|b| b.cells.len()).max();
            let dest = self.cells.by_bucket.entry(bucket).or_insert_with(|| {
                let n = like.unwrap_or(0);
                BucketCells {
                    index: FxHashMap::with_capacity_and_hasher(n, Default::default()),
                    cells: Vec::with_capacity(n),
                }
            });
            while let Some(c) = rows.next_if(|c| c.bucket == bucket) {
                let known = self
                    .sources
                    .get(c.source as usize)
                    .is_some_and(|s| !s.is_placeholder())
                    && self
                        .series
                        .get(c.series as usize)
                        .is_some_and(|s| !s.is_placeholder());
                if !known {
                    self.restore_skipped.note(|| {
                        format!(
                            "a cell of unknown source \"{}\" or series \"{}\"",
                            c.source, c.series
                        )
                    });
                    continue;
                }
                let id = CellId {
                    source: c.source,
                    series: c.series,
                    partition: c.partition,
                };
                if warm && dest.index.contains_key(&id) {
                    continue;
                }
                // The series' totals were stored with it: the cells add to
                // the sums of their buckets only (while warming, the sums
                // were read whole).
                match &mut sum {
                    _ if warm => {}
                    Some((key, counts)) if *key == (c.series, bucket) => counts.add(&c.counts),
                    _ => {
                        if let Some((key, counts)) = sum.take() {
                            self.sums.entry(key).or_default().add(&counts);
                        }
                        sum = Some(((c.series, bucket), c.counts));
                    }
                }
                if last_series != Some((c.source, c.series, c.partition)) {
                    if self.sources[c.source as usize]
                        .series
                        .insert((c.series, c.partition))
                    {
                        self.open_series += 1;
                    }
                    last_series = Some((c.source, c.series, c.partition));
                }
                let cell = Cell {
                    epoch: c.epoch,
                    seq: c.seq,
                    v: c.counts,
                };
                if dest.insert(id, cell) {
                    self.cells.len += 1;
                }
            }
        }
        if let Some((key, counts)) = sum {
            self.sums.entry(key).or_default().add(&counts);
        }
    }
}

/// The store's key of one latency histogram.
pub(super) fn latency_kv_key((source, cluster, topic, tier): &LatencyKey) -> String {
    format!("latency/{source}/{cluster}/{topic}/{tier}")
}

impl Cold for ColdReader {
    fn cell(
        &self,
        bucket: i64,
        source: u32,
        series: u32,
        partition: i32,
    ) -> Result<Option<CellRow>> {
        ColdReader::cell(self, bucket, source, series, partition)
    }

    fn sum(&self, series: u32, bucket: i64) -> Result<Option<CellCounts>> {
        ColdReader::sum(self, series, bucket)
    }

    fn closed(&self, series: u32, bucket: i64) -> Result<Option<(String, bool)>> {
        ColdReader::closed(self, series, bucket)
    }

    fn sums_before(&self, before: i64) -> Result<Vec<(u32, CellCounts)>> {
        ColdReader::sums_before(self, before)
    }
}
