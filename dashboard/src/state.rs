//! What the dashboard knows: the agent's books as the feed built them, the
//! connection, and where the user is. A pure reducer: feed messages and
//! actions go in, nothing is drawn here.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tally_audit::feed::{FeedMessage, GroupKey, Keyed, TopicKey};
use tally_audit::snapshot::{AlertInfo, GroupHealth, SourceInfo};
use tally_audit::{BucketStatus, GroupStatus, Snapshot};

/// How many lag samples a group's sparkline keeps.
pub const LAG_HISTORY: usize = 60;

/// How many samples of records/s a cluster's flow keeps: five minutes at
/// the agent's default tick of a second.
pub const FLOW_HISTORY: usize = 300;

/// A cluster's records per second, one sample per frame of the feed,
/// oldest first: what the reference tiers counted (in), and what the
/// consumer groups committed (out).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Flow {
    /// Records/s counted by each topic's reference tier (produced).
    pub produced: VecDeque<u64>,
    /// Records/s counted by the group tiers (consumed).
    pub consumed: VecDeque<u64>,
}

/// A frame of the feed that came in parts ([`tally_audit::feed::Delta::more`])
/// and is not whole yet.
#[derive(Clone, Debug, Default)]
struct Partial {
    /// When the books were before the frame's first part (the previous
    /// frame's time), epoch ms.
    from_ms: i64,
    /// Records counted per cluster by the parts so far: (in, out).
    grew: HashMap<String, (u64, u64)>,
}

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
    /// How far behind its source a mirror tier is, in seconds.
    pub mirror_lag_seconds: Option<f64>,
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

/// The rows of the tab shown after filter and sort (the other tabs' are
/// empty), rebuilt when the data, the filter, the order or the tab changes,
/// so that drawing a frame only slices them.
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
    /// The longest names in the rows, for column widths from the data.
    pub widths: Widths,
}

/// The longest name of each kind in the rows, in characters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Widths {
    /// Topics (Topics tab).
    pub topic: usize,
    /// Tiers (Topics tab).
    pub tier: usize,
    /// Groups.
    pub group: usize,
    /// Alert names.
    pub alert: usize,
    /// Sources.
    pub source: usize,
}

