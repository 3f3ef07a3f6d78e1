//! Topics: per topic and tier, the books and the completeness.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Row, Table};

use super::{bold, bucket_style, completeness_style, opt, pct, scroll, selected};
use crate::state::State;

pub(super) fn render(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let rows = &state.rows.topics;
    let height = usize::from(area.height.saturating_sub(3));
    let cursor = state.selected();
    let first = scroll(cursor, rows.len(), height);
    let visible = rows
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .map(|(i, r)| {
            let row = Row::new([
                Cell::from(r.topic.clone()),
                Cell::from(r.tier.clone()),
                Cell::from(r.produced.to_string()),
                Cell::from(r.consumed.to_string()),
                Cell::from(opt(r.pending)),
                Cell::from(opt(r.expired)),
                Cell::from(r.missing.to_string()),
                Cell::from(Span::styled(
                    pct(r.completeness),
                    completeness_style(state, r.completeness),
                )),
                Cell::from(r.worst.map_or_else(
                    || Span::raw("-"),
                    |w| Span::styled(w.as_str(), bucket_style(state, w)),
                )),
            ]);
            if i == cursor {
                row.style(selected())
            } else {
                row
            }
        });
    let header = Row::new([
        "TOPIC", "TIER", "PRODUCED", "CONSUMED", "PENDING", "EXPIRED", "MISSING", "COMPLETE",
        "WORST",
    ])
    .style(bold());
    let table = Table::new(
        visible,
        [
            Constraint::Fill(3),
            Constraint::Fill(2),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(10),
        ],
    )
    .header(header)
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(Line::from(format!(
                " Topics × tiers: {} rows{} ",
                rows.len(),
                position(cursor, rows.len())
            ))),
    );
    frame.render_widget(table, area);
}

/// ` (row 3 of 10)`, or nothing when there are no rows.
pub(super) fn position(cursor: usize, len: usize) -> String {
    if len == 0 {
        String::new()
    } else {
        format!(", row {} of {len}", cursor + 1)
    }
}
