//! What the dashboard knows: the agent's books as the feed built them, the
//! connection, and where the user is. A pure reducer: feed messages and
//! actions go in, nothing is drawn here.

use std::collections::{HashMap, VecDeque};

use tally_audit::feed::{FeedMessage, GroupKey, Keyed, TopicKey};
use tally_audit::snapshot::{AlertInfo, GroupHealth, SourceInfo};
use tally_audit::{BucketStatus, GroupStatus, Snapshot};

/// How many lag samples a group's sparkline keeps.
pub const LAG_HISTORY: usize = 60;

/// With no frame for this long (or three of the agent's ticks, if longer),
/// the data on screen is marked stale even while the connection looks open.
pub const STALE_AFTER_MS: i64 = 5_000;

/// The connection to the agent, as the user sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Link {
    /// Trying to connect.
    Connecting {
        /// Which attempt since the last good connection (1 = first).
        attempt: u32,
    },
    /// The feed is open.
    Connected,
    /// The last attempt failed or the feed ended; the next attempt is due.
    Disconnected {
        /// What went wrong.
        error: String,
        /// When the next attempt starts, epoch ms.
        retry_at_ms: i64,
    },
}

/// The tabs, in the order of their number keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tab {
    /// Topics complete and incomplete, groups by status, alerts, sources.
    Overview,
    /// Per topic and tier: the books.
    Topics,
    /// The heatmap of recent buckets.
    Buckets,
    /// Consumer groups: lag and health.
    Groups,
    /// Alerts firing and pending.
    Alerts,
    /// Emitters and when they were last seen.
    Sources,
}

impl Tab {
    /// Every tab, in order.
    pub const ALL: [Tab; 6] = [
        Tab::Overview,
        Tab::Topics,
        Tab::Buckets,
        Tab::Groups,
        Tab::Alerts,
        Tab::Sources,
    ];

    /// The tab's title.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Topics => "Topics",
            Tab::Buckets => "Buckets",
            Tab::Groups => "Groups",
            Tab::Alerts => "Alerts",
            Tab::Sources => "Sources",
        }
    }

    /// Position in [`Tab::ALL`].
    pub fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// How rows are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// By name.
    Name,
    /// Worst first: least complete topics, groups in error, firing alerts.
    Worst,
    /// Largest first: records for topics, lag for groups.
    Size,
}

impl Sort {
    /// The next order, for the `s` key.
    pub fn next(self) -> Sort {
        match self {
            Sort::Name => Sort::Worst,
            Sort::Worst => Sort::Size,
            Sort::Size => Sort::Name,
        }
    }

    /// The order's name.
    pub fn label(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Worst => "worst",
            Sort::Size => "size",
        }
    }
}

/// A detail view opened with Enter.
#[derive(Clone, Debug, PartialEq)]
pub enum Drill {
    /// One bucket of one topic: the counts per tier.
    Bucket {
        /// The topic.
        topic: TopicKey,
        /// The bucket's start, epoch ms.
        bucket: i64,
    },
    /// The partitions of one group.
    Group {
        /// The group.
        group: GroupKey,
        /// The selected partition row.
        cursor: usize,
    },
}

/// One row of the Topics tab: a (topic, tier).
#[derive(Clone, Debug, PartialEq)]
pub struct TopicRow {
    /// The cluster.
    pub cluster: String,
    /// The topic.
    pub topic: String,
    /// The tier.
    pub tier: String,
    /// The reference tier's records (what was produced to the log).
    pub produced: u64,
    /// This tier's records.
    pub consumed: u64,
    /// Records not yet consumed (group tiers), or not yet copied (mirror tiers).
    pub pending: Option<u64>,
    /// Records lost to retention (group tiers).
    pub expired: Option<u64>,
    /// Records before the group started reading (group tiers): outside its
    /// books, which is why consumed + pending can be less than produced.
    pub skipped: Option<u64>,
    /// Lost records in closed buckets.
    pub missing: u64,
    /// This tier's records over the reference's, closed buckets of the window.
    pub completeness: f64,
    /// The worst status of this tier's buckets in the window.
    pub worst: Option<BucketStatus>,
}

