//! Groups: lag in records and seconds, status, and the lag's recent
//! history; Enter shows the partitions.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Cell, Clear, Row, Table};
use tally_audit::feed::Keyed;

use super::topics::position;
use super::{bold, centered, group_style, partition_style, scroll, selected, span, sparkline};
use crate::state::State;

const HISTORY: usize = 30;

pub(super) fn render(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let Some(s) = state.shown() else { return };
    let rows = &state.rows.groups;
    let height = usize::from(area.height.saturating_sub(3));
    let cursor = state.selected();
    let first = scroll(cursor, rows.len(), height);
    let visible = rows
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .map(|(i, &g)| {
            let g = &s.groups[g];
            let history = state
                .lag_history
                .get(&g.key())
                .map(|h| sparkline(h.iter(), HISTORY))
                .unwrap_or_default();
            let row = Row::new([
                Cell::from(g.group.clone()),
                Cell::from(Span::styled(
                    g.status.as_str(),
                    group_style(state, g.status),
                )),
                Cell::from(g.lag_records.to_string()),
                Cell::from(format!("{:.1}", g.max_lag_seconds)),
                Cell::from(g.partitions.len().to_string()),
                Cell::from(history),
            ]);
            if i == cursor {
                row.style(selected())
            } else {
                row
            }
        });
    let table = Table::new(
        visible,
        [
            Constraint::Fill(2),
            Constraint::Length(6),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(5),
            Constraint::Length(u16::try_from(HISTORY).unwrap_or(30)),
        ],
    )
    .header(Row::new(["GROUP", "STATUS", "LAG", "LAG (s)", "PARTS", "LAG HISTORY"]).style(bold()))
    .block(Block::default().borders(Borders::ALL).title(format!(
        " Groups: {}{} ",
        rows.len(),
        position(cursor, rows.len())
    )));
    frame.render_widget(table, area);
    if let Some((g, cursor)) = state.drilled_group() {
        let inner = area.height.saturating_sub(2);
        let popup = centered(area, area.width.saturating_sub(4), inner);
        let height = usize::from(popup.height.saturating_sub(3));
        let first = scroll(cursor, g.partitions.len(), height);
        let rows = g
            .partitions
            .iter()
            .enumerate()
            .skip(first)
            .take(height)
            .map(|(i, p)| {
                let row = Row::new([
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
                ]);
                if i == cursor {
                    row.style(selected())
                } else {
                    row
                }
            });
        frame.render_widget(Clear, popup);
        frame.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Fill(2),
                    Constraint::Length(5),
                    Constraint::Length(7),
                    Constraint::Length(10),
                    Constraint::Length(10),
                    Constraint::Length(10),
                    Constraint::Length(8),
                    Constraint::Length(8),
                    Constraint::Length(12),
                ],
            )
            .header(
                Row::new([
                    "TOPIC",
                    "PART",
                    "STATUS",
                    "COMMITTED",
                    "END",
                    "START",
                    "LAG",
                    "LAG (s)",
                    "COMMIT",
                ])
                .style(bold()),
            )
            .block(Block::default().borders(Borders::ALL).title(format!(
                " {}: {} partitions, status {} (Esc back) ",
                g.group,
                g.partitions.len(),
                g.status
            ))),
            popup,
        );
    }
}
