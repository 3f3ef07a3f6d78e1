//! Keys on the fixed state: navigation, filter, sort, drill-in and back,
//! pause, help and quit, checked on the state and on the drawn screen.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod fixture;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use tally_audit::feed::{Delta, FeedMessage};
use tally_dashboard::input::handle_key;
use tally_dashboard::state::{Drill, Sort, State, Tab};

use fixture::{AT, draw, state};

fn press(s: &mut State, keys: &[KeyCode]) {
    for k in keys {
        handle_key(s, KeyEvent::from(*k));
    }
}

fn typed(s: &mut State, text: &str) {
    for c in text.chars() {
        handle_key(s, KeyEvent::from(KeyCode::Char(c)));
    }
}

/// The selected (reversed) line of the screen, found by the row cursor.
fn topic_at_cursor(s: &State) -> String {
    let r = &s.rows.topics[s.selected()];
    format!("{} {}", r.topic, r.tier)
}

#[test]
fn tab_and_number_keys_switch_views() {
    let mut s = state();
    assert_eq!(s.tab, Tab::Overview);
    press(&mut s, &[KeyCode::Tab]);
    assert_eq!(s.tab, Tab::Topics);
    assert!(draw(&s, 120, 30).contains("Topics × tiers: 6 rows"));
    press(&mut s, &[KeyCode::BackTab, KeyCode::BackTab]);
    assert_eq!(s.tab, Tab::Sources);
    for (key, tab) in ['1', '2', '3', '4', '5', '6'].into_iter().zip(Tab::ALL) {
        press(&mut s, &[KeyCode::Char(key)]);
        assert_eq!(s.tab, tab);
    }
    assert!(draw(&s, 120, 30).contains("Sources: 2"));
}

#[test]
fn arrows_and_jk_move_within_the_rows() {
    let mut s = state();
    press(&mut s, &[KeyCode::Char('2')]);
    assert_eq!(topic_at_cursor(&s), "clicks broker");
    press(
        &mut s,
        &[KeyCode::Down, KeyCode::Char('j'), KeyCode::Char('j')],
    );
    assert_eq!(topic_at_cursor(&s), "orders group:billing");
    press(&mut s, &[KeyCode::Up, KeyCode::Char('k')]);
    assert_eq!(topic_at_cursor(&s), "clicks group:billing");
    press(&mut s, &[KeyCode::Up, KeyCode::Up, KeyCode::Up]);
    assert_eq!(s.selected(), 0, "stops at the top");
    press(&mut s, &[KeyCode::End]);
    assert_eq!(topic_at_cursor(&s), "payments group:billing");
    press(&mut s, &[KeyCode::Down]);
    assert_eq!(s.selected(), 5, "stops at the bottom");
    assert!(draw(&s, 120, 30).contains("row 6 of 6"));
    // Each tab keeps its own cursor.
    press(
        &mut s,
        &[KeyCode::Char('4'), KeyCode::Down, KeyCode::Char('2')],
    );
    assert_eq!(s.selected(), 5);
}

#[test]
fn a_long_table_scrolls_with_the_cursor() {
    let mut s = state();
    let mut big = fixture::snapshot();
    big.topics = (0..500)
        .map(|i| fixture::topic(&format!("t{i:04}"), 100, 90, 0).into())
        .collect();
    s.feed(
        FeedMessage::Snapshot {
            snapshot: Box::new(big),
            more: false,
        },
        AT,
    );
    press(&mut s, &[KeyCode::Char('2')]);
    for _ in 0..30 {
        press(&mut s, &[KeyCode::PageDown]);
    }
    let screen = draw(&s, 120, 30);
    assert!(screen.contains("row 301 of 1000"), "{screen}");
    assert!(screen.contains("t0150"), "{screen}");
    assert!(!screen.contains("t0000"), "{screen}");
}

#[test]
fn slash_filters_by_name_and_esc_clears_it() {
    let mut s = state();
    press(&mut s, &[KeyCode::Char('2'), KeyCode::Char('/')]);
    assert!(s.editing_filter);
    typed(&mut s, "PAY");
    assert_eq!(s.rows.topics.len(), 2);
    let screen = draw(&s, 120, 30);
    assert!(screen.contains("filter: PAY"), "{screen}");
    assert!(!screen.contains("orders"), "{screen}");
    // While typing, letters go to the filter, not to the keys.
    typed(&mut s, "q");
    assert!(!s.quit);
    press(&mut s, &[KeyCode::Backspace, KeyCode::Enter]);
    assert!(!s.editing_filter);
    assert_eq!(s.filter, "PAY");
    assert!(draw(&s, 120, 30).contains("filter \"PAY\""));
    // The filter applies to every tab: groups by their topics too.
    press(&mut s, &[KeyCode::Char('4')]);
    assert_eq!(s.rows.groups.len(), 0, "no group reads payments");
    press(&mut s, &[KeyCode::Esc]);
    assert_eq!(s.filter, "");
    assert_eq!(s.rows.groups.len(), 3);
}

