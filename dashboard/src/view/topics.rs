//! Topics: per topic and tier, the books and the completeness.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell};

use super::{
    Column, bucket_style, cluster_cell, col, completeness_style, cut, opt, pct, sized, span, table,
    window, with_cluster,
};
use crate::state::State;

const COLUMNS: [Column; 11] = [
    col("TOPIC", 12, true, 0),
    col("TIER", 14, true, 0),
    col("PRODUCED", 10, false, 3),
    col("CONSUMED", 10, false, 1),
    col("PENDING", 8, false, 2),
    col("EXPIRED", 8, false, 4),
    col("SKIPPED", 8, false, 4),
    col("MISSING", 8, false, 5),
    col("COMPLETE", 8, false, 0),
    col("WORST", 10, false, 6),
    col("BEHIND", 8, false, 7),
];

pub(super) fn render(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let rows = &state.rows.topics;
    let cursor = state.selected();
    let mut columns = with_cluster(state, &COLUMNS);
    let topic_width = sized(&mut columns, 0, state.rows.widths.topic, 40);
    let tier_width = sized(&mut columns, 1, state.rows.widths.tier, 32);
    let (kept, shown) = window(rows, cursor, &columns, area);
    let visible = shown.map(|(selected, r)| {
        let cells = vec![
            Cell::from(cut(&r.topic, topic_width)),
            Cell::from(cut(&r.tier, tier_width)),
            Cell::from(r.produced.to_string()),
            Cell::from(r.consumed.to_string()),
            Cell::from(opt(r.pending)),
            Cell::from(opt(r.expired)),
            Cell::from(opt(r.skipped)),
            Cell::from(r.missing.to_string()),
            Cell::from(Span::styled(
                pct(r.completeness),
                completeness_style(state, r.completeness),
            )),
            Cell::from(r.worst.map_or_else(
                || Span::raw("-"),
                |w| Span::styled(w.as_str(), bucket_style(state, w)),
            )),
            // A mirror's lag behind its source.
            Cell::from(r.mirror_lag_seconds.map_or_else(
                || "-".to_owned(),
                |secs| {
                    #[allow(clippy::cast_possible_truncation)]
                    span((secs * 1000.0) as i64)
                },
            )),
            cluster_cell(&r.cluster),
        ];
        (cells, selected)
    });
    let table =
        table(&columns, &kept, visible).block(Block::default().borders(Borders::ALL).title(
            Line::from(format!(
                " Topics × tiers: {} rows{} ",
                rows.len(),
                position(cursor, rows.len())
            )),
        ));
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
