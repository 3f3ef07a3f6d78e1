//! Sources: the emitters, and when each was last seen.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Color;
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Cell, Row, Table};

use super::topics::position;
use super::{bold, fg, scroll, selected, span};
use crate::state::State;

pub(super) fn render(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let Some(s) = state.shown() else { return };
    let rows = &state.rows.sources;
    let height = usize::from(area.height.saturating_sub(3));
    let cursor = state.selected();
    let first = scroll(cursor, rows.len(), height);
    let visible = rows
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .map(|(i, &x)| {
            let x = &s.sources[x];
            let messages = x
                .messages
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ");
            let row = Row::new([
                Cell::from(x.source.clone()),
                Cell::from(x.cluster.clone()),
                Cell::from(x.tier_kinds.join(",")),
                Cell::from(if x.connected {
                    Span::styled("● yes", fg(state, Color::Green))
                } else {
                    Span::styled("○ no", fg(state, Color::Yellow))
                }),
                Cell::from(format!("{} ago", span(s.at_ms - x.last_seen_ms))),
                Cell::from(messages),
                Cell::from(Span::styled(
                    x.errors.to_string(),
                    if x.errors > 0 {
                        fg(state, Color::Red)
                    } else {
                        fg(state, Color::Reset)
                    },
                )),
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
            Constraint::Length(10),
            Constraint::Length(14),
            Constraint::Length(9),
            Constraint::Length(12),
            Constraint::Fill(3),
            Constraint::Length(7),
        ],
    )
    .header(
        Row::new([
            "SOURCE",
            "CLUSTER",
            "TIERS",
            "CONNECTED",
            "LAST SEEN",
            "MESSAGES",
            "ERRORS",
        ])
        .style(bold()),
    )
    .block(Block::default().borders(Borders::ALL).title(format!(
        " Sources: {}{} ",
        rows.len(),
        position(cursor, rows.len())
    )));
    frame.render_widget(table, area);
}
