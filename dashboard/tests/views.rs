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
    // The rows of each view, as it shows them.
    let rows = |s: &mut State| {
        let tab = s.tab;
        let mut n = Vec::new();
        for t in [
            Tab::Topics,
            Tab::Groups,
            Tab::Buckets,
            Tab::Sources,
            Tab::Alerts,
        ] {
            apply(s, Action::Tab(t));
            n.push(s.row_count());
        }
        apply(s, Action::Tab(tab));
        n
    };
    assert_eq!(rows(&mut s), [18, 9, 9, 6, 9]);
    for cluster in ["east", "eu-central-1-production-main", "west"] {
        handle_key(&mut s, KeyEvent::from(KeyCode::Char('c')));
        assert_eq!(s.cluster.as_deref(), Some(cluster));
        assert_eq!(rows(&mut s), [6, 3, 3, 2, 3], "{cluster}");
        apply(&mut s, Action::Tab(Tab::Topics));
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
    assert_eq!(rows(&mut s), [18, 9, 9, 6, 9]);
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
            more: false,
        },
        AT,
    );
    let s = on_state(s, Tab::Topics);
    let row = s
        .rows
        .topics
        .iter()
        .find(|r| r.tier == "mirror:replica")
        .expect("a row for the mirror tier");
    // 10 behind, of which 3 lost: 7 pending, 3 missing; 42 s behind.
    assert_eq!((row.consumed, row.pending, row.missing), (990, Some(7), 3));
    assert_eq!(row.mirror_lag_seconds, Some(42.0));
    let screen = draw(&s, 200, 40);
    let line = screen
        .lines()
        .find(|l| l.contains("mirror:replica"))
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(line.contains("42s"), "{line}");
}

fn on_state(mut s: State, tab: Tab) -> State {
    apply(&mut s, Action::Tab(tab));
    s
}

#[test]
fn stale_lag_reads_stale_and_estimated_seconds_carry_a_tilde() {
    let mut snapshot = fixture::snapshot();
    // billing's lag went stale (its source is down); analytics' first
    // partition has estimated seconds.
    let billing = std::sync::Arc::make_mut(&mut snapshot.groups[0]);
    billing.stale = true;
    for p in std::sync::Arc::make_mut(&mut billing.partitions) {
        p.stale = true;
    }
    let analytics = std::sync::Arc::make_mut(&mut snapshot.groups[1]);
    std::sync::Arc::make_mut(&mut analytics.partitions)[0].estimated = true;
    let mut s = fixture::state_of(snapshot);
    apply(&mut s, Action::Tab(Tab::Groups));
    let screen = draw(&s, 120, 30);
    let row = |name: &str| {
        screen
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row of {name}: {screen}"))
            .to_owned()
    };
    assert!(row("billing").contains("stale"), "{screen}");
    assert!(!row("analytics").contains("stale"), "{screen}");
    // Rows by name: analytics, billing, legacy-export.
    handle_key(&mut s, KeyEvent::from(KeyCode::Enter));
    let analytics = draw(&s, 120, 30);
    assert!(analytics.contains("~40.0"), "{analytics}");
    handle_key(&mut s, KeyEvent::from(KeyCode::Esc));
    handle_key(&mut s, KeyEvent::from(KeyCode::Down));
    handle_key(&mut s, KeyEvent::from(KeyCode::Enter));
    let billing = draw(&s, 120, 30);
    assert!(billing.contains("stale (ok)"), "{billing}");
}

