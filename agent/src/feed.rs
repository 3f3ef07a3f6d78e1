//! The stream feed's one delta per tick: a task follows the snapshots,
//! builds each update once ([`Delta::with_changes`]) and publishes its bytes;
//! every dashboard connection sends those same bytes.
//!
//! Frames go through a `watch`, which holds the latest alone: a connection
//! that falls behind (a dashboard that does not read blocks its own sends)
//! finds a gap in the frame numbers and catches up with one delta of its own,
//! from the snapshot it last sent to the newest; nothing piles up for it.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tally_audit::Snapshot;
use tally_audit::feed::{Delta, FeedMessage};
use tokio::sync::watch;

/// One evaluation as the feed publishes it.
#[derive(Clone)]
struct Frame {
    /// Counts the snapshots the feed saw, from 1.
    seq: u64,
    snapshot: Arc<Snapshot>,
    /// The update from frame `seq - 1`'s snapshot to this one, as sent (in
    /// parts where it is large); `None` when no dashboard was there to need
    /// it, or it could not be encoded.
    update: Option<Parts>,
}

/// The feed's frames; made once per agent, on the first dashboard.
pub(crate) struct Feed {
    frames: watch::Receiver<Frame>,
}

impl Feed {
    /// Starts the task that turns each snapshot of `snapshots` into a frame.
    /// It ends when the snapshots do (the agent stops), and the followers
    /// with it.
    pub(crate) fn start(mut snapshots: watch::Receiver<Arc<Snapshot>>) -> Feed {
        let first = Frame {
            seq: 1,
            snapshot: snapshots.borrow_and_update().clone(),
            update: None,
        };
        let (tx, frames) = watch::channel(first);
        tokio::spawn(async move {
            while snapshots.changed().await.is_ok() {
                let new = snapshots.borrow_and_update().clone();
                let (seq, old) = {
                    let last = tx.borrow();
                    (last.seq + 1, last.snapshot.clone())
                };
                // The receiver in `Feed` is no dashboard: with none, no update.
                let update = if tx.receiver_count() > 1 {
                    let next = new.clone();
                    tokio::task::spawn_blocking(move || {
                        encode_update(Delta::with_changes(&old, &next))
                    })
                    .await
                    .ok()
                    .flatten()
                } else {
                    None
                };
                tx.send_replace(Frame {
                    seq,
                    snapshot: new,
                    update,
                });
            }
        });
        Feed { frames }
    }

    /// A new follower of the feed, and the snapshot it starts from (to send
    /// whole before what [`Follower::next`] gives).
    pub(crate) fn follow(&self) -> (Arc<Snapshot>, Follower) {
        let mut frames = self.frames.clone();
        let frame = frames.borrow_and_update().clone();
        let follower = Follower {
            frames,
            seq: frame.seq,
            last: frame.snapshot.clone(),
        };
        (frame.snapshot, follower)
    }
}

/// One dashboard's place in the feed: the frame it sent last.
pub(crate) struct Follower {
    frames: watch::Receiver<Frame>,
    seq: u64,
    last: Arc<Snapshot>,
}

impl Follower {
    /// The next update to send: the shared one when it follows the frame
    /// sent before, else one from that frame's snapshot to the newest.
    /// `None` when the feed ended (or the catch-up could not be encoded).
    ///
    /// Cancel-safe: dropped before it returns, it leaves the follower at the
    /// frame it sent last, and the next call starts from there.
    pub(crate) async fn next(&mut self) -> Option<Parts> {
        let frame = loop {
            let frame = self.frames.borrow_and_update().clone();
            if frame.seq != self.seq {
                break frame;
            }
            self.frames.changed().await.ok()?;
        };
        let text = match frame.update {
            Some(text) if frame.seq == self.seq + 1 => text,
            _ => {
                let (old, new) = (self.last.clone(), frame.snapshot.clone());
                tokio::task::spawn_blocking(move || encode_update(Delta::between(&old, &new)))
                    .await
                    .ok()
                    .flatten()?
            }
        };
        self.seq = frame.seq;
        self.last = frame.snapshot;
        Some(text)
    }
}

/// The texts of the WebSocket messages of one feed frame, sent in order.
pub(crate) type Parts = Arc<[Utf8Bytes]>;

/// About how much of the books one WebSocket message of the feed carries
/// (units of [`tally_audit::feed::Weigh`], about 1 MiB of JSON): far under
/// tungstenite's default limits (16 MiB a frame, 64 MiB a message), and
/// small enough that a dashboard takes each in a few ms, so that a tick
/// that changed everything never holds its screen for long.
pub(crate) const PART_BUDGET: usize = (1 << 20) / tally_audit::feed::BYTES_PER_UNIT;

/// A feed message as the text of one WebSocket message.
fn encode(message: &FeedMessage) -> Option<Utf8Bytes> {
    serde_json::to_string(message).ok().map(Utf8Bytes::from)
}

/// An update, in parts of [`PART_BUDGET`].
fn encode_update(delta: Delta) -> Option<Parts> {
    delta
        .split(PART_BUDGET)
        .into_iter()
        .map(|d| encode(&FeedMessage::Update(Box::new(d))))
        .collect()
}

