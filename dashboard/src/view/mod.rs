//! Drawing: pure functions of the [`State`], one module per tab. Tables draw
//! only the rows that fit on screen, so a frame costs the same with ten
//! rows or ten thousand.

mod alerts;
mod buckets;
mod groups;
mod overview;
mod sources;
mod topics;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Tabs, Wrap};
use tally_audit::{BucketStatus, GroupStatus, PartitionStatus};

use crate::state::{Link, State, Tab};

/// Below this many columns the dashboard says the terminal is too small.
pub const MIN_WIDTH: u16 = 60;
/// Below this many rows the dashboard says the terminal is too small.
pub const MIN_HEIGHT: u16 = 12;
/// The most bucket columns the heatmap shows.
pub const MAX_BUCKET_COLUMNS: usize = 120;

/// Draws the whole screen.
pub fn render(state: &State, frame: &mut Frame<'_>) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        too_small(frame, area);
        return;
    }
    let [header, tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_line(state)), header);
    frame.render_widget(tab_bar(state), tabs);
    match state.shown() {
        None => waiting(state, frame, body),
        Some(_) => match state.tab {
            Tab::Overview => overview::render(state, frame, body),
            Tab::Topics => topics::render(state, frame, body),
            Tab::Buckets => buckets::render(state, frame, body),
            Tab::Groups => groups::render(state, frame, body),
            Tab::Alerts => alerts::render(state, frame, body),
            Tab::Sources => sources::render(state, frame, body),
        },
    }
    frame.render_widget(Paragraph::new(footer_line(state)), footer);
    if state.help {
        help(state, frame, body);
    }
}

fn too_small(frame: &mut Frame<'_>, area: Rect) {
    let text = format!(
        "Terminal too small: {}x{}. The dashboard needs at least {MIN_WIDTH}x{MIN_HEIGHT}; enlarge the window (q quits).",
        area.width, area.height
    );
    frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
}

fn waiting(state: &State, frame: &mut Frame<'_>, area: Rect) {
    let text = match &state.link {
        Link::Connected if state.receiving() => {
            "Connected; receiving the first snapshot (it comes in parts)…".to_owned()
        }
        Link::Connected => "Connected; waiting for the first snapshot…".to_owned(),
        Link::Connecting { .. } => format!("Connecting to {}…", state.agent),
        Link::Disconnected { error, .. } => {
            format!("No data yet: {error}. Retrying; is the agent running?")
        }
    };
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL)),
        area,
    );
}

/// A style with colour `c`, or plain where colour is off.
pub(crate) fn fg(state: &State, c: Color) -> Style {
    if state.color {
        Style::default().fg(c)
    } else {
        Style::default()
    }
}

/// Emphasis that reads in monochrome too.
pub(crate) fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

/// The selected row.
pub(crate) fn selected() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

/// The colour of a bucket status (16-colour palette).
pub(crate) fn bucket_color(s: BucketStatus) -> Color {
    match s {
        BucketStatus::Complete => Color::Green,
        BucketStatus::Late => Color::Cyan,
        BucketStatus::Open => Color::Blue,
        BucketStatus::Pending => Color::Yellow,
        BucketStatus::Excess => Color::Magenta,
        BucketStatus::Incomplete => Color::Red,
    }
}

/// A bucket status's style: bold where it means records are missing or
/// doubled, so that monochrome screens show it too.
pub(crate) fn bucket_style(state: &State, s: BucketStatus) -> Style {
    let st = fg(state, bucket_color(s));
    if matches!(s, BucketStatus::Incomplete | BucketStatus::Excess) {
        st.add_modifier(Modifier::BOLD)
    } else {
        st
    }
}

/// A group status's style.
pub(crate) fn group_style(state: &State, s: GroupStatus) -> Style {
    match s {
        GroupStatus::Ok => fg(state, Color::Green),
        GroupStatus::Warn => fg(state, Color::Yellow).add_modifier(Modifier::BOLD),
        GroupStatus::Err => fg(state, Color::Red).add_modifier(Modifier::BOLD),
    }
}

