//! Groups: lag in records and seconds, status, and the lag's recent
//! history; Enter shows the partitions.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier};
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Cell, Clear};
use tally_audit::feed::Keyed;

use super::topics::position;
use super::{
    Column, centered, cluster_cell, col, cut, fg, group_style, partition_style, sized, span,
    sparkline, stale_style, table, window, with_cluster,
};
use crate::state::State;

const HISTORY: u16 = 30;

const COLUMNS: [Column; 6] = [
    col("GROUP", 14, true, 0),
    col("STATUS", 6, false, 0),
    col("LAG", 10, false, 0),
    col("LAG (s)", 9, false, 1),
    col("PARTS", 5, false, 3),
    col("LAG HISTORY", HISTORY, false, 2),
];

const PARTITION_COLUMNS: [Column; 10] = [
    col("TOPIC", 12, true, 0),
    col("PART", 5, false, 0),
    col("STATUS", 12, false, 0),
    col("COMMITTED", 10, false, 3),
    col("END", 10, false, 4),
    col("START", 10, false, 5),
    col("LAG", 8, false, 0),
    col("LAG (s)", 8, false, 1),
    col("COMMIT", 12, false, 2),
    col("IN SYNC", 13, false, 3),
];

pub(super) fn render(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let Some(s) = state.shown() else { return };
    let rows = &state.rows.groups;
    let cursor = state.selected();
    let mut columns = with_cluster(state, &COLUMNS);
    let group_width = sized(&mut columns, 0, state.rows.widths.group, 40);
    let (kept, shown) = window(rows, cursor, &columns, area);
    let visible = shown.map(|(selected, &g)| {
        let g = &s.groups[g];
        let history = state
            .lag_history
            .get(&g.key())
            .map(|h| sparkline(h.iter(), usize::from(HISTORY)))
            .unwrap_or_default();
        let cells = vec![
            Cell::from(cut(&g.group, group_width)),
            // Lag no source refreshed is never shown as current.
            Cell::from(if g.stale {
                Span::styled("stale", stale_style(state))
            } else {
                Span::styled(g.status.as_str(), group_style(state, g.status))
            }),
            Cell::from(g.lag_records.to_string()),
            Cell::from(format!("{:.1}", g.max_lag_seconds)),
            Cell::from(g.partitions.len().to_string()),
            Cell::from(history),
            cluster_cell(&g.cluster),
        ];
        (cells, selected)
    });
    let table_widget =
        table(&columns, &kept, visible).block(Block::default().borders(Borders::ALL).title(
            format!(" Groups: {}{} ", rows.len(), position(cursor, rows.len())),
        ));
    frame.render_widget(table_widget, area);
    if let Some((g, cursor)) = state.drilled_group() {
        let inner = area.height.saturating_sub(2);
        let popup = centered(area, area.width.saturating_sub(4), inner);
        let (kept, shown) = window(&g.partitions, cursor, &PARTITION_COLUMNS, popup);
        // The cluster's metadata, as its collector last read it.
        let metadata: std::collections::HashMap<&str, &tally_audit::wire::TopicMetadata> = s
            .clusters
            .iter()
            .filter(|c| c.cluster == g.cluster)
            .max_by_key(|c| c.received_ms)
            .map(|c| c.topics.iter().map(|t| (t.topic.as_str(), t)).collect())
            .unwrap_or_default();
        let rows = shown.map(|(selected, p)| {
            let replicas = metadata
                .get(p.topic.as_str())
                .and_then(|t| t.partitions.iter().find(|m| m.partition == p.partition));
            let cells = vec![
                Cell::from(p.topic.clone()),
                Cell::from(p.partition.to_string()),
                Cell::from(if p.stale {
                    Span::styled(format!("stale ({})", p.status.as_str()), stale_style(state))
                } else {
                    Span::styled(p.status.as_str(), partition_style(state, p.status))
                }),
                Cell::from(p.committed.to_string()),
                Cell::from(p.end_offset.to_string()),
                Cell::from(p.start_offset.to_string()),
                Cell::from(p.lag_records.to_string()),
                // `~`: the collector estimated the seconds (the record at the
                // committed offset could not be read).
                Cell::from(format!(
                    "{}{:.1}",
                    if p.estimated { "~" } else { "" },
                    p.lag_seconds
                )),
                Cell::from(if p.commit_at_ms < 0 {
                    "never".to_owned()
                } else {
                    format!("{} ago", span(s.at_ms - p.commit_at_ms))
                }),
                Cell::from(match replicas {
                    None => Span::raw("-"),
                    Some(m) if m.is_offline() => Span::styled(
                        "offline",
                        fg(state, Color::Red).add_modifier(Modifier::BOLD),
                    ),
                    Some(m) if m.is_under_replicated() => Span::styled(
                        format!("{}/{} under", m.in_sync_replicas, m.replicas),
                        fg(state, Color::Yellow).add_modifier(Modifier::BOLD),
                    ),
                    Some(m) => Span::raw(format!("{}/{}", m.in_sync_replicas, m.replicas)),
                }),
            ];
            (cells, selected)
        });
        frame.render_widget(Clear, popup);
        frame.render_widget(
            table(&PARTITION_COLUMNS, &kept, rows).block(
                Block::default().borders(Borders::ALL).title(format!(
                    " {}: {} partitions, status {} (Esc back) ",
                    if state.rows.clusters.len() > 1 {
                        format!("{}/{}", g.cluster, g.group)
                    } else {
                        g.group.clone()
                    },
                    g.partitions.len(),
                    g.status
                )),
            ),
            popup,
        );
    }
}