/// The frames that open a dashboard's feed: `snapshot`, in parts of
/// [`PART_BUDGET`] where it is large.
pub(crate) fn encode_opening(snapshot: &Snapshot) -> Option<Parts> {
    FeedMessage::opening(snapshot, PART_BUDGET)
        .iter()
        .map(encode)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;
    use std::time::Duration;

    use tally_audit::feed::{Changes, TopicKey};
    use tally_audit::snapshot::{TierBooks, TopicBooks};

    use super::*;

    fn topic(name: &str, records: u64) -> TopicBooks {
        TopicBooks {
            cluster: "c".into(),
            topic: name.into(),
            reference: None,
            tiers: [(
                "broker".to_owned(),
                TierBooks {
                    records,
                    ..Default::default()
                },
            )]
            .into(),
        }
    }

    /// Evaluation `seq`: topic `t{seq % 5}` changed, and the hint says so.
    fn evaluation(prev: &Snapshot, seq: u64) -> Snapshot {
        let mut s = prev.clone();
        s.at_ms = seq as i64 * 1000;
        let name = format!("t{}", seq % 5);
        match s.topics.iter_mut().find(|t| t.topic == name) {
            Some(t) => {
                Arc::make_mut(t).tiers.get_mut("broker").unwrap().records += 1;
            }
            None => {
                s.topics.push(Arc::new(topic(&name, 1)));
                s.topics.sort_by(|a, b| a.topic.cmp(&b.topic));
            }
        }
        s.changes = Changes {
            seq,
            topics: Some(HashSet::from([TopicKey {
                cluster: "c".into(),
                topic: name,
            }])),
            groups: Some(HashSet::new()),
        };
        s
    }

    /// The update a small frame sends: one part.
    fn decode(parts: &Parts) -> Delta {
        assert_eq!(parts.len(), 1, "a small update goes in one part");
        match serde_json::from_str(parts[0].as_str()).unwrap() {
            FeedMessage::Update(d) => *d,
            other => panic!("not an update: {other:?}"),
        }
    }

    /// Sends evaluation `seq` and waits until the feed has published it.
    async fn tick(tx: &watch::Sender<Arc<Snapshot>>, feed: &Feed, agent: &mut Snapshot, seq: u64) {
        *agent = evaluation(agent, seq);
        tx.send_replace(Arc::new(agent.clone()));
        // Polled, not awaited on a receiver of its own: that would count as
        // a dashboard.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while feed.frames.borrow().seq < seq {
            assert!(
                tokio::time::Instant::now() < deadline,
                "frame {seq} not published"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn followers_in_step_send_the_same_bytes_and_a_follower_behind_catches_up() {
        let mut agent = evaluation(&Snapshot::default(), 1);
        let (tx, rx) = watch::channel(Arc::new(agent.clone()));
        let feed = Feed::start(rx);
        let (start_a, mut a) = feed.follow();
        let (start_b, mut b) = feed.follow();
        let (start_c, mut c) = feed.follow();
        let (mut shown_a, mut shown_b, mut shown_c) =
            ((*start_a).clone(), (*start_b).clone(), (*start_c).clone());
        for seq in 2..=30 {
            tick(&tx, &feed, &mut agent, seq).await;
            let text_a = a.next().await.unwrap();
            let text_b = b.next().await.unwrap();
            assert_eq!(
                text_a[0].as_str().as_ptr(),
                text_b[0].as_str().as_ptr(),
                "in step, both send the shared bytes ({seq})"
            );
            decode(&text_a).apply(&mut shown_a);
            decode(&text_b).apply(&mut shown_b);
            assert_eq!(shown_a, agent, "a at {seq}");
            assert_eq!(shown_b, agent, "b at {seq}");
            // c reads every third tick: it missed two frames each time.
            if seq % 3 == 0 {
                let text_c = c.next().await.unwrap();
                assert_ne!(
                    text_c[0].as_str().as_ptr(),
                    text_a[0].as_str().as_ptr(),
                    "{seq}"
                );
                decode(&text_c).apply(&mut shown_c);
                assert_eq!(shown_c, agent, "c at {seq}");
            }
        }
        drop(tx);
        assert!(a.next().await.is_none(), "the feed ends with the agent");
    }

    /// A large agent's first frame goes in parts, each far under the
    /// WebSocket limits, that rebuild its snapshot exactly.
    #[test]
    fn a_large_snapshot_opens_the_feed_in_parts() {
        let mut agent = Snapshot {
            at_ms: 5_000,
            width_ms: 60_000,
            ..Snapshot::default()
        };
        agent.topics = (0..40_000)
            .map(|i| Arc::new(topic(&format!("topic-with-a-long-name-{i:06}"), i)))
            .collect();
        let parts = encode_opening(&agent).unwrap();
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut shown = None;
        for (i, text) in parts.iter().enumerate() {
            assert!(text.len() < 4 << 20, "part {i}: {} bytes", text.len());
            match serde_json::from_str(text.as_str()).unwrap() {
                FeedMessage::Snapshot { snapshot, more } => {
                    assert!(more && i == 0);
                    assert!(snapshot.topics.is_empty());
                    shown = Some(*snapshot);
                }
                FeedMessage::Update(d) => {
                    assert_eq!(d.more, i + 1 < parts.len(), "part {i}");
                    d.apply(shown.as_mut().unwrap());
                }
            }
        }
        assert_eq!(shown.unwrap(), agent);
        // A small one goes whole.
        agent.topics.truncate(10);
        assert_eq!(encode_opening(&agent).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn without_a_dashboard_no_update_is_built_and_the_first_one_starts_exact() {
        let mut agent = evaluation(&Snapshot::default(), 1);
        let (tx, rx) = watch::channel(Arc::new(agent.clone()));
        let feed = Feed::start(rx);
        for seq in 2..=4 {
            tick(&tx, &feed, &mut agent, seq).await;
            assert!(feed.frames.borrow().update.is_none());
        }
        let (start, mut a) = feed.follow();
        assert_eq!(*start, agent);
        let mut shown = (*start).clone();
        tick(&tx, &feed, &mut agent, 5).await;
        assert!(feed.frames.borrow().update.is_some());
        decode(&a.next().await.unwrap()).apply(&mut shown);
        assert_eq!(shown, agent);
    }
}