/// Lag that no source refreshed for three of its intervals: dim, so that it
/// does not read as current.
pub(crate) fn stale_style(state: &State) -> Style {
    fg(state, Color::DarkGray).add_modifier(Modifier::ITALIC)
}

/// A partition status's style.
pub(crate) fn partition_style(state: &State, s: PartitionStatus) -> Style {
    group_style(state, s.into())
}

/// The style of a completeness ratio: whole is green, a little short
/// yellow, more red.
pub(crate) fn completeness_style(state: &State, ratio: f64) -> Style {
    if ratio >= 1.0 {
        fg(state, Color::Green)
    } else if ratio >= 0.99 {
        fg(state, Color::Yellow)
    } else {
        fg(state, Color::Red).add_modifier(Modifier::BOLD)
    }
}

/// The first visible row: keeps `cursor` on screen with `height` rows.
pub(crate) fn scroll(cursor: usize, len: usize, height: usize) -> usize {
    if height == 0 || len <= height {
        return 0;
    }
    cursor.saturating_sub(height - 1).min(len - height)
}

/// The part of a table that shows in `area` (a bordered block with a header
/// line): the columns that fit, and the rows from the one scrolled to, each
/// with its index and whether it is under the cursor.
pub(crate) fn window<'r, T>(
    rows: &'r [T],
    cursor: usize,
    columns: &[Column],
    area: Rect,
) -> (Vec<usize>, impl Iterator<Item = (bool, &'r T)>) {
    let height = usize::from(area.height.saturating_sub(3));
    let first = scroll(cursor, rows.len(), height);
    let kept = fit(columns, area.width.saturating_sub(2));
    let shown = rows
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .map(move |(i, row)| (i == cursor, row));
    (kept, shown)
}

/// A percentage with one decimal.
pub(crate) fn pct(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

/// An optional count, `-` when absent.
pub(crate) fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// A duration in ms as `45s`, `3m05s`, `2h04m` or `3d02h`.
pub(crate) fn span(ms: i64) -> String {
    if ms < 0 {
        return "-".to_owned();
    }
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Epoch ms as `HH:MM:SS` UTC.
pub(crate) fn clock(ms: i64) -> String {
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

/// Values as a line of block characters, scaled to their largest.
pub(crate) fn sparkline<'a>(
    values: impl ExactSizeIterator<Item = &'a u64>,
    width: usize,
) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let skip = values.len().saturating_sub(width);
    let values: Vec<u64> = values.skip(skip).copied().collect();
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| {
            let level = v.saturating_mul(7).checked_div(max).unwrap_or(0);
            BARS[usize::try_from(level).unwrap_or(7).min(7)]
        })
        .collect()
}

fn header_line(state: &State) -> Line<'static> {
    // What matters most comes first, so a narrow screen cuts the least useful.
    let mut spans = vec![Span::styled(" tally ", bold())];
    if state.stale() {
        spans.push(Span::styled(
            " STALE ",
            fg(state, Color::Red).add_modifier(Modifier::REVERSED | Modifier::BOLD),
        ));
        spans.push(Span::raw(" "));
    }
    if state.paused {
        spans.push(Span::styled(
            " PAUSED ",
            fg(state, Color::Yellow).add_modifier(Modifier::REVERSED),
        ));
        spans.push(Span::raw(" "));
    }
    if let Some(s) = state.shown() {
        spans.push(Span::raw(format!("data of {} UTC │ ", clock(s.at_ms))));
    }
    // Which clusters are on screen, where there is a choice.
    let clusters = state.rows.clusters.len();
    match &state.cluster {
        Some(c) => {
            spans.push(Span::styled(
                format!("cluster {} ", cut(c, CLUSTER_WIDTH)),
                bold(),
            ));
            spans.push(Span::raw(format!("(c: next of {clusters}) │ ")));
        }
        None if clusters > 1 => {
            spans.push(Span::raw(format!("all {clusters} clusters (c: one) │ ")));
        }
        None => {}
    }
    let (text, style) = match &state.link {
        Link::Connected => ("● connected".to_owned(), fg(state, Color::Green)),
        Link::Connecting { attempt } => (
            format!("◌ connecting (attempt {attempt})"),
            fg(state, Color::Yellow),
        ),
        Link::Disconnected { error, retry_at_ms } => (
            format!(
                "✕ disconnected, retry in {}: {error}",
                span((retry_at_ms - state.now_ms).max(0))
            ),
            fg(state, Color::Red).add_modifier(Modifier::BOLD),
        ),
    };
    spans.push(Span::styled(text, style));
    spans.push(Span::raw(format!(" │ {}", state.agent)));
    Line::from(spans)
}

