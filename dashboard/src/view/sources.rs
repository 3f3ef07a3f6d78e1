//! Sources: the emitters, and when each was last seen.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Cell};

use super::topics::position;
use super::{Column, col, cut, fg, sized, span, table, window};
use crate::state::State;

const COLUMNS: [Column; 7] = [
    col("SOURCE", 14, true, 0),
    col("CLUSTER", 10, false, 3),
    col("TIERS", 14, false, 4),
    col("CONNECTED", 9, false, 0),
    col("LAST SEEN", 12, false, 0),
    col("MESSAGES", 16, true, 2),
    col("ERRORS", 7, false, 1),
];

pub(super) fn render(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let Some(s) = state.shown() else { return };
    let rows = &state.rows.sources;
    let cursor = state.selected();
    let mut columns = COLUMNS;
    let source_width = sized(&mut columns, 0, state.rows.widths.source, 40);
    let (kept, shown) = window(rows, cursor, &columns, area);
    let visible = shown.map(|(selected, &x)| {
        let x = &s.sources[x];
        let messages = x
            .messages
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let cells = vec![
            Cell::from(cut(&x.source, source_width)),
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
        ];
        (cells, selected)
    });
    let widget =
        table(&columns, &kept, visible).block(Block::default().borders(Borders::ALL).title(
            format!(" Sources: {}{} ", rows.len(), position(cursor, rows.len())),
        ));
    frame.render_widget(widget, area);
}
