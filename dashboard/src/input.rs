//! Keys to actions, and actions on the state. Pure: no terminal here.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tally_audit::feed::Keyed;

use crate::state::{Drill, State, Tab};

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Show the next tab.
    NextTab,
    /// Show the previous tab.
    PrevTab,
    /// Show this tab.
    Tab(Tab),
    /// Move the selection up.
    Up,
    /// Move the selection down.
    Down,
    /// Move a page up.
    PageUp,
    /// Move a page down.
    PageDown,
    /// Move to the first row.
    Home,
    /// Move to the last row.
    End,
    /// Move the heatmap's selection to an older bucket.
    Left,
    /// Move the heatmap's selection to a newer bucket.
    Right,
    /// Open the detail of the selection.
    Enter,
    /// Close the detail, the help or the filter.
    Back,
    /// Start typing a filter.
    StartFilter,
    /// A character typed into the filter.
    FilterChar(char),
    /// Delete the filter's last character.
    FilterBackspace,
    /// Keep the filter and stop typing.
    FilterDone,
    /// Change the row order.
    Sort,
    /// Show the next cluster (all, then each one).
    Cluster,
    /// Freeze or unfreeze the screen.
    Pause,
    /// Show or hide the help.
    Help,
    /// Leave.
    Quit,
}

/// Rows a page moves.
const PAGE: usize = 10;

/// The action a key asks for in the current state, if any.
pub fn action(state: &State, key: KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    if state.editing_filter {
        return match key.code {
            KeyCode::Esc => Some(Action::Back),
            KeyCode::Enter => Some(Action::FilterDone),
            KeyCode::Backspace => Some(Action::FilterBackspace),
            KeyCode::Char(c) => Some(Action::FilterChar(c)),
            _ => None,
        };
    }
    Some(match key.code {
        KeyCode::Tab => Action::NextTab,
        KeyCode::BackTab => Action::PrevTab,
        KeyCode::Char(c @ '1'..='6') => {
            let i = usize::from(u8::try_from(c).unwrap_or(b'1') - b'1');
            Action::Tab(Tab::ALL[i])
        }
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::Left | KeyCode::Char('h') => Action::Left,
        KeyCode::Right | KeyCode::Char('l') => Action::Right,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::Home,
        KeyCode::End | KeyCode::Char('G') => Action::End,
        KeyCode::Enter => Action::Enter,
        KeyCode::Esc => Action::Back,
        KeyCode::Char('/') => Action::StartFilter,
        KeyCode::Char('s') => Action::Sort,
        KeyCode::Char('c') => Action::Cluster,
        KeyCode::Char('p') => Action::Pause,
        KeyCode::Char('?') => Action::Help,
        KeyCode::Char('q') => Action::Quit,
        _ => return None,
    })
}

/// Handles one key: finds its action and applies it.
pub fn handle_key(state: &mut State, key: KeyEvent) {
    if let Some(a) = action(state, key) {
        apply(state, a);
    }
}

/// Applies an action to the state.
pub fn apply(state: &mut State, action: Action) {
    if state.help && !matches!(action, Action::Quit | Action::Help | Action::Back) {
        // The help covers the screen: any other key closes it first.
        state.help = false;
        return;
    }
    match action {
        Action::Quit => state.quit = true,
        Action::Help => state.help = !state.help,
        Action::NextTab => switch(state, Tab::ALL[(state.tab.index() + 1) % Tab::ALL.len()]),
        Action::PrevTab => switch(
            state,
            Tab::ALL[(state.tab.index() + Tab::ALL.len() - 1) % Tab::ALL.len()],
        ),
        Action::Tab(t) => switch(state, t),
        Action::Up => move_by(state, -1),
        Action::Down => move_by(state, 1),
        Action::PageUp => move_by(state, -(PAGE as isize)),
        Action::PageDown => move_by(state, PAGE as isize),
        Action::Home => move_by(state, isize::MIN / 2),
        Action::End => move_by(state, isize::MAX / 2),
        Action::Left => {
            if state.tab == Tab::Buckets && state.drill.is_none() {
                state.bucket_col = (state.bucket_col + 1).min(crate::view::MAX_BUCKET_COLUMNS - 1);
            }
        }
        Action::Right => {
            if state.tab == Tab::Buckets && state.drill.is_none() {
                state.bucket_col = state.bucket_col.saturating_sub(1);
            }
        }
        Action::Enter => drill_in(state),
        Action::Back => {
            if state.help {
                state.help = false;
            } else if state.editing_filter {
                state.editing_filter = false;
                state.filter.clear();
                state.refresh();
            } else if state.drill.is_some() {
                state.drill = None;
            } else if !state.filter.is_empty() {
                state.filter.clear();
                state.refresh();
            }
        }
        Action::StartFilter => {
            state.editing_filter = true;
            state.drill = None;
        }
        Action::FilterChar(c) => {
            state.filter.push(c);
            state.refresh();
        }
        Action::FilterBackspace => {
            state.filter.pop();
            state.refresh();
        }
        Action::FilterDone => state.editing_filter = false,
        Action::Sort => {
            state.sort = state.sort.next();
            state.refresh();
        }
        Action::Cluster => state.next_cluster(),
        Action::Pause => {
            state.paused = !state.paused;
            state.frozen = if state.paused {
                state.live.clone()
            } else {
                None
            };
            state.refresh();
        }
    }
}

fn switch(state: &mut State, tab: Tab) {
    state.tab = tab;
    state.drill = None;
    state.refresh();
}

fn move_by(state: &mut State, delta: isize) {
    if let Some(Drill::Group { cursor, .. }) = &state.drill {
        let len = state.drilled_group().map_or(0, |(g, _)| g.partitions.len());
        let moved = step(*cursor, delta, len);
        if let Some(Drill::Group { cursor, .. }) = &mut state.drill {
            *cursor = moved;
        }
        return;
    }
    if state.drill.is_some() {
        return;
    }
    let len = state.row_count();
    let i = state.tab.index();
    state.cursor[i] = step(state.cursor[i], delta, len);
}

fn step(from: usize, delta: isize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    from.saturating_add_signed(delta).min(len - 1)
}

fn drill_in(state: &mut State) {
    let Some(s) = state.shown() else { return };
    let drill = match state.tab {
        Tab::Buckets => {
            let Some(&i) = state.rows.buckets.get(state.selected()) else {
                return;
            };
            let Some(&bucket) = state.recent_buckets(state.bucket_col + 1).last() else {
                return;
            };
            Drill::Bucket {
                topic: s.buckets[i].key(),
                bucket,
            }
        }
        Tab::Groups => {
            let Some(&i) = state.rows.groups.get(state.selected()) else {
                return;
            };
            Drill::Group {
                group: s.groups[i].key(),
                cursor: 0,
            }
        }
        _ => return,
    };
    state.drill = Some(drill);
}