#[test]
fn s_changes_the_order() {
    let mut s = state();
    press(&mut s, &[KeyCode::Char('4')]);
    let names = |s: &State| -> Vec<String> {
        let snap = s.shown().unwrap();
        s.rows
            .groups
            .iter()
            .map(|&i| snap.groups[i].group.clone())
            .collect()
    };
    assert_eq!(names(&s), ["analytics", "billing", "legacy-export"]);
    press(&mut s, &[KeyCode::Char('s')]);
    assert_eq!(s.sort, Sort::Worst);
    assert_eq!(names(&s), ["legacy-export", "analytics", "billing"]);
    assert!(draw(&s, 120, 30).contains("sort: worst"));
    press(&mut s, &[KeyCode::Char('s')]);
    assert_eq!(s.sort, Sort::Size);
    assert_eq!(names(&s), ["legacy-export", "analytics", "billing"]);
    press(&mut s, &[KeyCode::Char('s')]);
    assert_eq!(s.sort, Sort::Name);
}

#[test]
fn enter_drills_into_a_group_and_esc_goes_back() {
    let mut s = state();
    press(&mut s, &[KeyCode::Char('4'), KeyCode::Down, KeyCode::Down]);
    press(&mut s, &[KeyCode::Enter]);
    assert!(matches!(&s.drill, Some(Drill::Group { group, .. }) if group.group == "legacy-export"));
    let screen = draw(&s, 120, 30);
    assert!(
        screen.contains("legacy-export: 2 partitions, status err"),
        "{screen}"
    );
    assert!(screen.contains("stop"), "{screen}");
    // Arrows move inside the detail, not the list behind it.
    press(&mut s, &[KeyCode::Down]);
    assert!(matches!(&s.drill, Some(Drill::Group { cursor: 1, .. })));
    assert_eq!(s.selected(), 2);
    press(&mut s, &[KeyCode::Esc]);
    assert!(s.drill.is_none());
    assert!(!draw(&s, 120, 30).contains("partitions, status"));
}

#[test]
fn enter_drills_into_a_bucket_cell_and_esc_goes_back() {
    let mut s = state();
    press(&mut s, &[KeyCode::Char('3'), KeyCode::Down]);
    // orders' newest bucket is open; two back it is late.
    press(
        &mut s,
        &[KeyCode::Char('h'), KeyCode::Char('h'), KeyCode::Char('h')],
    );
    press(&mut s, &[KeyCode::Char('l')]);
    assert_eq!(s.bucket_col, 2);
    press(&mut s, &[KeyCode::Enter]);
    let Some(Drill::Bucket { topic, bucket }) = s.drill.clone() else {
        panic!("no bucket drill: {:?}", s.drill);
    };
    assert_eq!(topic.topic, "orders");
    assert_eq!(bucket, AT - 3 * fixture::WIDTH);
    let screen = draw(&s, 120, 30);
    assert!(screen.contains("orders / bucket 13:19:30 UTC"), "{screen}");
    assert!(screen.contains("late"), "{screen}");
    press(&mut s, &[KeyCode::Esc]);
    assert!(s.drill.is_none());
    // Enter on the Overview does nothing.
    press(&mut s, &[KeyCode::Char('1'), KeyCode::Enter]);
    assert!(s.drill.is_none());
}

#[test]
fn p_freezes_the_screen_while_the_feed_goes_on() {
    let mut s = state();
    press(&mut s, &[KeyCode::Char('4'), KeyCode::Char('p')]);
    let before = fixture::snapshot();
    let mut after = before.clone();
    after.at_ms = AT + 1000;
    std::sync::Arc::make_mut(&mut after.groups[0]).lag_records = 77_777;
    s.feed(
        FeedMessage::Update(Box::new(Delta::between(&before, &after))),
        AT + 1000,
    );
    let screen = draw(&s, 120, 30);
    assert!(screen.contains("PAUSED"), "{screen}");
    assert!(!screen.contains("77777"), "{screen}");
    press(&mut s, &[KeyCode::Char('p')]);
    let screen = draw(&s, 120, 30);
    assert!(screen.contains("77777"), "{screen}");
    assert!(!screen.contains("PAUSED"), "{screen}");
}

#[test]
fn help_opens_and_closes_and_q_quits() {
    let mut s = state();
    press(&mut s, &[KeyCode::Char('?')]);
    assert!(draw(&s, 120, 30).contains("this help"));
    press(&mut s, &[KeyCode::Esc]);
    assert!(!s.help);
    press(&mut s, &[KeyCode::Char('q')]);
    assert!(s.quit);
    let mut s = state();
    handle_key(
        &mut s,
        KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
    );
    assert!(s.quit, "ctrl-c quits too (raw mode turns it into a key)");
}
