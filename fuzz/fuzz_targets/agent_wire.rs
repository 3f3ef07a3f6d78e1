//! Feeds arbitrary bytes to the agent's wire decoder, as one WebSocket frame
//! and as a `POST /api/v1/ingest` body: it must never panic or abort; what it
//! accepts must encode to a message that decodes to itself, and hold only
//! values the agent's store can keep (a `seq` up to `i64::MAX`, counts up to
//! 2^53 − 1) and lists no longer than `Limits::max_list_entries`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_audit::wire::{Limits, MAX_COUNT, MAX_SEQ, decode, split_batch};
use tally_audit::{BucketWidth, Message};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_message_bytes: 1 << 16,
        ..Limits::new(BucketWidth::DEFAULT)
    };
    if let Ok(message) = decode(data, &limits) {
        check(&message, &limits);
    }
    if let Ok(items) = split_batch(data, &limits) {
        for item in items {
            if let Ok(message) = decode(item.get().as_bytes(), &limits) {
                check(&message, &limits);
            }
        }
    }
});

fn check(message: &Message, limits: &Limits) {
    let again = decode(message.to_json().as_bytes(), limits)
        .unwrap_or_else(|r| panic!("an accepted message does not decode again: {}", r.error));
    assert_eq!(&again, message);
    assert!(message.seq().is_none_or(|seq| seq <= MAX_SEQ));
    match message {
        Message::Forget(f) => {
            assert!(f.groups.len() <= limits.max_list_entries);
            assert!(f.topics.len() <= limits.max_list_entries);
        }
        Message::Cluster(c) => {
            assert!(c.state.partition_count() <= limits.max_list_entries);
            assert!(c.state.check(limits.max_list_entries).is_ok());
        }
        _ => {}
    }
    if let Message::Counts(c) = message {
        for e in &c.counts {
            let largest = [e.records, e.bytes, e.no_timestamp, e.expired, e.skipped]
                .into_iter()
                .max()
                .unwrap_or(0);
            assert!(largest <= MAX_COUNT);
        }
    }
}