#[test]
fn the_overview_gives_each_cluster_its_flow_its_replicas_its_worst_topics_and_what_fires() {
    let s = fixture::state_of(fixture::three_clusters());
    let screen = draw(&s, 200, 60);
    for cluster in ["east", "west", "eu-central-1-production-main"] {
        let title = screen
            .lines()
            .find(|l| l.contains(&format!(" {cluster} │")))
            .unwrap_or_else(|| panic!("no panel of {cluster}: {screen}"));
        assert!(
            title.contains("3 brokers │ 6 partitions │ 1 under-replicated"),
            "{title}"
        );
        let offline = if cluster == "west" {
            "1 offline"
        } else {
            "0 offline"
        };
        assert!(title.contains(offline), "{title}");
        assert!(title.contains("sources 1/2"), "{title}");
    }
    // Records/s in and out: in the last second the newest bucket of each of
    // the three topics went from 36/49 of its records to all of them, 73 to
    // 100 in the broker tier, 71 to 97 in the group's.
    assert_eq!(screen.matches(" in      81/s").count(), 3, "{screen}");
    assert_eq!(screen.matches(" out     78/s").count(), 3, "{screen}");
    // payments, short of 40 records, comes first, then the topics whose
    // group is behind.
    let first_topic = screen
        .lines()
        .skip_while(|l| !l.contains("TOPICS 3"))
        .nth(1)
        .unwrap();
    assert!(
        first_topic.contains("payments") && first_topic.contains("87.5%"),
        "{first_topic}"
    );
    assert!(first_topic.contains("incomplete"), "{first_topic}");
    // Groups by lag in seconds: legacy-export first.
    let first_group = screen
        .lines()
        .skip_while(|l| !l.contains("GROUPS 3"))
        .nth(1)
        .unwrap();
    assert!(
        first_group.contains("legacy-export") && first_group.contains("1m30s"),
        "{first_group}"
    );
    assert!(
        screen.contains("ConsumerLagHigh legacy-export 2m05s"),
        "{screen}"
    );
    assert!(
        screen.contains("○ etl-reporter-west silent 1m35s"),
        "{screen}"
    );

    // At 100x30, the three panels still fit; with c, one cluster has the room.
    let small = draw(&s, 100, 30);
    assert_eq!(small.matches("3 brokers").count(), 3, "{small}");
    let mut one = s.clone();
    handle_key(&mut one, KeyEvent::from(KeyCode::Char('c')));
    let east = draw(&one, 100, 30);
    assert!(
        east.contains(" east │") && !east.contains(" west │"),
        "{east}"
    );
}

#[test]
fn the_overview_sparklines_move_with_the_flow() {
    let mut s = fixture::state_of(fixture::snapshot());
    let before = draw(&s, 120, 30);
    let mut next = s.live.clone().unwrap();
    let mut grown = next.clone();
    grown.at_ms += 1_000;
    for t in &mut grown.buckets {
        let newest = std::sync::Arc::make_mut(&mut t.buckets).last_mut().unwrap();
        for cell in newest.tiers.values_mut() {
            cell.records += 500;
        }
    }
    s.feed(
        tally_audit::feed::FeedMessage::Update(Box::new(tally_audit::feed::Delta::between(
            &next, &grown,
        ))),
        grown.at_ms,
    );
    next = grown;
    let flow = &s.flow["local"];
    // Three topics gained 500 records in their broker tier and 500 in the
    // group's, in one second.
    assert_eq!(flow.produced.back(), Some(&1500));
    assert_eq!(flow.consumed.back(), Some(&1500));
    let after = draw(&s, 120, 30);
    let line = |screen: &str| {
        screen
            .lines()
            .find(|l| l.contains(" in "))
            .unwrap()
            .to_owned()
    };
    assert_ne!(line(&before), line(&after), "the flow line did not move");
    assert!(line(&after).contains("1.5k/s"), "{after}");
    assert_eq!(next.at_ms, s.live.as_ref().unwrap().at_ms);
}

