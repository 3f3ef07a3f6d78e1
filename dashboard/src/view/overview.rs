//! Overview: per cluster, whether the data is flowing and complete. Each
//! cluster gets a panel: records/s in and out as sparklines, its brokers
//! and partitions, topics worst first with completeness bars, groups by lag
//! in seconds with their trend, alerts firing and sources gone silent.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, RenderDirection, Sparkline};
use tally_audit::feed::Keyed;
use tally_audit::snapshot::{AlertInfo, ClusterInfo, GroupHealth, SourceInfo, TopicBooks};
use tally_audit::{BucketStatus, GroupStatus, Snapshot};

use super::{
    bold, bucket_style, completeness_style, cut, fg, group_style, span, sparkline, stale_style,
};
use crate::state::{State, topic_complete, worst_status};

/// The fewest rows a cluster's panel takes: its borders, the flow and one
/// line of each list.
const PANEL_MIN: u16 = 6;
/// The width of a completeness bar.
const BAR: usize = 10;
/// The narrowest completeness bar.
const BAR_MIN: usize = 4;
/// The narrowest and widest a group's lag trend is drawn.
const TREND_MIN: usize = 6;
const TREND_MAX: usize = 30;

pub(super) fn render(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let Some(s) = state.shown() else { return };
    let clusters: Vec<&str> = match &state.cluster {
        Some(c) => vec![c.as_str()],
        None => state.rows.clusters.iter().map(String::as_str).collect(),
    };
    if clusters.is_empty() {
        frame.render_widget(
            Paragraph::new(
                " No books yet: no broker, collector or emitter has reported to this agent.",
            )
            .block(Block::default().borders(Borders::ALL).title(" Overview ")),
            area,
        );
        return;
    }
    let fit = usize::from((area.height / PANEL_MIN).max(1));
    let (shown, hidden) = if clusters.len() <= fit {
        (clusters.len(), 0)
    } else {
        // One line says which clusters did not fit.
        let shown = usize::from((area.height.saturating_sub(1) / PANEL_MIN).max(1));
        (shown, clusters.len() - shown)
    };
    let mut constraints = vec![Constraint::Fill(1); shown];
    if hidden > 0 {
        constraints.push(Constraint::Length(1));
    }
    let areas = Layout::vertical(constraints).split(area);
    for (cluster, rect) in clusters.iter().zip(areas.iter()).take(shown) {
        panel(state, s, cluster, frame, *rect);
    }
    if hidden > 0
        && let Some(rect) = areas.last()
    {
        let names: Vec<&str> = clusters[shown..].to_vec();
        frame.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled(format!(" {hidden} more: "), bold()),
                Span::raw(format!("{} (c shows one cluster)", names.join(", "))),
            ])),
            *rect,
        );
    }
}

/// What one cluster's panel shows, gathered from the snapshot.
struct ClusterView<'a> {
    topics: Vec<(&'a TopicBooks, f64, Option<BucketStatus>)>,
    groups: Vec<&'a GroupHealth>,
    firing: Vec<&'a AlertInfo>,
    pending: usize,
    sources: Vec<&'a SourceInfo>,
    metadata: Option<&'a ClusterInfo>,
}

