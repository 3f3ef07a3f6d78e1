//! A bounded, seeded mutation fuzzer over the agent's ingest path, the stable
//! counterpart of `fuzz/fuzz_targets/agent_wire.rs`: mutated valid messages go
//! through `tally_audit::wire::decode`, what it accepts through the ledger,
//! and what the ledger applies into a real store. Nothing may panic; whatever
//! the decoder and the ledger accept, the store must hold (a `seq` of 2^64 − 1
//! once passed the decoder and failed every commit it was in); and the store
//! must restore to the same ledger with nothing skipped.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tally_agent::ledger::{Ledger, LedgerConfig};
use tally_agent::store::Store;
use tally_audit::wire::{Limits, decode, split_batch};
use tally_audit::{BucketWidth, Message};

const NOW: i64 = 1_732_800_030_000;
const WIDTH: u64 = 1_000;

fn seeds() -> Vec<String> {
    let bucket = NOW / 1000 * 1000 - 60_000;
    vec![
        r#"{"v":1,"type":"hello","source":"b1","cluster":"local","tier_kinds":["produced","broker","group","consumer"],"bucket_width_ms":1000,"started_at_ms":5}"#.to_owned(),
        format!(
            r#"{{"v":1,"type":"counts","seq":7,"counts":[{{"tier":"group:billing","topic":"orders","partition":2,"bucket":{bucket},"records":400,"bytes":40000,"no_timestamp":0,"expired":3,"skipped":1}},{{"tier":"broker","topic":"orders","partition":2,"bucket":{bucket},"records":404}}]}}"#
        ),
        r#"{"v":1,"type":"lag","seq":8,"at_ms":10,"partitions":[{"group":"billing","topic":"orders","partition":0,"committed":100,"end_offset":150,"start_offset":0,"lag_records":50,"lag_seconds":3.2,"commit_at_ms":9}]}"#.to_owned(),
        r#"{"v":1,"type":"latency","seq":9,"histograms":[{"tier":"broker","topic":"orders","bounds_ms":[5,10,25],"counts":[1,4,4],"count":6,"sum_ms":300}]}"#.to_owned(),
        r#"{"v":1,"type":"lag","seq":10,"at_ms":20,"partitions":[{"group":"billing","topic":"orders","partition":1,"committed":100,"end_offset":150,"start_offset":0,"lag_records":50,"lag_seconds":3.2,"commit_at_ms":9,"stable_offset":140,"estimated":true}]}"#.to_owned(),
        r#"{"v":1,"type":"forget","seq":11,"groups":["billing"],"topics":["orders","old"]}"#.to_owned(),
        r#"{"v":1,"type":"cluster","seq":12,"at_ms":1732800000000,"brokers":3,"topics":[{"topic":"orders","partitions":[{"partition":0,"leader":1,"replicas":3,"in_sync_replicas":3},{"partition":1,"leader":-1,"replicas":3,"in_sync_replicas":1}]}],"groups":[{"group":"billing","state":"Stable","members":2}]}"#.to_owned(),
    ]
}

/// Fragments that reach the edges of what the store can hold when spliced in.
const TOKENS: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "9007199254740991",
    "9007199254740992",
    "-1",
    "0",
    "1e309",
    "0.5",
    "null",
    "\"\"",
    "\"\\u202e\"",
    "\"\\u0000\"",
    "[]",
    "{}",
    "\"group:\"",
    "\"consumer:x\"",
    ",",
    ":",
    "2147483648",
    "1000001",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            1 => out.truncate(at),
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                out.splice(at..at, t.iter().copied());
            }
            // Replace a number where there is one: the likeliest way to a
            // valid message holding an extreme value.
            3 | 4 => {
                let digits: Vec<usize> = (0..out.len())
                    .filter(|&i| {
                        out[i].is_ascii_digit() && (i == 0 || !out[i - 1].is_ascii_digit())
                    })
                    .collect();
                if let Some(&start) = digits.get(rng.below(digits.len())) {
                    let end = (start..out.len())
                        .find(|&i| !out[i].is_ascii_digit())
                        .unwrap_or(out.len());
                    let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                    out.splice(start..end, t.iter().copied());
                }
            }
            _ => out.insert(at.min(out.len()), b"{}[]\",:0-"[rng.below(9)]),
        }
    }
    out
}

