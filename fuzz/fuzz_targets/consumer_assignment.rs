//! Feeds arbitrary bytes to the broker's decoder of the `consumer`
//! protocol's assignment (the bytes a SyncGroup leader sends for each
//! member): it must never panic or abort, never reserve memory from a count
//! it read, and what it returns must be no larger than its input could hold.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_broker::groups::assigned_partitions;

fuzz_target!(|data: &[u8]| {
    if let Some(topics) = assigned_partitions(data) {
        // Every topic costs at least its two length bytes and a count, every
        // partition four bytes.
        let least: usize = topics.iter().map(|(t, p)| 6 + t.len() + 4 * p.len()).sum();
        // The version and the topic count come first.
        assert!(data.is_empty() || least + 6 <= data.len());
    }
});