fn tab_bar(state: &State) -> Tabs<'static> {
    let titles: Vec<Line<'static>> = Tab::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| Line::from(format!("{} {}", i + 1, t.title())))
        .collect();
    Tabs::new(titles)
        .select(state.tab.index())
        .highlight_style(selected().add_modifier(Modifier::BOLD))
        .divider("│")
}

fn footer_line(state: &State) -> Line<'static> {
    if state.editing_filter {
        return Line::from(vec![
            Span::styled(" filter: ", bold()),
            Span::raw(format!("{}▏", state.filter)),
            Span::raw("   (Enter keeps it, Esc clears it)"),
        ]);
    }
    let mut spans = Vec::new();
    if !state.filter.is_empty() {
        spans.push(Span::styled(
            format!(" filter \"{}\" ", state.filter),
            bold(),
        ));
        spans.push(Span::raw("│"));
    }
    spans.push(Span::raw(format!(" sort: {} │ ", state.sort.label())));
    spans.push(Span::raw(
        // Quitting and the help first: a narrow screen cuts the end.
        "q quit  ? help  Tab/1-6 views  ↑↓/jk move  Enter drill  Esc back  / filter  s sort  c cluster  p pause",
    ));
    Line::from(spans)
}

/// A rectangle of `w`×`h` in the middle of `area`.
pub(crate) fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn help(_state: &State, frame: &mut Frame<'_>, area: Rect) {
    let lines = [
        ("Tab, Shift-Tab", "next, previous view"),
        (
            "1 … 6",
            "Overview, Topics, Buckets, Groups, Alerts, Sources",
        ),
        ("↑ ↓  j k", "move; PgUp PgDn, g G (Home End) jump"),
        ("← →  h l", "older, newer bucket (Buckets)"),
        ("Enter", "drill in: a bucket's tiers, a group's partitions"),
        ("Esc", "back; clears the filter"),
        ("/", "filter by name (topic, tier, group, alert, source)"),
        ("s", "sort: name, worst first, largest first"),
        ("c", "cluster: all, then each one in turn"),
        ("p", "pause the screen (the feed keeps running)"),
        ("?", "this help"),
        ("q", "quit"),
    ];
    let text: Vec<Line<'static>> = lines
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!(" {k:<16}"), bold()),
                Span::raw((*v).to_owned()),
            ])
        })
        .collect();
    let popup = centered(area, 72, u16::try_from(lines.len() + 2).unwrap_or(13));
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" Keys ")),
        popup,
    );
}

/// A table column: its title, its narrowest width, whether it takes spare
/// room, how readily it is left out on a narrow screen (higher first), and
/// whether it is shown first whatever its place in the list.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Column {
    pub(crate) title: &'static str,
    pub(crate) min: u16,
    pub(crate) grow: bool,
    pub(crate) drop: u8,
    pub(crate) lead: bool,
}

/// Shorthand for a [`Column`].
pub(crate) const fn col(title: &'static str, min: u16, grow: bool, drop: u8) -> Column {
    Column {
        title,
        min,
        grow,
        drop,
        lead: false,
    }
}