/// The length of the longest of `names`, in characters.
fn widest<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(|n| n.chars().count()).max().unwrap_or(0)
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
    /// Records/s per cluster, oldest first.
    pub flow: HashMap<String, Flow>,
    /// The opening snapshot while its parts arrive: it replaces `live`
    /// when whole, so that a reconnect shows the old books until then.
    incoming: Option<Snapshot>,
    /// An update whose parts are arriving.
    partial: Option<Partial>,
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
            flow: HashMap::new(),
            incoming: None,
            partial: None,
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

    /// Whether the opening snapshot is arriving in parts.
    pub fn receiving(&self) -> bool {
        self.incoming.is_some()
    }

    /// Takes one frame of the feed (or one part of it). An update before
    /// any snapshot is dropped (the agent always sends the snapshot first).
    /// The books change on screen once a frame is whole.
    pub fn feed(&mut self, message: FeedMessage, now_ms: i64) {
        self.now_ms = now_ms;
        self.last_frame_ms = Some(now_ms);
        match message {
            FeedMessage::Snapshot { snapshot, more } => {
                self.partial = None;
                if more {
                    self.incoming = Some(*snapshot);
                    return;
                }
                self.incoming = None;
                self.live = Some(*snapshot);
            }
            FeedMessage::Update(delta) => {
                if let Some(s) = &mut self.incoming {
                    let more = delta.more;
                    delta.apply(s);
                    if more {
                        return;
                    }
                    self.live = self.incoming.take();
                } else {
                    let Some(s) = &mut self.live else { return };
                    let mut partial = self.partial.take().unwrap_or_else(|| Partial {
                        from_ms: s.at_ms,
                        grew: HashMap::new(),
                    });
                    count_growth(s, &delta, &mut partial.grew);
                    let more = delta.more;
                    let at_ms = delta.at_ms;
                    delta.apply(s);
                    if more {
                        self.partial = Some(partial);
                        return;
                    }
                    if at_ms > partial.from_ms {
                        self.feed_interval_ms = at_ms - partial.from_ms;
                        self.record_flow(&partial.grew, at_ms - partial.from_ms);
                    }
                }
            }
        }
        self.record_lag();
        if !self.paused {
            self.refresh();
        }
    }

    /// One sample of records/s per cluster of the books: what `grew`
    /// counted over `elapsed_ms`, zero where nothing was.
    fn record_flow(&mut self, grew: &HashMap<String, (u64, u64)>, elapsed_ms: i64) {
        let Some(s) = &self.live else { return };
        let clusters: std::collections::HashSet<&str> =
            s.topics.iter().map(|t| t.cluster.as_str()).collect();
        let per_second = |n: u64| {
            let ms = u64::try_from(elapsed_ms).unwrap_or(1).max(1);
            n.saturating_mul(1000) / ms
        };
        for cluster in &clusters {
            let (produced, consumed) = grew.get(*cluster).copied().unwrap_or((0, 0));
            let flow = self.flow.entry((*cluster).to_owned()).or_default();
            for (history, n) in [
                (&mut flow.produced, produced),
                (&mut flow.consumed, consumed),
            ] {
                if history.len() == FLOW_HISTORY {
                    history.pop_front();
                }
                history.push_back(per_second(n));
            }
        }
        self.flow.retain(|c, _| clusters.contains(c.as_str()));
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

    /// Rebuilds the rows of the tab shown (the others have none until
    /// shown) from the snapshot shown, the filter and the order, and keeps
    /// the cursor inside them. A frame of a large agent so costs the rows of
    /// one view, not of all six.
    pub fn refresh(&mut self) {
        let rows = match self.shown() {
            Some(s) => self.build_rows(s),
            None => Rows::default(),
        };
        self.rows = rows;
        let len = self.row_count();
        let cursor = &mut self.cursor[self.tab.index()];
        *cursor = (*cursor).min(len.saturating_sub(1));
    }

    fn build_rows(&self, s: &Snapshot) -> Rows {
        // Only the tab shown has rows: the others are built when shown.
        let topics = if self.tab == Tab::Topics {
            let mut topics = Vec::with_capacity(s.topics.iter().map(|t| t.tiers.len()).sum());
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
                        mirror_lag_seconds: b.mirror_lag.map(|m| m.seconds),
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
            topics
        } else {
            Vec::new()
        };

        // Only the tab shown has rows: the others are built when shown.
        let buckets = if self.tab == Tab::Buckets {
            let mut buckets: Vec<usize> = (0..s.buckets.len())
                .filter(|&i| {
                    let t = &s.buckets[i];
                    self.in_cluster(&t.cluster) && self.matches(&[&t.topic, &t.cluster])
                })
                .collect();
            // Each topic's worst bucket, once (not per comparison).
            let worst: Vec<u8> = if self.sort == Sort::Worst {
                s.buckets
                    .iter()
                    .map(|t| {
                        t.buckets
                            .iter()
                            .flat_map(|b| b.tiers.values())
                            .map(|t| t.status.severity())
                            .max()
                            .unwrap_or(0)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let worst_bucket = |i: usize| worst[i];
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
            buckets
        } else {
            Vec::new()
        };

        // Only the tab shown has rows: the others are built when shown.
        let groups = if self.tab == Tab::Groups {
            let mut groups: Vec<usize> = (0..s.groups.len())
                .filter(|&i| {
                    let g = &s.groups[i];
                    if !self.in_cluster(&g.cluster) {
                        return false;
                    }
                    if self.filter.is_empty() {
                        return true;
                    }
                    // The group's topics, each once.
                    let mut names: Vec<&str> = vec![&g.group, &g.cluster];
                    for p in g.partitions.iter() {
                        if names.last() != Some(&p.topic.as_str()) {
                            names.push(&p.topic);
                        }
                    }
                    self.matches(&names)
                })
                .collect();
            fn group_name(g: &GroupHealth) -> (&str, &str) {
                (&g.cluster, &g.group)
            }
            match self.sort {
                Sort::Name => {
                    groups.sort_by(|&a, &b| group_name(&s.groups[a]).cmp(&group_name(&s.groups[b])))
                }
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
            groups
        } else {
            Vec::new()
        };

        // Only the tab shown has rows: the others are built when shown.
        let alerts = if self.tab == Tab::Alerts {
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
            fn alert_name(a: &AlertInfo) -> (&str, &BTreeMap<String, String>) {
                (&a.alertname, &a.labels)
            }
            match self.sort {
                Sort::Name => {
                    alerts.sort_by(|&a, &b| alert_name(&s.alerts[a]).cmp(&alert_name(&s.alerts[b])))
                }
                Sort::Worst | Sort::Size => alerts.sort_by(|&a, &b| {
                    let (x, y) = (&s.alerts[a], &s.alerts[b]);
                    alert_rank(x)
                        .cmp(&alert_rank(y))
                        .then(x.since_ms.cmp(&y.since_ms))
                        .then_with(|| alert_name(x).cmp(&alert_name(y)))
                }),
            }
            alerts
        } else {
            Vec::new()
        };

        // Only the tab shown has rows: the others are built when shown.
        let sources = if self.tab == Tab::Sources {
            let mut sources: Vec<usize> = (0..s.sources.len())
                .filter(|&i| {
                    let x = &s.sources[i];
                    self.in_cluster(&x.cluster) && self.matches(&[&x.source, &x.cluster])
                })
                .collect();
            fn source_name(x: &SourceInfo) -> &str {
                &x.source
            }
            match self.sort {
                Sort::Name => sources
                    .sort_by(|&a, &b| source_name(&s.sources[a]).cmp(source_name(&s.sources[b]))),
                Sort::Worst => sources.sort_by(|&a, &b| {
                    let (x, y) = (&s.sources[a], &s.sources[b]);
                    x.connected
                        .cmp(&y.connected)
                        .then(x.last_seen_ms.cmp(&y.last_seen_ms))
                        .then_with(|| source_name(x).cmp(source_name(y)))
                }),
                Sort::Size => sources.sort_by(|&a, &b| {
                    let total = |x: &SourceInfo| x.messages.values().sum::<u64>();
                    let (x, y) = (&s.sources[a], &s.sources[b]);
                    total(y)
                        .cmp(&total(x))
                        .then_with(|| source_name(x).cmp(source_name(y)))
                }),
            }
            sources
        } else {
            Vec::new()
        };

        let clusters: std::collections::BTreeSet<&str> = s
            .topics
            .iter()
            .map(|t| t.cluster.as_str())
            .chain(s.groups.iter().map(|g| g.cluster.as_str()))
            .chain(s.sources.iter().map(|x| x.cluster.as_str()))
            .chain(s.clusters.iter().map(|c| c.cluster.as_str()))
            .collect();
        let widths = Widths {
            topic: widest(topics.iter().map(|r| r.topic.as_str())),
            tier: widest(topics.iter().map(|r| r.tier.as_str())),
            group: widest(groups.iter().map(|&i| s.groups[i].group.as_str())),
            alert: widest(alerts.iter().map(|&i| s.alerts[i].alertname.as_str())),
            source: widest(sources.iter().map(|&i| s.sources[i].source.as_str())),
        };
        Rows {
            topics,
            buckets,
            groups,
            alerts,
            sources,
            clusters: clusters.into_iter().map(str::to_owned).collect(),
            widths,
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

/// Adds to `grew` the records each cluster's buckets gained in `delta`
/// over `s`, the books before it: (in, out), in for each topic's
/// reference tier, out for its group tiers. Only the buckets the delta
/// carries are looked at.
fn count_growth(
    s: &Snapshot,
    delta: &tally_audit::feed::Delta,
    grew: &mut HashMap<String, (u64, u64)>,
) {
    if delta.buckets.upsert.is_empty() {
        return;
    }
    let reference: HashMap<(&str, &str), &str> = s
        .topics
        .iter()
        .chain(delta.topics.upsert.iter())
        .filter_map(|t| {
            t.reference
                .as_deref()
                .map(|r| ((t.cluster.as_str(), t.topic.as_str()), r))
        })
        .collect();
    let before: HashMap<(&str, &str), &tally_audit::snapshot::TopicBuckets> = s
        .buckets
        .iter()
        .map(|t| ((t.cluster.as_str(), t.topic.as_str()), t))
        .collect();
    for t in &delta.buckets.upsert {
        let key = (t.cluster.as_str(), t.topic.as_str());
        let reference = reference.get(&key).copied();
        let old = before.get(&key);
        let (mut produced, mut consumed) = (0u64, 0u64);
        for b in &t.buckets.upsert {
            let old_bucket =
                old.and_then(|o| o.buckets.iter().rev().find(|x| x.bucket == b.bucket));
            for (tier, cell) in &b.tiers {
                let was = old_bucket
                    .and_then(|o| o.tiers.get(tier))
                    .map_or(0, |c| c.records);
                let gained = cell.records.saturating_sub(was);
                if reference == Some(tier.as_str()) {
                    produced = produced.saturating_add(gained);
                } else if tier.starts_with("group:") {
                    consumed = consumed.saturating_add(gained);
                }
            }
        }
        if produced > 0 || consumed > 0 {
            let entry = grew.entry(t.cluster.clone()).or_default();
            entry.0 = entry.0.saturating_add(produced);
            entry.1 = entry.1.saturating_add(consumed);
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