#[test]
fn what_the_decoder_and_ledger_accept_the_store_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let width = BucketWidth::new(WIDTH).unwrap();
    let cfg = LedgerConfig::new(width);
    let limits = Limits {
        max_message_bytes: 4096,
        ..Limits::new(width)
    };
    let seeds = seeds();
    let mut ledger = Ledger::new(cfg.clone());
    let Ok(Message::Hello(hello)) = decode(seeds[0].as_bytes(), &limits) else {
        panic!("the hello seed decodes")
    };
    let session = ledger.hello(&hello, NOW).unwrap();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut applied, mut refused) = (0u64, 0u64, 0u64);
    // Bounded both ways: a fixed number of inputs, and a time budget that
    // keeps a slow machine under five seconds.
    let budget = Instant::now() + Duration::from_secs(4);
    let mut runs = 0u64;
    while runs < 30_000 && Instant::now() < budget {
        runs += 1;
        let seed = seeds[rng.below(seeds.len())].as_bytes();
        let input = mutate(&mut rng, seed);
        let _ = split_batch(&input, &limits);
        let message = match decode(&input, &limits) {
            Ok(m) => m,
            Err(r) => {
                refused += 1;
                assert!(!r.error.detail.is_empty());
                continue;
            }
        };
        accepted += 1;
        assert_eq!(
            decode(message.to_json().as_bytes(), &limits).unwrap(),
            message
        );
        let result = match &message {
            Message::Hello(h) => ledger.hello(h, NOW).map(|_| ()),
            Message::Counts(c) => ledger
                .apply_counts(session, c.seq, &c.counts, NOW)
                .map(|_| ()),
            Message::Lag(l) => ledger.apply_lag(session, l, NOW),
            Message::Latency(l) => ledger.apply_latency(session, l, NOW).map(|_| ()),
            Message::Forget(f) => ledger.apply_forget(session, f, NOW),
            Message::Cluster(c) => ledger.apply_cluster(session, c, NOW),
        };
        if result.is_err() {
            continue;
        }
        applied += 1;
        let rows = ledger.take_message_rows();
        let outcome = store.write_each(&[&rows]).unwrap();
        assert!(
            outcome[0].is_ok(),
            "an accepted message cannot be stored: {:?}\n{}",
            outcome[0],
            String::from_utf8_lossy(&input)
        );
        if runs.is_multiple_of(64) {
            store.write(&ledger.take_dirty()).unwrap();
        }
    }
    store.write(&ledger.take_dirty()).unwrap();
    eprintln!("{runs} inputs: {accepted} decoded, {applied} applied, {refused} refused");
    // The loop tested something on every path.
    assert!(runs >= 2_000, "only {runs} inputs in the time budget");
    assert!(accepted > 100 && applied > 100 && refused > 100);

    // The store gives the same ledger back, with nothing left out.
    let mut restored = Ledger::restore(cfg, store.load_without_cells(i64::MIN).unwrap()).unwrap();
    let unread = Store::stream_cells(store.path(), 4096, i64::MIN..i64::MAX, |chunk| {
        restored.restore_cells(chunk).unwrap();
        true
    })
    .unwrap();
    assert_eq!(unread.rows, 0, "{unread:?}");
    assert_eq!(
        restored.restore_skipped().rows,
        0,
        "{:?}",
        restored.restore_skipped()
    );
    assert_eq!(restored.cell_count(), ledger.cell_count());
    assert_eq!(restored.bucket_records(), ledger.bucket_records());
}
