//! A Produce's record batches under libFuzzer, through validation and
//! decompression: the broker's check must never panic, abort or run away
//! with memory, and a batch it accepts must hold exactly the records its
//! header declares.
//!
//! The first input byte picks how the rest is used: as the records bytes of
//! a Produce as they are (bit 7 clear), or (bit 7 set) as the records of
//! one batch, compressed with the codec in bits 0-2 and wrapped in a header
//! with a valid CRC whose record count is the second byte, so that mutations
//! reach the record walk behind every decompressor. The same properties run
//! as a bounded, seeded loop on stable in `broker/tests/hostile.rs`.

#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use tally_broker::batch::{self, RecordsError};

/// What one input may decompress: enough for real batches, small enough
/// that a bomb costs the fuzzer little.
const BUDGET: u64 = 16 << 20;

fn compress(codec: u8, region: &[u8]) -> Option<Vec<u8>> {
    Some(match codec {
        0 => region.to_vec(),
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(region).ok()?;
            e.finish().ok()?
        }
        2 => snap::raw::Encoder::new().compress_vec(region).ok()?,
        3 => {
            let mut e = lz4::EncoderBuilder::new().build(Vec::new()).ok()?;
            e.write_all(region).ok()?;
            let (out, result) = e.finish();
            result.ok()?;
            out
        }
        4 => zstd::encode_all(region, 1).ok()?,
        _ => return None,
    })
}

/// A v2 batch of `count` records over `records` (already compressed with
/// `codec`), with a valid CRC.
fn wrap(codec: u8, count: i32, records: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(61 + records.len());
    b.extend(0i64.to_be_bytes()); // base offset
    b.extend(((49 + records.len()) as i32).to_be_bytes()); // batch length
    b.extend((-1i32).to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend([0; 4]); // crc, below
    b.extend(i16::from(codec).to_be_bytes()); // attributes
    b.extend(count.wrapping_sub(1).to_be_bytes()); // last offset delta
    b.extend(1_700_000_000_000i64.to_be_bytes()); // base timestamp
    b.extend(1_700_000_000_000i64.to_be_bytes()); // max timestamp
    b.extend((-1i64).to_be_bytes()); // producer id
    b.extend((-1i16).to_be_bytes()); // producer epoch
    b.extend((-1i32).to_be_bytes()); // base sequence
    b.extend(count.to_be_bytes());
    b.extend(records);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fuzz_target!(|input: &[u8]| {
    let [mode, count, rest @ ..] = input else {
        return;
    };
    let wrapped;
    let records: &[u8] = if mode & 0x80 == 0 {
        &input[1..]
    } else {
        let Some(compressed) = compress(mode & 0x7, rest) else {
            return;
        };
        wrapped = wrap(mode & 0x7, i32::from(*count), &compressed);
        &wrapped
    };
    let mut budget = BUDGET;
    match batch::check_produced(records, &mut budget) {
        Ok(checked) => {
            assert_eq!(checked.headers.len(), checked.timestamps.len());
            let mut at = 0;
            for (header, timestamps) in checked.headers.iter().zip(&checked.timestamps) {
                assert_eq!(
                    i64::from(header.record_count),
                    timestamps.len() as i64,
                    "an accepted batch holds other than it declares"
                );
                let one = &records[at..at + header.size()];
                at += header.size();
                let read = batch::record_timestamps(one).expect("an accepted batch reads");
                assert_eq!(&read, timestamps);
            }
            assert!(checked.decompressed_bytes <= BUDGET);
        }
        Err(RecordsError::TooLarge { .. }) => assert!(budget < BUDGET),
        Err(RecordsError::Invalid(_)) => {}
    }
    let _ = batch::record_timestamps(records);
});
