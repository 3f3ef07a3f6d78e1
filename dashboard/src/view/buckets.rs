//! Buckets: a heatmap of topics by recent buckets, each cell the worst
//! status of the bucket's tiers; Enter shows the counts per tier.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table};
use tally_audit::BucketStatus;
use tally_audit::feed::Keyed;
use tally_audit::snapshot::{BucketBooks, TopicBuckets};

use super::{MAX_BUCKET_COLUMNS, bold, bucket_style, centered, clock, opt, scroll, selected};
use crate::state::{Drill, State};

const LABEL: usize = 24;

/// The glyph of a status: a coloured block, or a letter in monochrome.
fn glyph(state: &State, s: BucketStatus) -> &'static str {
    if state.color {
        return "■";
    }
    match s {
        BucketStatus::Complete => "=",
        BucketStatus::Late => "L",
        BucketStatus::Open => ".",
        BucketStatus::Pending => "p",
        BucketStatus::Excess => "+",
        BucketStatus::Incomplete => "X",
    }
}

fn find(t: &TopicBuckets, bucket: i64) -> Option<&BucketBooks> {
    t.buckets
        .binary_search_by_key(&bucket, |b| b.bucket)
        .ok()
        .map(|i| &t.buckets[i])
        .or_else(|| t.buckets.iter().find(|b| b.bucket == bucket))
}

fn worst(b: &BucketBooks) -> Option<BucketStatus> {
    b.tiers
        .values()
        .map(|t| t.status)
        .max_by_key(|s| s.severity())
}

pub(super) fn render(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let Some(s) = state.shown() else { return };
    let inner_width = usize::from(area.width.saturating_sub(2));
    let columns = (inner_width.saturating_sub(LABEL + 1) / 2).clamp(1, MAX_BUCKET_COLUMNS);
    let mut starts = state.recent_buckets(columns);
    starts.reverse();
    let col = state.bucket_col.min(columns - 1);
    let selected_bucket = starts.len().checked_sub(col + 1).map(|i| starts[i]);
    let rows = &state.rows.buckets;
    let height = usize::from(area.height.saturating_sub(4));
    let cursor = state.selected();
    let first = scroll(cursor, rows.len(), height);

    let mut lines = Vec::with_capacity(height + 2);
    let mut legend = vec![Span::raw(" ")];
    for st in BucketStatus::ALL {
        legend.push(Span::styled(glyph(state, st), bucket_style(state, st)));
        legend.push(Span::raw(format!(" {st}  ")));
    }
    lines.push(Line::from(legend));
    // With more than one cluster, each label names the cluster too.
    let clustered = state.rows.clusters.len() > 1;
    lines.push(Line::from(format!(
        "{:<LABEL$} {}",
        if clustered {
            " CLUSTER/TOPIC"
        } else {
            " TOPIC"
        },
        selected_bucket.map_or_else(String::new, |b| format!(
            "← older   selected bucket {} UTC   newer →",
            clock(b)
        ))
    )));
    for (i, &t) in rows.iter().enumerate().skip(first).take(height) {
        let topic = &s.buckets[t];
        let label = if clustered {
            // The cluster gets at most half the label, so the topic shows.
            format!(
                "{}/{}",
                super::cut(&topic.cluster, LABEL / 2 - 1),
                topic.topic
            )
        } else {
            topic.topic.clone()
        };
        let name = format!(" {}", super::cut(&label, LABEL - 2));
        let mut spans = vec![Span::styled(
            format!("{name:<LABEL$} "),
            if i == cursor { selected() } else { bold() },
        )];
        for (c, &b) in starts.iter().enumerate() {
            let is_cell = i == cursor && starts.len() - 1 - c == col;
            let (text, mut style) = match find(topic, b).and_then(worst) {
                Some(st) => (glyph(state, st), bucket_style(state, st)),
                None => (" ", ratatui::style::Style::default()),
            };
            if is_cell {
                style = style.patch(selected());
            }
            spans.push(Span::styled(text, style));
            spans.push(Span::raw(" "));
        }
        lines.push(Line::from(spans));
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(format!(
            " Buckets: {} topics × last {} buckets of {} ms ",
            rows.len(),
            columns,
            s.width_ms
        ))),
        area,
    );
    if let Some(Drill::Bucket { topic, bucket }) = &state.drill {
        detail(state, frame, area, topic, *bucket);
    }
}

fn detail(
    state: &State,
    frame: &mut Frame<'_>,
    area: Rect,
    key: &tally_audit::feed::TopicKey,
    bucket: i64,
) {
    let Some(s) = state.shown() else { return };
    let books = s
        .buckets
        .iter()
        .find(|t| t.key() == *key)
        .and_then(|t| find(t, bucket));
    let rows: Vec<Row<'_>> = books
        .map(|b| {
            b.tiers
                .iter()
                .map(|(tier, t)| {
                    Row::new([
                        Cell::from(tier.clone()),
                        Cell::from(t.records.to_string()),
                        Cell::from(Span::styled(
                            t.status.as_str(),
                            bucket_style(state, t.status),
                        )),
                        Cell::from(t.missing.to_string()),
                        Cell::from(t.excess.to_string()),
                        Cell::from(opt(t.pending)),
                        Cell::from(opt(t.expired)),
                        Cell::from(opt(t.skipped)),
                    ])
                })
                .collect()
        })
        .unwrap_or_default();
    let n = rows.len();
    let popup = centered(area, 96, u16::try_from(n + 4).unwrap_or(u16::MAX).max(5));
    frame.render_widget(Clear, popup);
    // Named whole, with its cluster where there is more than one.
    let name = if state.rows.clusters.len() > 1 {
        format!("{}/{}", key.cluster, key.topic)
    } else {
        key.topic.clone()
    };
    let title = format!(
        " {name} / bucket {} UTC{} (Esc back) ",
        clock(bucket),
        if books.is_none() { ": no counts" } else { "" }
    );
    let table = Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Length(11),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new([
            "TIER", "RECORDS", "STATUS", "MISSING", "EXCESS", "PENDING", "EXPIRED", "SKIPPED",
        ])
        .style(bold()),
    )
    .block(Block::default().borders(Borders::ALL).title(title));
    frame.render_widget(table, popup);
}
