//! Overview: at a glance, whether the data is complete and the consumers healthy.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use tally_audit::GroupStatus;

use super::{bold, fg, group_style, span};
use crate::state::{State, topic_complete};

pub(super) fn render(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let Some(s) = state.shown() else { return };
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let [topics, groups] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    let [alerts, sources] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);

    let complete = s.topics.iter().filter(|t| topic_complete(t)).count();
    let incomplete = s.topics.len() - complete;
    let mut lines = vec![
        Line::from(vec![
            Span::styled(
                format!(" {complete:>6} "),
                fg(state, Color::Green).patch(bold()),
            ),
            Span::raw("complete"),
        ]),
        Line::from(vec![
            Span::styled(
                format!(" {incomplete:>6} "),
                if incomplete > 0 {
                    fg(state, Color::Red).patch(bold())
                } else {
                    fg(state, Color::Green)
                },
            ),
            Span::raw("incomplete"),
        ]),
    ];
    let mut worst: Vec<_> = s.topics.iter().filter(|t| !topic_complete(t)).collect();
    worst.sort_by_key(|t| std::cmp::Reverse(t.tiers.values().map(|b| b.missing).sum::<u64>()));
    for t in worst
        .iter()
        .take(usize::from(topics.height.saturating_sub(4)))
    {
        let missing: u64 = t.tiers.values().map(|b| b.missing).sum();
        lines.push(Line::from(format!("   {} ({missing} missing)", t.topic)));
    }
    frame.render_widget(
        Paragraph::new(lines).block(block(format!(" Topics ({}) ", s.topics.len()))),
        topics,
    );

    let mut lines = Vec::new();
    for status in GroupStatus::ALL {
        let n = s.groups.iter().filter(|g| g.status == status).count();
        lines.push(Line::from(vec![
            Span::styled(format!(" {n:>6} "), group_style(state, status)),
            Span::raw(status.as_str().to_owned()),
        ]));
    }
    let mut bad: Vec<_> = s
        .groups
        .iter()
        .filter(|g| g.status != GroupStatus::Ok)
        .collect();
    bad.sort_by(|a, b| b.status.cmp(&a.status).then(a.group.cmp(&b.group)));
    for g in bad
        .iter()
        .take(usize::from(groups.height.saturating_sub(5)))
    {
        lines.push(Line::from(vec![
            Span::raw("   "),
            Span::styled(g.status.as_str().to_owned(), group_style(state, g.status)),
            Span::raw(format!(
                " {} (lag {}, {:.1}s)",
                g.group, g.lag_records, g.max_lag_seconds
            )),
        ]));
    }
    frame.render_widget(
        Paragraph::new(lines).block(block(format!(" Groups ({}) ", s.groups.len()))),
        groups,
    );

    let firing = s.alerts.iter().filter(|a| a.state == "firing").count();
    let pending = s.alerts.iter().filter(|a| a.state == "pending").count();
    let mut lines = vec![Line::from(vec![
        Span::styled(
            format!(" {firing:>6} "),
            if firing > 0 {
                fg(state, Color::Red).patch(bold())
            } else {
                fg(state, Color::Green)
            },
        ),
        Span::raw("firing"),
        Span::styled(format!("  {pending} "), fg(state, Color::Yellow)),
        Span::raw("pending"),
    ])];
    for a in s
        .alerts
        .iter()
        .filter(|a| a.state == "firing")
        .take(usize::from(alerts.height.saturating_sub(3)))
    {
        lines.push(Line::from(format!(
            "   [{}] {} since {}",
            a.severity,
            a.alertname,
            span(s.at_ms - a.since_ms)
        )));
    }
    frame.render_widget(
        Paragraph::new(lines).block(block(" Alerts ".to_owned())),
        alerts,
    );

    let connected = s.sources.iter().filter(|x| x.connected).count();
    let mut lines = vec![Line::from(vec![
        Span::styled(format!(" {connected:>6} "), fg(state, Color::Green)),
        Span::raw(format!("connected of {}", s.sources.len())),
    ])];
    for x in s
        .sources
        .iter()
        .take(usize::from(sources.height.saturating_sub(3)))
    {
        lines.push(Line::from(format!(
            "   {} {} seen {} ago",
            if x.connected { "●" } else { "○" },
            x.source,
            span(s.at_ms - x.last_seen_ms)
        )));
    }
    frame.render_widget(
        Paragraph::new(lines).block(block(" Sources ".to_owned())),
        sources,
    );
}

fn block(title: String) -> Block<'static> {
    Block::default().borders(Borders::ALL).title(title)
}
