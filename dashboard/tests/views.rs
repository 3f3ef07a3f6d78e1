//! Every view drawn through ratatui's TestBackend over a fixed state, as
//! insta snapshots: normal, empty, stale and on a narrow terminal.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod fixture;

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::Color;
use tally_dashboard::input::{Action, apply, handle_key};
use tally_dashboard::state::{Link, State, Tab};

use fixture::{AT, draw, state};

fn on(tab: Tab) -> State {
    let mut s = state();
    apply(&mut s, Action::Tab(tab));
    s
}

#[test]
fn every_view_with_data() {
    for tab in Tab::ALL {
        let screen = draw(&on(tab), 120, 30);
        insta::assert_snapshot!(format!("normal_{}", tab.title().to_lowercase()), screen);
    }
}

#[test]
fn every_view_with_one_cluster_and_with_three_at_100x30_and_200x60() {
    for (clusters, snapshot) in [(1, fixture::snapshot()), (3, fixture::three_clusters())] {
        for tab in Tab::ALL {
            let mut s = fixture::state_of(snapshot.clone());
            apply(&mut s, Action::Tab(tab));
            for (w, h) in [(100, 30), (200, 60)] {
                let screen = draw(&s, w, h);
                if clusters == 3 && tab != Tab::Overview {
                    assert!(
                        screen.contains("all 3 clusters (c: one)"),
                        "the header says the clusters shown: {screen}"
                    );
                }
                insta::assert_snapshot!(
                    format!("clusters_{clusters}_{}_{w}x{h}", tab.title().to_lowercase()),
                    screen
                );
            }
        }
    }
}

#[test]
fn the_cluster_key_cycles_what_every_view_shows() {
    let mut s = fixture::state_of(fixture::three_clusters());
    // Each topic × tier, group, bucket row, source and alert of each cluster.
    assert_eq!(
        s.rows.clusters,
        ["east", "eu-central-1-production-main", "west"]
    );
    let all = (
        s.rows.topics.len(),
        s.rows.groups.len(),
        s.rows.buckets.len(),
        s.rows.sources.len(),
        s.rows.alerts.len(),
    );
    assert_eq!(all, (18, 9, 9, 6, 9));
    for cluster in ["east", "eu-central-1-production-main", "west"] {
        handle_key(&mut s, KeyEvent::from(KeyCode::Char('c')));
        assert_eq!(s.cluster.as_deref(), Some(cluster));
        assert_eq!(
            (
                s.rows.topics.len(),
                s.rows.groups.len(),
                s.rows.buckets.len(),
                s.rows.sources.len(),
                s.rows.alerts.len(),
            ),
            (6, 3, 3, 2, 3),
            "{cluster}"
        );
        assert!(s.rows.topics.iter().all(|r| r.cluster == cluster));
        apply(&mut s, Action::Tab(Tab::Groups));
        let screen = draw(&s, 120, 30);
        assert!(
            screen.contains(&format!("cluster {}", &cluster[..cluster.len().min(10)])),
            "{screen}"
        );
        // A drill-in opens the group of the cluster shown.
        handle_key(&mut s, KeyEvent::from(KeyCode::Enter));
        let (g, _) = s.drilled_group().expect("a group drilled into");
        assert_eq!(g.cluster, cluster);
        let title = format!("{cluster}/{}: ", g.group);
        let screen = draw(&s, 200, 40);
        assert!(screen.contains(&title), "{title}: {screen}");
        handle_key(&mut s, KeyEvent::from(KeyCode::Esc));
    }
    // After the last cluster, all of them again.
    handle_key(&mut s, KeyEvent::from(KeyCode::Char('c')));
    assert_eq!(s.cluster, None);
    assert_eq!(s.rows.topics.len(), 18);
}

#[test]
fn every_view_before_any_data() {
    for tab in Tab::ALL {
        let mut s = State::new("http://127.0.0.1:9400", true);
        s.set_link(Link::Connecting { attempt: 1 }, AT);
        apply(&mut s, Action::Tab(tab));
        insta::assert_snapshot!(
            format!("empty_{}", tab.title().to_lowercase()),
            draw(&s, 100, 16)
        );
    }
}

#[test]
fn every_view_stale_after_the_agent_went_away() {
    for tab in Tab::ALL {
        let mut s = on(tab);
        s.set_link(
            Link::Disconnected {
                error: "Connection refused (os error 111)".into(),
                retry_at_ms: AT + 4_500,
            },
            AT + 500,
        );
        let screen = draw(&s, 120, 30);
        assert!(screen.contains("STALE"), "{screen}");
        // The last data stays on screen.
        assert!(screen.contains("data of 13:20:00 UTC"), "{screen}");
        insta::assert_snapshot!(format!("stale_{}", tab.title().to_lowercase()), screen);
    }
}

