//! Feeds bytes to the collector's reader of `__consumer_offsets` records
//! (`tally_kafka::client::OffsetsTopicRecord::parse`): the first byte splits the rest
//! into key and value (and says whether either is null). It must never panic or abort,
//! and a commit it accepts came from a key of version 0 or 1.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_kafka::client::OffsetsTopicRecord;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split & 0x3f).min(rest.len());
    let (key, value) = rest.split_at(at);
    let key = (split & 0x40 == 0).then_some(key);
    let value = (split & 0x80 == 0).then_some(value);
    if let Ok(OffsetsTopicRecord::Commit { .. }) = OffsetsTopicRecord::parse(key, value) {
        let version = key.and_then(|k| k.get(..2)).map(|v| i16::from_be_bytes([v[0], v[1]]));
        assert!(matches!(version, Some(0 | 1)));
    }
});