/// The rows of each tab after filter and sort, rebuilt when the data, the
/// filter or the order changes, so that drawing a frame only slices them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rows {
    /// Topics × tiers.
    pub topics: Vec<TopicRow>,
    /// Indexes into the snapshot's `buckets`.
    pub buckets: Vec<usize>,
    /// Indexes into the snapshot's `groups`.
    pub groups: Vec<usize>,
    /// Indexes into the snapshot's `alerts`.
    pub alerts: Vec<usize>,
    /// Indexes into the snapshot's `sources`.
    pub sources: Vec<usize>,
    /// Every cluster of the snapshot shown, sorted (whatever the filters).
    pub clusters: Vec<String>,
}

/// Everything the dashboard draws from.
#[derive(Clone, Debug)]
pub struct State {
    /// The agent's URL, as given.
    pub agent: String,
    /// Whether to draw in colour (off with `NO_COLOR`).
    pub color: bool,
    /// The connection.
    pub link: Link,
    /// The books as the feed built them; `None` until the first snapshot.
    pub live: Option<Snapshot>,
    /// What the screen shows while paused.
    pub frozen: Option<Snapshot>,
    /// Wall clock of the last frame received, epoch ms.
    pub last_frame_ms: Option<i64>,
    /// The agent's tick, as seen between the last two frames, ms.
    pub feed_interval_ms: i64,
    /// The wall clock now, epoch ms (set by the caller, so drawing is pure).
    pub now_ms: i64,
    /// Lag in records per group, oldest first.
    pub lag_history: HashMap<GroupKey, VecDeque<u64>>,
    /// The tab shown.
    pub tab: Tab,
    /// Selected row per tab.
    pub cursor: [usize; 6],
    /// Selected bucket column in the heatmap, 0 = newest.
    pub bucket_col: usize,
    /// The filter: rows whose names contain it (any case).
    pub filter: String,
    /// The cluster shown (`c` cycles: all, then each one); None: all.
    pub cluster: Option<String>,
    /// Whether keys are typed into the filter.
    pub editing_filter: bool,
    /// The row order.
    pub sort: Sort,
    /// Whether the screen is frozen.
    pub paused: bool,
    /// Whether the help is shown.
    pub help: bool,
    /// The open detail view.
    pub drill: Option<Drill>,
    /// Whether the user asked to quit.
    pub quit: bool,
    /// The rows of each tab.
    pub rows: Rows,
}

impl State {
    /// A state with no data yet, connecting to `agent`.
    pub fn new(agent: impl Into<String>, color: bool) -> State {
        State {
            agent: agent.into(),
            color,
            link: Link::Connecting { attempt: 1 },
            live: None,
            frozen: None,
            last_frame_ms: None,
            feed_interval_ms: 1_000,
            now_ms: 0,
            lag_history: HashMap::new(),
            tab: Tab::Overview,
            cursor: [0; 6],
            bucket_col: 0,
            filter: String::new(),
            cluster: None,
            editing_filter: false,
            sort: Sort::Name,
            paused: false,
            help: false,
            drill: None,
            quit: false,
            rows: Rows::default(),
        }
    }

    /// The snapshot on screen: the frozen one while paused.
    pub fn shown(&self) -> Option<&Snapshot> {
        if self.paused {
            self.frozen.as_ref().or(self.live.as_ref())
        } else {
            self.live.as_ref()
        }
    }

    /// Whether the data on screen may be out of date: the feed is down, or
    /// silent for longer than [`STALE_AFTER_MS`].
    pub fn stale(&self) -> bool {
        self.live.is_some()
            && (self.link != Link::Connected
                || self.last_frame_ms.is_some_and(|t| {
                    self.now_ms - t > STALE_AFTER_MS.max(self.feed_interval_ms.saturating_mul(3))
                }))
    }