#[test]
fn a_silent_feed_is_stale_too() {
    let mut s = state();
    assert!(!draw(&s, 120, 30).contains("STALE"));
    s.now_ms = AT + 6_000;
    assert!(draw(&s, 120, 30).contains("STALE"));
    // An agent with a slow tick is given three of its ticks.
    s.feed_interval_ms = 10_000;
    assert!(!draw(&s, 120, 30).contains("STALE"));
    s.now_ms = AT + 31_000;
    assert!(draw(&s, 120, 30).contains("STALE"));
}

#[test]
fn every_view_on_a_narrow_terminal() {
    for tab in Tab::ALL {
        let screen = draw(&on(tab), 60, 20);
        insta::assert_snapshot!(format!("narrow_{}", tab.title().to_lowercase()), screen);
    }
    let tiny = draw(&state(), 40, 10);
    assert!(tiny.contains("Terminal too small: 40x10"), "{tiny}");
    insta::assert_snapshot!("too_small", tiny);
}

#[test]
fn drill_ins_and_help() {
    let mut s = on(Tab::Buckets);
    // payments (second by name: clicks, orders, payments) → third row;
    // the incomplete bucket is five columns back from the newest.
    handle_key(&mut s, KeyEvent::from(KeyCode::Down));
    handle_key(&mut s, KeyEvent::from(KeyCode::Down));
    for _ in 0..4 {
        handle_key(&mut s, KeyEvent::from(KeyCode::Left));
    }
    handle_key(&mut s, KeyEvent::from(KeyCode::Enter));
    let screen = draw(&s, 120, 30);
    assert!(
        screen.contains("payments / bucket 13:19:10 UTC"),
        "{screen}"
    );
    assert!(screen.contains("incomplete"), "{screen}");
    insta::assert_snapshot!("drill_bucket", screen);

    let mut s = on(Tab::Groups);
    handle_key(&mut s, KeyEvent::from(KeyCode::Enter));
    insta::assert_snapshot!("drill_group", draw(&s, 120, 30));

    let mut s = state();
    handle_key(&mut s, KeyEvent::from(KeyCode::Char('?')));
    insta::assert_snapshot!("help", draw(&s, 120, 30));
}

fn colours(s: &State, w: u16, h: u16) -> Vec<Color> {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal
        .draw(|f| tally_dashboard::view::render(s, f))
        .unwrap();
    terminal
        .backend()
        .buffer()
        .content()
        .iter()
        .flat_map(|c| [c.fg, c.bg])
        .filter(|c| *c != Color::Reset)
        .collect()
}

#[test]
fn colours_come_from_the_16_colour_palette_and_none_under_no_color() {
    for tab in Tab::ALL {
        let s = on(tab);
        let used = colours(&s, 120, 30);
        assert!(
            used.iter()
                .all(|c| !matches!(c, Color::Rgb(..) | Color::Indexed(_))),
            "{tab:?}: {used:?}"
        );
        let mut mono = s.clone();
        mono.color = false;
        assert_eq!(colours(&mono, 120, 30), Vec::<Color>::new(), "{tab:?}");
    }
    // Colour says what is wrong: the incomplete topic's books are red.
    assert!(colours(&on(Tab::Topics), 120, 30).contains(&Color::Red));
}

#[test]
fn monochrome_heatmap_tells_statuses_apart_by_letter() {
    let mut s = on(Tab::Buckets);
    s.color = false;
    let screen = draw(&s, 120, 30);
    let payments = screen.lines().find(|l| l.contains("payments")).unwrap();
    assert!(payments.contains("= X = + p ."), "{payments}");
}

#[test]
fn a_mirror_tier_is_a_topics_row_with_what_it_has_not_copied_yet_as_pending() {
    let mut snapshot = fixture::snapshot();
    let orders = std::sync::Arc::make_mut(&mut snapshot.topics[0]);
    let mut copy = fixture::topic("orders", 1_000, 990, 3).tiers["broker"].clone();
    copy.records = 990;
    copy.missing = 3;
    copy.mirror_lag = Some(tally_audit::snapshot::MirrorLag {
        records: 10,
        seconds: 42.0,
    });
    orders.tiers.insert("mirror:replica".into(), copy);
    let mut s = State::new("http://127.0.0.1:9400", false);
    s.feed(
        tally_audit::feed::FeedMessage::Snapshot {
            snapshot: Box::new(snapshot),
        },
        AT,
    );
    let row = s
        .rows
        .topics
        .iter()
        .find(|r| r.tier == "mirror:replica")
        .expect("a row for the mirror tier");
    // 10 behind, of which 3 lost: 7 pending, 3 missing.
    assert_eq!((row.consumed, row.pending, row.missing), (990, Some(7), 3));
    let screen = draw(&on_state(s, Tab::Topics), 200, 40);
    assert!(screen.contains("mirror:replica"), "{screen}");
}

fn on_state(mut s: State, tab: Tab) -> State {
    apply(&mut s, Action::Tab(tab));
    s
}
