//! Groups: lag in records and seconds, status, and the lag's recent
//! history; Enter shows the partitions.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Cell, Clear};
use tally_audit::feed::Keyed;

use super::topics::position;
use super::{
    Column, centered, cluster_cell, col, group_style, partition_style, span, sparkline, table,
    window, with_cluster,
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

const PARTITION_COLUMNS: [Column; 9] = [
    col("TOPIC", 12, true, 0),
    col("PART", 5, false, 0),
    col("STATUS", 7, false, 0),
    col("COMMITTED", 10, false, 3),
    col("END", 10, false, 4),
    col("START", 10, false, 5),
    col("LAG", 8, false, 0),
    col("LAG (s)", 8, false, 1),
    col("COMMIT", 12, false, 2),
];

pub(super) fn render(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let Some(s) = state.shown() else { return };
    let rows = &state.rows.groups;
    let cursor = state.selected();
    let columns = with_cluster(state, &COLUMNS);
    let (kept, shown) = window(rows, cursor, &columns, area);
    let visible = shown.map(|(selected, &g)| {
        let g = &s.groups[g];
        let history = state
            .lag_history
            .get(&g.key())
            .map(|h| sparkline(h.iter(), usize::from(HISTORY)))
            .unwrap_or_default();
        let cells = vec![
            Cell::from(g.group.clone()),
            Cell::from(Span::styled(
                g.status.as_str(),
                group_style(state, g.status),
            )),
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
        let rows = shown.map(|(selected, p)| {
            let cells = vec![
                Cell::from(p.topic.clone()),
                Cell::from(p.partition.to_string()),
                Cell::from(Span::styled(
                    p.status.as_str(),
                    partition_style(state, p.status),
                )),
                Cell::from(p.committed.to_string()),
                Cell::from(p.end_offset.to_string()),
                Cell::from(p.start_offset.to_string()),
                Cell::from(p.lag_records.to_string()),
                Cell::from(format!("{:.1}", p.lag_seconds)),
                Cell::from(if p.commit_at_ms < 0 {
                    "never".to_owned()
                } else {
                    format!("{} ago", span(s.at_ms - p.commit_at_ms))
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
