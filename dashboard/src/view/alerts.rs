//! Alerts: firing and pending (and recently resolved), with since and severity.

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
    let rows = &state.rows.alerts;
    let height = usize::from(area.height.saturating_sub(3));
    let cursor = state.selected();
    let first = scroll(cursor, rows.len(), height);
    let visible = rows
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .map(|(i, &a)| {
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
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            let row = Row::new([
                Cell::from(Span::styled(a.state.clone(), state_style)),
                Cell::from(Span::styled(a.severity.clone(), severity_style)),
                Cell::from(a.alertname.clone()),
                Cell::from(labels),
                Cell::from(span(s.at_ms - a.since_ms)),
                Cell::from(format!("{}", a.value)),
                Cell::from(a.annotations.get("summary").cloned().unwrap_or_default()),
            ]);
            if i == cursor {
                row.style(selected())
            } else {
                row
            }
        });
    let firing = s.alerts.iter().filter(|a| a.state == "firing").count();
    let pending = s.alerts.iter().filter(|a| a.state == "pending").count();
    let table = Table::new(
        visible,
        [
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Fill(2),
            Constraint::Fill(3),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Fill(3),
        ],
    )
    .header(
        Row::new([
            "STATE", "SEVERITY", "ALERT", "LABELS", "SINCE", "VALUE", "SUMMARY",
        ])
        .style(bold()),
    )
    .block(Block::default().borders(Borders::ALL).title(format!(
        " Alerts: {firing} firing, {pending} pending{} ",
        position(cursor, rows.len())
    )));
    frame.render_widget(table, area);
}