fn gather<'a>(s: &'a Snapshot, cluster: &str) -> ClusterView<'a> {
    let mut topics: Vec<_> = s
        .topics
        .iter()
        .filter(|t| t.cluster == cluster)
        .map(|t| {
            let t: &TopicBooks = t;
            // The topic is as complete as its least complete tier.
            let ratio = t
                .tiers
                .values()
                .map(|b| b.completeness)
                .fold(1.0_f64, f64::min);
            let worst = worst_status(
                t.tiers
                    .values()
                    .flat_map(|b| b.buckets.iter().map(|(s, n)| (*s, *n))),
            );
            (t, ratio, worst)
        })
        .collect();
    topics.sort_by(|a, b| {
        let rank = |w: Option<BucketStatus>| w.map_or(0, |s| s.severity());
        rank(b.2)
            .cmp(&rank(a.2))
            .then(a.1.total_cmp(&b.1))
            .then_with(|| a.0.topic.cmp(&b.0.topic))
    });
    let mut groups: Vec<&GroupHealth> = s
        .groups
        .iter()
        .filter(|g| g.cluster == cluster)
        .map(|g| &**g)
        .collect();
    groups.sort_by(|a, b| {
        b.max_lag_seconds
            .total_cmp(&a.max_lag_seconds)
            .then(b.lag_records.cmp(&a.lag_records))
            .then_with(|| a.group.cmp(&b.group))
    });
    // An alert about no one cluster belongs to each.
    let mine = |a: &&AlertInfo| a.labels.get("cluster").is_none_or(|c| c == cluster);
    let firing: Vec<&AlertInfo> = s
        .alerts
        .iter()
        .filter(mine)
        .filter(|a| a.state == "firing")
        .collect();
    let pending = s
        .alerts
        .iter()
        .filter(mine)
        .filter(|a| a.state == "pending")
        .count();
    let sources = s.sources.iter().filter(|x| x.cluster == cluster).collect();
    let metadata = s
        .clusters
        .iter()
        .filter(|c| c.cluster == cluster)
        .max_by_key(|c| c.received_ms);
    ClusterView {
        topics,
        groups,
        firing,
        pending,
        sources,
        metadata,
    }
}

/// A count in a few characters: 950, 12.3k, 4.5M.
fn short(n: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", f / 1e6),
        _ => format!("{:.1}G", f / 1e9),
    }
}