    /// Takes one frame of the feed. An update before any snapshot is
    /// dropped (the agent always sends the snapshot first).
    pub fn feed(&mut self, message: FeedMessage, now_ms: i64) {
        self.now_ms = now_ms;
        self.last_frame_ms = Some(now_ms);
        match message {
            FeedMessage::Snapshot { snapshot } => self.live = Some(*snapshot),
            FeedMessage::Update(delta) => match &mut self.live {
                Some(s) => {
                    if delta.at_ms > s.at_ms {
                        self.feed_interval_ms = delta.at_ms - s.at_ms;
                    }
                    delta.apply(s);
                }
                None => return,
            },
        }
        self.record_lag();
        if !self.paused {
            self.refresh();
        }
    }

    /// The connection changed.
    pub fn set_link(&mut self, link: Link, now_ms: i64) {
        self.now_ms = now_ms;
        self.link = link;
    }

    fn record_lag(&mut self) {
        let Some(s) = &self.live else { return };
        for g in &s.groups {
            let history = self.lag_history.entry(g.key()).or_default();
            if history.len() == LAG_HISTORY {
                history.pop_front();
            }
            history.push_back(g.lag_records);
        }
        if self.lag_history.len() > s.groups.len() {
            let present: std::collections::HashSet<GroupKey> =
                s.groups.iter().map(Keyed::key).collect();
            self.lag_history.retain(|k, _| present.contains(k));
        }
    }

    /// Whether `cluster` is shown under the cluster filter.
    fn in_cluster(&self, cluster: &str) -> bool {
        self.cluster.as_deref().is_none_or(|c| c == cluster)
    }

    /// Moves the cluster filter on: from all to the first cluster, from
    /// each to the next, from the last back to all.
    pub fn next_cluster(&mut self) {
        let clusters = &self.rows.clusters;
        self.cluster = match &self.cluster {
            None => clusters.first().cloned(),
            Some(c) => clusters.iter().skip_while(|x| *x != c).nth(1).cloned(),
        };
        self.drill = None;
        self.refresh();
    }