/// Column `i` of `columns` sized to its data: as wide as the longest of
/// its values (`widest` characters), at least its title and at most `cap`
/// (longer values are cut with an ellipsis; the drill-in shows them
/// whole), and no wider however much room the screen has. Returns the width.
pub(crate) fn sized(columns: &mut [Column], i: usize, widest: usize, cap: usize) -> usize {
    let width = widest.clamp(columns[i].title.chars().count(), cap);
    columns[i].min = u16::try_from(width).unwrap_or(u16::MAX);
    columns[i].grow = false;
    width
}

/// The widest a CLUSTER column gets; longer names are cut with an ellipsis.
const CLUSTER_WIDTH: usize = 20;

/// `columns`, and where the snapshot holds more than one cluster a CLUSTER
/// column after them, shown first and as wide as the longest name: a row
/// gives its cluster as the cell after its last column's.
pub(crate) fn with_cluster(state: &State, columns: &[Column]) -> Vec<Column> {
    let mut out = columns.to_vec();
    if state.rows.clusters.len() > 1 {
        let widest = state
            .rows
            .clusters
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0)
            .clamp("CLUSTER".len(), CLUSTER_WIDTH);
        out.push(Column {
            lead: true,
            ..col("CLUSTER", u16::try_from(widest).unwrap_or(7), false, 0)
        });
    }
    out
}

/// `name` cut to `width` characters, the last of them an ellipsis where it
/// was longer.
pub(crate) fn cut(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_owned();
    }
    let mut out: String = name.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The cell of a row's cluster (see [`with_cluster`]).
pub(crate) fn cluster_cell<'a>(cluster: &str) -> ratatui::widgets::Cell<'a> {
    ratatui::widgets::Cell::from(cut(cluster, CLUSTER_WIDTH))
}

/// The columns that fit in `width`: the most droppable go first.
pub(crate) fn fit(columns: &[Column], width: u16) -> Vec<usize> {
    let mut kept: Vec<usize> = (0..columns.len()).collect();
    let need =
        |kept: &[usize]| -> u32 { kept.iter().map(|&i| u32::from(columns[i].min) + 1).sum() };
    while need(&kept) > u32::from(width) && kept.len() > 1 {
        let Some((pos, _)) = kept
            .iter()
            .enumerate()
            .filter(|(_, i)| columns[**i].drop > 0)
            .max_by_key(|(p, i)| (columns[**i].drop, *p))
        else {
            break;
        };
        kept.remove(pos);
    }
    kept.sort_by_key(|&i| !columns[i].lead);
    kept
}

/// A table of the `kept` columns; each row gives a cell per column and
/// whether it is selected.
pub(crate) fn table<'a>(
    columns: &[Column],
    kept: &[usize],
    rows: impl Iterator<Item = (Vec<ratatui::widgets::Cell<'a>>, bool)>,
) -> ratatui::widgets::Table<'a> {
    use ratatui::widgets::{Row, Table};
    let rows: Vec<Row<'a>> = rows
        .map(|(cells, is_selected)| {
            let mut cells: Vec<Option<ratatui::widgets::Cell<'a>>> =
                cells.into_iter().map(Some).collect();
            let picked: Vec<_> = kept
                .iter()
                .filter_map(|&i| cells.get_mut(i).and_then(Option::take))
                .collect();
            let row = Row::new(picked);
            if is_selected {
                row.style(selected())
            } else {
                row
            }
        })
        .collect();
    let widths: Vec<Constraint> = kept
        .iter()
        .map(|&i| {
            if columns[i].grow {
                Constraint::Min(columns[i].min)
            } else {
                Constraint::Length(columns[i].min)
            }
        })
        .collect();
    Table::new(rows, widths).header(Row::new(kept.iter().map(|&i| columns[i].title)).style(bold()))
}
