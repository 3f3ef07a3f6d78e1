//! Alerts: firing and pending (and recently resolved), with since and severity.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Cell};

use super::topics::position;
use super::{Column, bold, cluster_cell, col, cut, fg, sized, span, table, window, with_cluster};
use crate::state::State;

const COLUMNS: [Column; 7] = [
    col("STATE", 9, false, 0),
    col("SEVERITY", 9, false, 2),
    col("ALERT", 14, true, 0),
    col("LABELS", 16, true, 3),
    col("SINCE", 8, false, 0),
    col("VALUE", 9, false, 4),
    col("SUMMARY", 16, true, 5),
];

pub(super) fn render(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let Some(s) = state.shown() else { return };
    let rows = &state.rows.alerts;
    let cursor = state.selected();
    let mut columns = with_cluster(state, &COLUMNS);
    let name_width = sized(&mut columns, 2, state.rows.widths.alert, 32);
    let (kept, shown) = window(rows, cursor, &columns, area);
    let visible = shown.map(|(selected, &a)| {
        let a = &s.alerts[a];
        let state_style = match a.state.as_str() {
            "firing" => fg(state, Color::Red).patch(bold()),
            "pending" => fg(state, Color::Yellow),
            _ => fg(state, Color::Green),
        };
        let severity_style = match a.severity.as_str() {
            "critical" | "page" | "error" => fg(state, Color::Red).patch(bold()),
            "warning" | "warn" => fg(state, Color::Yellow),
            _ => fg(state, Color::Reset),
        };
        let labels = a
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "alertname")
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let cells = vec![
            Cell::from(Span::styled(a.state.clone(), state_style)),
            Cell::from(Span::styled(a.severity.clone(), severity_style)),
            Cell::from(cut(&a.alertname, name_width)),
            Cell::from(labels),
            Cell::from(span(s.at_ms - a.since_ms)),
            Cell::from(format!("{}", a.value)),
            Cell::from(a.annotations.get("summary").cloned().unwrap_or_default()),
            cluster_cell(a.labels.get("cluster").map_or("", String::as_str)),
        ];
        (cells, selected)
    });
    let firing = s.alerts.iter().filter(|a| a.state == "firing").count();
    let pending = s.alerts.iter().filter(|a| a.state == "pending").count();
    let widget = table(&columns, &kept, visible).block(
        Block::default().borders(Borders::ALL).title(format!(
            " Alerts: {firing} firing, {pending} pending{} ",
            position(cursor, rows.len())
        )),
    );
    frame.render_widget(widget, area);
}