    fn matches(&self, names: &[&str]) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        let needle = self.filter.to_lowercase();
        names.iter().any(|n| n.to_lowercase().contains(&needle))
    }

    /// Rebuilds the rows of every tab from the snapshot shown, the filter
    /// and the order, and keeps the cursors inside them.
    pub fn refresh(&mut self) {
        let rows = match self.shown() {
            Some(s) => self.build_rows(s),
            None => Rows::default(),
        };
        self.rows = rows;
        let lens = [
            0,
            self.rows.topics.len(),
            self.rows.buckets.len(),
            self.rows.groups.len(),
            self.rows.alerts.len(),
            self.rows.sources.len(),
        ];
        for (cursor, len) in self.cursor.iter_mut().zip(lens) {
            *cursor = (*cursor).min(len.saturating_sub(1));
        }
    }

    fn build_rows(&self, s: &Snapshot) -> Rows {
        let mut topics = Vec::new();
        for t in &s.topics {
            let produced = t
                .reference
                .as_ref()
                .and_then(|r| t.tiers.get(r))
                .map_or(0, |b| b.records);
            if !self.in_cluster(&t.cluster) {
                continue;
            }
            for (tier, b) in &t.tiers {
                if !self.matches(&[&t.topic, tier, &t.cluster]) {
                    continue;
                }
                topics.push(TopicRow {
                    cluster: t.cluster.clone(),
                    topic: t.topic.clone(),
                    tier: tier.clone(),
                    produced,
                    consumed: b.records,
                    // A mirror tier's pending records: its lag less what it lost.
                    pending: b
                        .pending
                        .or_else(|| b.mirror_lag.map(|m| m.records.saturating_sub(b.missing))),
                    expired: b.expired,
                    skipped: b.skipped,
                    missing: b.missing,
                    completeness: b.completeness,
                    worst: worst_status(b.buckets.iter().map(|(s, n)| (*s, *n))),
                });
            }
        }
        let by_name = |a: &TopicRow, b: &TopicRow| {
            (&a.cluster, &a.topic, &a.tier).cmp(&(&b.cluster, &b.topic, &b.tier))
        };
        match self.sort {
            Sort::Name => topics.sort_by(by_name),
            Sort::Worst => topics.sort_by(|a, b| {
                a.completeness
                    .total_cmp(&b.completeness)
                    .then(b.missing.cmp(&a.missing))
                    .then_with(|| by_name(a, b))
            }),
            Sort::Size => {
                topics.sort_by(|a, b| b.consumed.cmp(&a.consumed).then_with(|| by_name(a, b)))
            }
        }

        let mut buckets: Vec<usize> = (0..s.buckets.len())
            .filter(|&i| {
                let t = &s.buckets[i];
                self.in_cluster(&t.cluster) && self.matches(&[&t.topic, &t.cluster])
            })
            .collect();
        let worst_bucket = |i: usize| {
            s.buckets[i]
                .buckets
                .iter()
                .flat_map(|b| b.tiers.values())
                .map(|t| t.status.severity())
                .max()
                .unwrap_or(0)
        };
        let bucket_name = |i: usize| (&s.buckets[i].cluster, &s.buckets[i].topic);
        match self.sort {
            Sort::Name => buckets.sort_by(|&a, &b| bucket_name(a).cmp(&bucket_name(b))),
            Sort::Worst => buckets.sort_by(|&a, &b| {
                worst_bucket(b)
                    .cmp(&worst_bucket(a))
                    .then_with(|| bucket_name(a).cmp(&bucket_name(b)))
            }),
            Sort::Size => buckets.sort_by(|&a, &b| {
                s.buckets[b]
                    .buckets
                    .len()
                    .cmp(&s.buckets[a].buckets.len())
                    .then_with(|| bucket_name(a).cmp(&bucket_name(b)))
            }),
        }

        let mut groups: Vec<usize> = (0..s.groups.len())
            .filter(|&i| {
                let g = &s.groups[i];
                if !self.in_cluster(&g.cluster) {
                    return false;
                }
                let mut names: Vec<&str> = vec![&g.group, &g.cluster];
                names.extend(g.partitions.iter().map(|p| p.topic.as_str()));
                self.matches(&names)
            })
            .collect();
        let group_name = |g: &GroupHealth| (g.cluster.clone(), g.group.clone());
        match self.sort {
            Sort::Name => groups.sort_by_key(|&i| group_name(&s.groups[i])),
            Sort::Worst => groups.sort_by(|&a, &b| {
                let (ga, gb) = (&s.groups[a], &s.groups[b]);
                group_rank(gb.status)
                    .cmp(&group_rank(ga.status))
                    .then(gb.max_lag_seconds.total_cmp(&ga.max_lag_seconds))
                    .then_with(|| group_name(ga).cmp(&group_name(gb)))
            }),
            Sort::Size => groups.sort_by(|&a, &b| {
                let (ga, gb) = (&s.groups[a], &s.groups[b]);
                gb.lag_records
                    .cmp(&ga.lag_records)
                    .then_with(|| group_name(ga).cmp(&group_name(gb)))
            }),
        }

        let mut alerts: Vec<usize> = (0..s.alerts.len())
            .filter(|&i| {
                let a = &s.alerts[i];
                // An alert about no one cluster shows under every one.
                if a.labels.get("cluster").is_some_and(|c| !self.in_cluster(c)) {
                    return false;
                }
                let mut names: Vec<&str> = vec![&a.alertname, &a.severity, &a.state];
                names.extend(a.labels.values().map(String::as_str));
                self.matches(&names)
            })
            .collect();
        let alert_name = |a: &AlertInfo| (a.alertname.clone(), a.labels.clone());
        match self.sort {
            Sort::Name => alerts.sort_by_key(|&i| alert_name(&s.alerts[i])),
            Sort::Worst | Sort::Size => alerts.sort_by(|&a, &b| {
                let (x, y) = (&s.alerts[a], &s.alerts[b]);
                alert_rank(x)
                    .cmp(&alert_rank(y))
                    .then(x.since_ms.cmp(&y.since_ms))
                    .then_with(|| alert_name(x).cmp(&alert_name(y)))
            }),
        }

        let mut sources: Vec<usize> = (0..s.sources.len())
            .filter(|&i| {
                let x = &s.sources[i];
                self.in_cluster(&x.cluster) && self.matches(&[&x.source, &x.cluster])
            })
            .collect();
        let source_name = |x: &SourceInfo| x.source.clone();
        match self.sort {
            Sort::Name => sources.sort_by_key(|&i| source_name(&s.sources[i])),
            Sort::Worst => sources.sort_by(|&a, &b| {
                let (x, y) = (&s.sources[a], &s.sources[b]);
                x.connected
                    .cmp(&y.connected)
                    .then(x.last_seen_ms.cmp(&y.last_seen_ms))
                    .then_with(|| source_name(x).cmp(&source_name(y)))
            }),
            Sort::Size => sources.sort_by(|&a, &b| {
                let total = |x: &SourceInfo| x.messages.values().sum::<u64>();
                let (x, y) = (&s.sources[a], &s.sources[b]);
                total(y)
                    .cmp(&total(x))
                    .then_with(|| source_name(x).cmp(&source_name(y)))
            }),
        }

        let clusters: std::collections::BTreeSet<&str> = s
            .topics
            .iter()
            .map(|t| t.cluster.as_str())
            .chain(s.groups.iter().map(|g| g.cluster.as_str()))
            .chain(s.sources.iter().map(|x| x.cluster.as_str()))
            .chain(s.clusters.iter().map(|c| c.cluster.as_str()))
            .collect();
        Rows {
            topics,
            buckets,
            groups,
            alerts,
            sources,
            clusters: clusters.into_iter().map(str::to_owned).collect(),
        }
    }

    /// How many rows the current tab has.
    pub fn row_count(&self) -> usize {
        match self.tab {
            Tab::Overview => 0,
            Tab::Topics => self.rows.topics.len(),
            Tab::Buckets => self.rows.buckets.len(),
            Tab::Groups => self.rows.groups.len(),
            Tab::Alerts => self.rows.alerts.len(),
            Tab::Sources => self.rows.sources.len(),
        }
    }

    /// The selected row of the current tab.
    pub fn selected(&self) -> usize {
        self.cursor[self.tab.index()]
    }

    /// The group a drill-in shows, if any.
    pub fn drilled_group(&self) -> Option<(&GroupHealth, usize)> {
        let Some(Drill::Group { group, cursor }) = &self.drill else {
            return None;
        };
        let g = self.shown()?.groups.iter().find(|g| g.key() == *group)?;
        Some((g, *cursor))
    }

    /// The starts of the `n` most recent buckets of the snapshot shown,
    /// newest first.
    pub fn recent_buckets(&self, n: usize) -> Vec<i64> {
        let Some(s) = self.shown() else {
            return Vec::new();
        };
        let newest = s
            .buckets
            .iter()
            .filter_map(|t| t.buckets.last())
            .map(|b| b.bucket)
            .max();
        let width = i64::try_from(s.width_ms.max(1)).unwrap_or(i64::MAX);
        match newest {
            Some(newest) => (0..n)
                .map(|i| newest - width * i64::try_from(i).unwrap_or(0))
                .collect(),
            None => Vec::new(),
        }
    }
}

/// The worst of some bucket statuses (those with a count above zero).
pub fn worst_status(statuses: impl Iterator<Item = (BucketStatus, u64)>) -> Option<BucketStatus> {
    statuses
        .filter(|(_, n)| *n > 0)
        .map(|(s, _)| s)
        .max_by_key(|s| s.severity())
}

fn group_rank(s: GroupStatus) -> u8 {
    match s {
        GroupStatus::Ok => 0,
        GroupStatus::Warn => 1,
        GroupStatus::Err => 2,
    }
}

fn alert_rank(a: &AlertInfo) -> u8 {
    match a.state.as_str() {
        "firing" => 0,
        "pending" => 1,
        _ => 2,
    }
}

/// Whether a topic's books balance: no tier missing records or with
/// incomplete buckets in the window.
pub fn topic_complete(t: &tally_audit::snapshot::TopicBooks) -> bool {
    t.tiers.values().all(|b| {
        b.missing == 0
            && b.buckets
                .get(&BucketStatus::Incomplete)
                .copied()
                .unwrap_or(0)
                == 0
    })
}