/// A bar of `width` cells, filled as far as `ratio` (0 to 1).
fn bar(ratio: f64, width: usize) -> String {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let filled = ((ratio.clamp(0.0, 1.0) * width as f64).floor() as usize).min(width);
    // A topic short by a record is not drawn whole.
    let filled = if ratio < 1.0 {
        filled.min(width - 1)
    } else {
        filled
    };
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// One cluster's panel.
fn panel(state: &State, s: &Snapshot, cluster: &str, frame: &mut Frame<'_>, area: Rect) {
    let v = gather(s, cluster);
    let mut title = vec![Span::styled(format!(" {} ", cut(cluster, 40)), bold())];
    if let Some(m) = v.metadata {
        title.push(Span::raw(format!(
            "│ {} brokers │ {} partitions ",
            m.brokers, m.partitions
        )));
        let mark = |n: u64, what: &str, colour: Color| {
            Span::styled(
                format!("│ {n} {what} "),
                if n > 0 {
                    fg(state, colour).patch(bold())
                } else {
                    Style::default()
                },
            )
        };
        title.push(mark(
            m.under_replicated_partitions,
            "under-replicated",
            Color::Yellow,
        ));
        title.push(mark(m.offline_partitions, "offline", Color::Red));
    }
    if area.width < 92 && !v.firing.is_empty() {
        // Too narrow for the list of alerts: their count, first.
        title.insert(
            1,
            Span::styled(
                format!("│ {} firing ", v.firing.len()),
                fg(state, Color::Red).patch(bold()),
            ),
        );
    }
    let connected = v.sources.iter().filter(|x| x.connected).count();
    title.push(Span::styled(
        format!("│ sources {connected}/{} ", v.sources.len()),
        if connected < v.sources.len() {
            fg(state, Color::Yellow)
        } else {
            Style::default()
        },
    ));
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Line::from(title));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    // A panel with room draws the flow as graphs a few rows high.
    let tall = inner.height >= 12;
    let flow_rows = if tall {
        (inner.height / 3).clamp(3, 9)
    } else {
        1
    };
    let [flow, lists] =
        Layout::vertical([Constraint::Length(flow_rows), Constraint::Min(0)]).areas(inner);
    if tall {
        flow_graphs(state, cluster, frame, flow);
    } else {
        flow_line(state, cluster, frame, flow);
    }
    if lists.height == 0 {
        return;
    }
    // A narrow panel leaves the alerts to the Alerts view (the title of
    // the list of groups still counts them).
    let wide = lists.width >= 90;
    let [topics, groups, alerts] = if wide {
        Layout::horizontal([
            Constraint::Percentage(40),
            Constraint::Percentage(34),
            Constraint::Percentage(26),
        ])
        .spacing(1)
        .areas(lists)
    } else {
        let [topics, groups] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
                .spacing(1)
                .areas(lists);
        [topics, groups, Rect::default()]
    };
    let rows = usize::from(lists.height.saturating_sub(1));

    // Topics, worst first, each with its completeness.
    // Incomplete: records lost, not merely not consumed yet.
    let incomplete = v
        .topics
        .iter()
        .filter(|(t, _, _)| !topic_complete(t))
        .count();
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("TOPICS {}", v.topics.len()), bold()),
        Span::styled(
            format!("  {incomplete} incomplete"),
            if incomplete > 0 {
                fg(state, Color::Red).patch(bold())
            } else {
                fg(state, Color::Green)
            },
        ),
    ])];
    let bar_width = usize::from(topics.width)
        .saturating_sub(6 + 19)
        .clamp(BAR_MIN, BAR);
    let name_width = usize::from(topics.width)
        .saturating_sub(bar_width + 19)
        .max(6);
    for (t, ratio, worst) in v.topics.iter().take(rows) {
        let status = worst.map_or("-", |w| w.as_str());
        lines.push(Line::from(vec![
            Span::raw(format!("{:<name_width$} ", cut(&t.topic, name_width))),
            Span::styled(bar(*ratio, bar_width), completeness_style(state, *ratio)),
            Span::styled(
                format!(" {:>6} ", super::pct(*ratio)),
                completeness_style(state, *ratio),
            ),
            match worst {
                Some(w) => Span::styled(status.to_owned(), bucket_style(state, *w)),
                None => Span::raw(status.to_owned()),
            },
        ]));
    }
    frame.render_widget(Paragraph::new(lines), topics);

    // Groups, the furthest behind first, with their lag's trend.
    let behind = v
        .groups
        .iter()
        .filter(|g| g.status != GroupStatus::Ok)
        .count();
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("GROUPS {}", v.groups.len()), bold()),
        Span::raw(if wide { "  by lag (s)" } else { " by lag" }),
        Span::styled(
            if behind > 0 {
                format!("  {behind} not ok")
            } else {
                String::new()
            },
            fg(state, Color::Yellow).patch(bold()),
        ),
    ])];
    // The names first, as long as the longest (within reason); the trend
    // takes what is left.
    let room = usize::from(groups.width).saturating_sub(15);
    let longest = v
        .groups
        .iter()
        .take(rows)
        .map(|g| g.group.chars().count())
        .max()
        .unwrap_or(0);
    let name_width = longest.min(room.saturating_sub(TREND_MIN)).max(6);
    let trend_width = room.saturating_sub(name_width).min(TREND_MAX);
    for g in v.groups.iter().take(rows) {
        let (status, style) = if g.stale {
            ("stale", stale_style(state))
        } else {
            (g.status.as_str(), group_style(state, g.status))
        };
        let trend = state
            .lag_history
            .get(&g.key())
            .map(|h| sparkline(h.iter(), trend_width))
            .unwrap_or_default();
        lines.push(Line::from(vec![
            Span::styled(format!("{status:<5} "), style),
            Span::raw(format!(
                "{:<name_width$} {:>7} ",
                cut(&g.group, name_width),
                lag_seconds(g.max_lag_seconds)
            )),
            Span::styled(trend, fg(state, Color::Cyan)),
        ]));
    }
    frame.render_widget(Paragraph::new(lines), groups);

    if !wide {
        return;
    }
    // Alerts firing, then sources gone silent.
    let mut lines = vec![Line::from(vec![
        Span::styled(
            format!("FIRING {}", v.firing.len()),
            if v.firing.is_empty() {
                bold()
            } else {
                fg(state, Color::Red).patch(bold())
            },
        ),
        Span::styled(format!("  {} pending", v.pending), fg(state, Color::Yellow)),
    ])];
    let width = usize::from(alerts.width);
    for a in &v.firing {
        let about = a
            .labels
            .get("group")
            .or_else(|| a.labels.get("topic"))
            .map(String::as_str)
            .unwrap_or_default();
        lines.push(Line::from(Span::styled(
            cut(
                &format!("{} {about} {}", a.alertname, span(s.at_ms - a.since_ms)),
                width,
            ),
            if a.severity == "critical" {
                fg(state, Color::Red)
            } else {
                fg(state, Color::Yellow)
            },
        )));
    }
    for x in v.sources.iter().filter(|x| !x.connected) {
        lines.push(Line::from(Span::styled(
            cut(
                &format!("○ {} silent {}", x.source, span(s.at_ms - x.last_seen_ms)),
                width,
            ),
            fg(state, Color::DarkGray),
        )));
    }
    lines.truncate(rows + 1);
    frame.render_widget(Paragraph::new(lines), alerts);
}

