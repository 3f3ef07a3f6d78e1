//! A bounded mutation fuzzer over the wire decoder: whatever bytes arrive,
//! `decode` answers Ok or a refusal, never a panic, and what it accepts
//! encodes back to a message that decodes to itself.

#![allow(clippy::unwrap_used)]

use tally_audit::BucketWidth;
use tally_audit::wire::{Limits, decode, split_batch};

const SEEDS: &[&str] = &[
    r#"{"v":1,"type":"hello","source":"b1","cluster":"local","tier_kinds":["broker","group"],"bucket_width_ms":60000,"started_at_ms":5}"#,
    r#"{"v":1,"type":"counts","seq":7,"counts":[{"tier":"group:billing","topic":"orders","partition":2,"bucket":1732800000000,"records":400,"bytes":40000,"no_timestamp":0,"expired":3,"skipped":1}]}"#,
    r#"{"v":1,"type":"lag","seq":8,"at_ms":10,"partitions":[{"group":"billing","topic":"orders","partition":0,"committed":100,"end_offset":150,"start_offset":0,"lag_records":50,"lag_seconds":3.2,"commit_at_ms":9}]}"#,
    r#"{"v":1,"type":"lag","seq":10,"at_ms":20,"partitions":[{"group":"billing","topic":"orders","partition":1,"committed":100,"end_offset":150,"start_offset":0,"lag_records":50,"lag_seconds":3.2,"commit_at_ms":9,"stable_offset":140,"estimated":true}]}"#,
    r#"{"v":1,"type":"forget","seq":11,"groups":["billing"],"topics":["orders","old"]}"#,
    r#"{"v":1,"type":"cluster","seq":12,"at_ms":1732800000000,"brokers":3,"topics":[{"topic":"orders","partitions":[{"partition":0,"leader":1,"replicas":3,"in_sync_replicas":3},{"partition":1,"leader":-1,"replicas":3,"in_sync_replicas":1}]}],"groups":[{"group":"billing","state":"Stable","members":2}]}"#,
];

/// Fragments that reach the decoder's edge cases when spliced in.
const TOKENS: &[&str] = &[
    "-1",
    "1e309",
    "18446744073709551616",
    "9007199254740992",
    "null",
    "\"\"",
    "[]",
    "{}",
    "\"\\u0000\"",
    "NaN",
    "0.5",
    "\"group:\"",
    "\"..\"",
    ",",
    ":",
    "\"v\":2",
    "\"type\":\"x\"",
    "99999999999999999999999",
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
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            1 => out.truncate(at),
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                out.splice(at..at, t.iter().copied());
            }
            3 if at < out.len() => {
                let end = (at + 1 + rng.below(12)).min(out.len());
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                out.splice(at..end, t.iter().copied());
            }
            _ => out.insert(at.min(out.len()), b"{}[]\",:0-"[rng.below(9)]),
        }
    }
    out
}

#[test]
fn the_decoder_survives_mutated_messages() {
    let limits = Limits {
        max_message_bytes: 4096,
        ..Limits::new(BucketWidth::DEFAULT)
    };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..40_000 {
        let seed = SEEDS[rng.below(SEEDS.len())].as_bytes();
        let input = mutate(&mut rng, seed);
        match decode(&input, &limits) {
            Ok(msg) => {
                accepted += 1;
                assert_eq!(decode(msg.to_json().as_bytes(), &limits).unwrap(), msg);
            }
            Err(r) => {
                refused += 1;
                assert!(!r.error.detail.is_empty());
            }
        }
        let _ = split_batch(&input, &limits);
    }
    // Both paths were exercised, so the loop tested something.
    assert!(
        accepted > 100 && refused > 100,
        "accepted {accepted}, refused {refused}"
    );
}