#[test]
fn a_snapshot_in_parts_shows_when_whole_and_an_update_in_parts_counts_once() {
    use tally_audit::feed::{Delta, FeedMessage};
    let snapshot = fixture::three_clusters();
    let mut s = State::new("http://127.0.0.1:9400", true);
    s.set_link(Link::Connected, AT);
    let frames = FeedMessage::opening(&snapshot, 4);
    assert!(frames.len() > 5, "the snapshot is split: {}", frames.len());
    let n = frames.len();
    for (i, frame) in frames.into_iter().enumerate() {
        s.feed(frame, AT);
        if i + 1 < n {
            assert!(s.shown().is_none(), "part {i} of {n} is on screen");
            assert!(s.receiving());
            assert!(draw(&s, 100, 30).contains("receiving the first snapshot"));
        }
    }
    assert!(!s.receiving());
    assert_eq!(s.shown(), Some(&snapshot));
    apply(&mut s, Action::Tab(Tab::Groups));
    assert_eq!(s.rows.groups.len(), 9);

    // An update in parts: the lag history and the flow take one sample.
    let mut next = snapshot.clone();
    next.at_ms += 1_000;
    for g in &mut next.groups {
        std::sync::Arc::make_mut(g).lag_records += 1;
    }
    for t in &mut next.buckets {
        let newest = std::sync::Arc::make_mut(&mut t.buckets).last_mut().unwrap();
        newest.tiers.get_mut("broker").unwrap().records += 10;
    }
    let parts = Delta::between(&snapshot, &next).split(3);
    assert!(parts.len() > 3, "the update is split: {}", parts.len());
    for part in parts {
        s.feed(FeedMessage::Update(Box::new(part)), AT + 1_000);
    }
    assert_eq!(s.shown(), Some(&next));
    for g in &next.groups {
        let key = tally_audit::feed::Keyed::key(&**g);
        assert_eq!(s.lag_history[&key].len(), 2, "{key:?}");
    }
    // Three topics of each cluster gained 10 records in a second.
    for cluster in ["east", "west", "eu-central-1-production-main"] {
        assert_eq!(s.flow[cluster].produced, [30], "{cluster}");
        assert_eq!(s.flow[cluster].consumed, [0], "{cluster}");
    }
    assert_eq!(s.feed_interval_ms, 1_000);
}

#[test]
fn long_names_are_cut_with_an_ellipsis_and_columns_follow_the_data() {
    let mut snapshot = fixture::snapshot();
    let long = "orders-enriched-with-customer-profile-and-risk-score-v2";
    std::sync::Arc::make_mut(&mut snapshot.topics[0]).topic = long.into();
    let mut s = fixture::state_of(snapshot);
    apply(&mut s, Action::Tab(Tab::Topics));
    let screen = draw(&s, 200, 30);
    assert!(!screen.contains(long), "{screen}");
    assert!(
        screen.contains("orders-enriched-with-customer-profile-a… "),
        "{screen}"
    );
    // Six-letter names get a column of their width, not a share of the screen.
    let mut short = fixture::state_of(fixture::snapshot());
    apply(&mut short, Action::Tab(Tab::Topics));
    let screen = draw(&short, 200, 30);
    let header = screen.lines().find(|l| l.contains("TOPIC")).unwrap();
    let gap = header.find("TIER").unwrap() - header.find("TOPIC").unwrap();
    assert_eq!(gap, "payments".len() + 1, "{header}");
}

#[test]
fn a_group_drill_in_marks_partitions_under_replicated_or_offline() {
    let mut s = fixture::state_of(fixture::three_clusters());
    apply(&mut s, Action::Tab(Tab::Groups));
    // Rows by cluster, then name: east's analytics, billing, legacy-export,
    // then eu-central-1's, then west's.
    let drill = |rows_down: usize| {
        let mut t = s.clone();
        for _ in 0..rows_down {
            handle_key(&mut t, KeyEvent::from(KeyCode::Down));
        }
        handle_key(&mut t, KeyEvent::from(KeyCode::Enter));
        draw(&t, 160, 30)
    };
    let east = drill(0);
    assert!(east.contains("east/analytics"), "{east}");
    assert!(east.contains("3/3") && east.contains("2/3 under"), "{east}");
    let west = drill(6);
    assert!(west.contains("west/analytics"), "{west}");
    assert!(
        west.contains("offline") && !west.contains("2/3 under"),
        "{west}"
    );
}