/// Lag in seconds, short: 0.4s, 12s, 3m05s.
fn lag_seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1}s")
    } else {
        #[allow(clippy::cast_possible_truncation)]
        span((s * 1000.0) as i64)
    }
}

/// Records/s in and out, now and as sparklines over the last minutes.
fn flow_line(state: &State, cluster: &str, frame: &mut Frame<'_>, area: Rect) {
    let flow = state.flow.get(cluster);
    let half = usize::from(area.width / 2);
    let graph = half.saturating_sub(16);
    let part = |label: &'static str, history: Option<&std::collections::VecDeque<u64>>| {
        let now = history.and_then(|h| h.back().copied());
        let line = history
            .map(|h| sparkline(h.iter(), graph))
            .unwrap_or_default();
        vec![
            Span::styled(label, bold()),
            Span::raw(format!(
                "{:>9} ",
                now.map_or_else(|| "-".to_owned(), |n| format!("{}/s", short(n)))
            )),
            Span::styled(format!("{line:<graph$}"), fg(state, Color::Green)),
            Span::raw(" "),
        ]
    };
    let mut spans = part(" in ", flow.map(|f| &f.produced));
    spans.extend(part(" out", flow.map(|f| &f.consumed)));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// Records/s in and out as graphs of `area`'s height less a line of
/// figures: now, and the most over the samples shown.
fn flow_graphs(state: &State, cluster: &str, frame: &mut Frame<'_>, area: Rect) {
    let flow = state.flow.get(cluster);
    let halves = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
        .spacing(2)
        .split(area);
    for ((label, history), half) in [
        (" in ", flow.map(|f| &f.produced)),
        (" out", flow.map(|f| &f.consumed)),
    ]
    .into_iter()
    .zip(halves.iter())
    {
        let [figures, graph] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(*half);
        // Newest at the right edge.
        let shown: Vec<u64> = history
            .map(|h| {
                h.iter()
                    .rev()
                    .take(usize::from(graph.width))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        let now = shown.first().copied();
        let most = shown.iter().copied().max().unwrap_or(0);
        frame.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled(label, bold()),
                Span::raw(format!(
                    "{:>9}",
                    now.map_or_else(|| "-".to_owned(), |n| format!("{}/s", short(n)))
                )),
                Span::styled(
                    format!(
                        "   at most {}/s in the last {}",
                        short(most),
                        span(
                            i64::try_from(shown.len())
                                .unwrap_or(0)
                                .saturating_mul(state.feed_interval_ms)
                                .max(1000)
                        )
                    ),
                    fg(state, Color::DarkGray),
                ),
            ])),
            figures,
        );
        frame.render_widget(
            Sparkline::default()
                .data(&shown)
                .max(most.max(1))
                .direction(RenderDirection::RightToLeft)
                .style(fg(state, Color::Green)),
            graph,
        );
    }
}
