//! The partition log as the broker uses it: appends and reads across segment
//! rolls, lookups by timestamp, retention, recovery after torn writes and
//! damaged indexes, and group-commit fsync, including a real `kill -9`.

// Helpers outside #[test] functions unwrap too; a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression as Codec, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType,
};
use tally_broker::Error;
use tally_broker::batch::{BatchHeader, record_timestamps, validate_batches};
use tally_broker::log::{Flusher, FsyncPolicy, LogConfig, PartitionLog};

/// A producer's batch: one record per timestamp, values `label-0`, `label-1`, ….
fn producer_batch(label: &str, timestamps: &[i64], codec: Codec) -> Vec<u8> {
    let records: Vec<Record> = timestamps
        .iter()
        .enumerate()
        .map(|(i, &timestamp)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            sequence: i as i32,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            timestamp,
            key: None,
            value: Some(Bytes::from(format!("{label}-{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: codec,
        },
    )
    .unwrap();
    buf.to_vec()
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    offset: i64,
    timestamp: i64,
    value: String,
}

/// Decodes fetched bytes the way a client does.
fn decode(bytes: Bytes) -> Vec<Seen> {
    let mut bytes = bytes;
    RecordBatchDecoder::decode_all(&mut bytes)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| Seen {
            offset: r.offset,
            timestamp: r.timestamp,
            value: String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
        })
        .collect()
}

/// Every record from `from` to the end, fetched as a consumer would.
fn consume(log: &PartitionLog, from: i64) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut next = from;
    while next < log.end_offset() {
        let fetched = decode(log.read(next, 4096).unwrap());
        assert!(
            !fetched.is_empty(),
            "a read at {next} before the end returned nothing"
        );
        seen.extend(fetched.into_iter().filter(|r| r.offset >= next));
        next = seen.last().unwrap().offset + 1;
    }
    seen
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 2_000,
        index_interval_bytes: 300,
        ..LogConfig::default()
    }
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    found.sort();
    found
}

/// Appends `batches` batches of 3 records; batch `i` has timestamps
/// `1_000 + 100 * i + {0, 10, 20}`. Returns what a consumer should see.
fn fill(log: &mut PartitionLog, batches: usize) -> Vec<Seen> {
    let mut expected = Vec::new();
    for i in 0..batches {
        let ts = 1_000 + 100 * i as i64;
        let timestamps = [ts, ts + 10, ts + 20];
        let codec = [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ][i % 5];
        let batch = producer_batch(&format!("b{i}"), &timestamps, codec);
        let appended = log.append(&batch, 50_000 + i as i64).unwrap();
        for (k, &timestamp) in timestamps.iter().enumerate() {
            expected.push(Seen {
                offset: appended.base_offset + k as i64,
                timestamp,
                value: format!("b{i}-{k}"),
            });
        }
    }
    expected
}

#[test]
fn appends_and_reads_round_trip_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (0, 0));
    let expected = fill(&mut log, 60);
    assert_eq!(log.end_offset(), 180);
    let offsets: Vec<i64> = expected.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (0..180).collect::<Vec<_>>(),
        "offsets are contiguous"
    );
    assert!(files(dir.path(), "log").len() > 3, "the log rolled");
    assert_eq!(
        files(dir.path(), "log")[0].file_name().unwrap(),
        "00000000000000000000.log"
    );
    assert_eq!(consume(&log, 0), expected);
    let on_disk: u64 = files(dir.path(), "log")
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(log.size_bytes(), on_disk);

    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.end_offset(), 180);
    assert_eq!(consume(&log, 0), expected, "after reopening");
}

#[test]
fn one_append_of_several_batches_gets_contiguous_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&producer_batch("a", &[1], Codec::None), 0)
        .unwrap();
    let mut records = producer_batch("b", &[1, 2, 3], Codec::None);
    records.extend(producer_batch("c", &[4, 5], Codec::Zstd));
    let appended = log.append(&records, 0).unwrap();
    assert_eq!((appended.base_offset, appended.last_offset), (1, 5));
    assert_eq!(appended.log_append_time, -1);
    let bases: Vec<i64> = appended.headers.iter().map(|h| h.base_offset).collect();
    assert_eq!(bases, [1, 4]);
    // The caller's bytes are left alone; the log holds them behind their new
    // base offsets, and nothing else differs.
    let sent: Vec<i64> = validate_batches(&records)
        .unwrap()
        .iter()
        .map(|h| h.base_offset)
        .collect();
    assert_eq!(sent, [0, 0]);
    let stored = log.read(1, 1 << 20).unwrap();
    assert_eq!(validate_batches(&stored).unwrap(), appended.headers);
    let mut expected = records.clone();
    expected[..8].copy_from_slice(&1i64.to_be_bytes());
    let second = appended.headers[0].size();
    expected[second..second + 8].copy_from_slice(&4i64.to_be_bytes());
    assert_eq!(&stored[..], &expected[..]);
    let values: Vec<String> = consume(&log, 0).into_iter().map(|r| r.value).collect();
    assert_eq!(values, ["a-0", "b-0", "b-1", "b-2", "c-0", "c-1"]);
}

#[test]
fn invalid_appends_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let mut corrupt = producer_batch("a", &[1, 2], Codec::None);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert!(matches!(
        log.append(&corrupt, 0),
        Err(Error::CorruptBatch { .. })
    ));
    let mut old = producer_batch("a", &[1], Codec::None);
    old[16] = 1;
    assert!(matches!(
        log.append(&old, 0),
        Err(Error::UnsupportedMagic(1))
    ));
    assert_eq!((log.end_offset(), log.size_bytes()), (0, 0));
}

#[test]
fn a_read_from_the_middle_of_a_batch_returns_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&producer_batch("a", &[1, 2, 3, 4, 5], Codec::Lz4), 0)
        .unwrap();
    log.append(&producer_batch("b", &[6, 7], Codec::None), 0)
        .unwrap();
    let fetched = decode(log.read(3, 1 << 20).unwrap());
    assert_eq!(
        fetched[0].offset, 0,
        "the batch holding offset 3 starts at 0"
    );
    assert_eq!(fetched.len(), 7);
    let fetched = decode(log.read(5, 1 << 20).unwrap());
    assert_eq!(fetched.iter().map(|r| r.offset).collect::<Vec<_>>(), [5, 6]);
}

#[test]
fn reads_honour_max_bytes_but_always_return_a_whole_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let mut sizes = Vec::new();
    for i in 0..4 {
        let batch = producer_batch(&format!("b{i}"), &[1, 2], Codec::None);
        sizes.push(batch.len());
        log.append(&batch, 0).unwrap();
    }
    assert_eq!(
        log.read(0, 1).unwrap().len(),
        sizes[0],
        "larger than max_bytes, still whole"
    );
    assert_eq!(log.read(0, 0).unwrap().len(), sizes[0]);
    assert_eq!(
        log.read(0, sizes[0] + sizes[1] + 10).unwrap().len(),
        sizes[0] + sizes[1]
    );
    assert_eq!(
        log.read(0, usize::MAX).unwrap().len(),
        sizes.iter().sum::<usize>()
    );
    assert!(log.read(8, 100).unwrap().is_empty(), "empty at the end");
    for outside in [-1, 9] {
        assert!(matches!(
            log.read(outside, 100),
            Err(Error::OffsetOutOfRange { offset, start: 0, end: 8 }) if offset == outside
        ));
    }
}

#[test]
fn batches_and_read_batch_walk_the_log_in_offset_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    fill(&mut log, 30);
    let headers = log.batches(0).unwrap();
    assert_eq!(headers.len(), 30);
    for pair in headers.windows(2) {
        assert_eq!(pair[0].next_offset(), pair[1].base_offset);
    }
    let from_middle = log.batches(46).unwrap();
    assert_eq!(
        from_middle[0].base_offset, 45,
        "starts with the batch holding 46"
    );
    assert_eq!(from_middle.len(), 15);
    assert!(log.batches(90).unwrap().is_empty());

    let raw = log.read_batch(45).unwrap();
    let header = BatchHeader::parse(&raw).unwrap();
    assert_eq!((header.base_offset, header.size()), (45, raw.len()));
    assert_eq!(record_timestamps(&raw).unwrap(), [2_500, 2_510, 2_520]);
    assert_eq!(
        log.read_batch(47).unwrap(),
        raw,
        "the batch holding the offset"
    );
    assert!(matches!(
        log.read_batch(90),
        Err(Error::OffsetOutOfRange { .. })
    ));
}

/// The earliest record (in offset order) with a timestamp at or after `ts`.
fn model_lookup(records: &[Seen], ts: i64) -> Option<(i64, i64)> {
    records
        .iter()
        .find(|r| r.timestamp >= ts)
        .map(|r| (r.offset, r.timestamp))
}

#[test]
fn offsets_are_found_by_timestamp_exactly_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    let mut expected = fill(&mut log, 40);
    // Producers' clocks disagree: an older batch after newer ones.
    let late = producer_batch("late", &[1_050, 9_000, 1_060], Codec::Gzip);
    let base = log.append(&late, 0).unwrap().base_offset;
    for (k, ts) in [1_050, 9_000, 1_060].into_iter().enumerate() {
        expected.push(Seen {
            offset: base + k as i64,
            timestamp: ts,
            value: format!("late-{k}"),
        });
    }
    let queries: Vec<i64> = (0..100)
        .map(|i| 900 + 85 * i)
        .chain([i64::MIN, 9_000, 9_001])
        .collect();
    let check = |log: &PartitionLog, when: &str| {
        for &q in &queries {
            assert_eq!(
                log.offset_for_timestamp(q),
                model_lookup(&expected, q),
                "{when}: {q}"
            );
        }
        assert_eq!(log.offset_for_timestamp(1_015), Some((2, 1_020)));
        assert_eq!(log.offset_for_timestamp(9_001), None);
        assert_eq!(log.max_timestamp(), Some((9_000, base + 1)));
    };
    check(&log, "live");
    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    check(&log, "reopened");
}

#[test]
fn log_append_time_stamps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        log_append_time: true,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), cfg).unwrap();
    let appended = log
        .append(&producer_batch("a", &[5, 6, 7], Codec::Snappy), 777_000)
        .unwrap();
    assert_eq!(appended.log_append_time, 777_000);
    assert!(appended.headers[0].log_append_time());
    let raw = log.read_batch(0).unwrap();
    assert_eq!(record_timestamps(&raw).unwrap(), [777_000; 3]);
    validate_batches(&raw).unwrap();
    assert_eq!(log.offset_for_timestamp(700_000), Some((0, 777_000)));
    assert_eq!(log.max_timestamp(), Some((777_000, 0)));
    assert_eq!(log.max_timestamp(), Some((777_000, 0)));
}

#[test]
fn retention_by_time_moves_the_start_offset_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_ms: 10_000,
        ..small_segments()
    };
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let expected = fill(&mut log, 40); // timestamps 1_000 ..= 4_920
    let segments_before = files(dir.path(), "log").len();
    assert_eq!(
        log.enforce_retention(12_000).unwrap(),
        None,
        "nothing is old enough yet"
    );

    // At 14_000 the segments whose newest record is before 4_000 are expired.
    let start = log
        .enforce_retention(14_000)
        .unwrap()
        .expect("the start moved");
    assert!(start > 0 && start < 180);
    assert_eq!(log.start_offset(), start);
    let survivors = files(dir.path(), "log");
    assert!(survivors.len() < segments_before);
    assert_eq!(
        survivors[0].file_name().unwrap().to_str().unwrap(),
        format!("{start:020}.log")
    );
    assert!(
        expected[start as usize - 1].timestamp < 4_000,
        "only expired records went"
    );
    assert!(matches!(
        log.read(start - 1, 100),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(consume(&log, start), expected[start as usize..]);
    assert_eq!(log.enforce_retention(14_000).unwrap(), None);

    drop(log);
    let mut log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (start, 120));
    assert_eq!(consume(&log, start), expected[start as usize..]);
    // Everything but the active segment can go.
    let later = log.enforce_retention(1_000_000).unwrap().unwrap();
    assert_eq!(log.batches(0).unwrap()[0].base_offset, later);
    let appended = log
        .append(&producer_batch("x", &[1], Codec::None), 0)
        .unwrap();
    assert_eq!(appended.base_offset, 120);
}

/// A log whose topic was deleted: its folder is about to move, and a topic
/// created again under the same name may own the old paths; so nothing is
/// appended, rolled, retained or removed by path any more, while reads of the
/// open files still work.
#[test]
fn a_retired_log_touches_no_file_by_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_ms: 10_000,
        segment_ms: 1,
        ..small_segments()
    };
    let mut log = PartitionLog::open(dir.path(), cfg).unwrap();
    let expected = fill(&mut log, 40);
    let listing = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let before = listing(dir.path());

    log.retire();
    let refused = log.append(&producer_batch("late", &[1], Codec::None), 60_000);
    assert!(
        matches!(&refused, Err(Error::Io { .. })),
        "append refused: {refused:?}"
    );
    assert!(!log.roll_if_due(1_000_000).unwrap());
    assert_eq!(log.enforce_retention(1_000_000).unwrap(), None);
    assert_eq!((log.start_offset(), log.end_offset()), (0, 120));
    assert_eq!(consume(&log, 0), expected);
    log.delete().unwrap();
    assert_eq!(
        listing(dir.path()),
        before,
        "no file was created, changed in name or removed"
    );
}

#[test]
fn retention_by_size_keeps_the_newest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes: 5_000,
        ..small_segments()
    };
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let expected = fill(&mut log, 150);
    assert!(log.size_bytes() > 10_000);
    let start = log.enforce_retention(0).unwrap().expect("over the limit");
    let sizes: Vec<u64> = files(dir.path(), "log")
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    let total: u64 = sizes.iter().sum();
    assert_eq!(log.size_bytes(), total);
    assert!(total >= 5_000, "no more than needed was deleted");
    assert!(total - sizes[0] < 5_000, "as much as allowed was deleted");
    assert_eq!(consume(&log, start), expected[start as usize..]);
    drop(log);
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(log.start_offset(), start);
}

#[test]
fn a_torn_tail_is_cut_at_reopen_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let expected = fill(&mut log, 10);
    drop(log);

    let path = &files(dir.path(), "log")[0];
    let len = std::fs::metadata(path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len - 7).unwrap();
    drop(file);
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(&[0xab; 100]).unwrap();
    drop(file);

    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.end_offset(), 27, "the torn tenth batch is gone");
    assert_eq!(consume(&log, 0), expected[..27]);
    let appended = log
        .append(&producer_batch("after", &[1, 2], Codec::None), 0)
        .unwrap();
    assert_eq!(appended.base_offset, 27);
    drop(log);
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let seen = consume(&log, 0);
    assert_eq!(seen.len(), 29);
    assert_eq!(seen[27].value, "after-0");
}

#[test]
fn a_corrupt_batch_in_the_active_segment_is_cut_with_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let expected = fill(&mut log, 10);
    let fifth = log.batches(12).unwrap()[0];
    let position: u64 = log
        .batches(0)
        .unwrap()
        .iter()
        .take_while(|h| h.base_offset < fifth.base_offset)
        .map(|h| h.size() as u64)
        .sum();
    drop(log);
    let path = &files(dir.path(), "log")[0];
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position as usize + fifth.size() - 3] ^= 0xff;
    std::fs::write(path, bytes).unwrap();

    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.end_offset(), fifth.base_offset);
    assert_eq!(consume(&log, 0), expected[..fifth.base_offset as usize]);
}

#[test]
fn a_torn_first_batch_of_a_new_segment_leaves_it_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    let mut expected = fill(&mut log, 25);
    let active_base = |dir: &Path| -> i64 {
        let active = files(dir, "log").pop().unwrap();
        active
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Until the active segment holds exactly one batch.
    while log.batches(log.end_offset() - 1).unwrap()[0].base_offset != active_base(dir.path()) {
        expected.extend(fill(&mut log, 1));
    }
    let active_base = active_base(dir.path());
    drop(log);
    let active = files(dir.path(), "log").pop().unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap();
    file.set_len(30).unwrap();
    drop(file);
    let mut log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.end_offset(), active_base);
    assert_eq!(consume(&log, 0), expected[..active_base as usize]);
    let appended = log
        .append(&producer_batch("n", &[1], Codec::None), 0)
        .unwrap();
    assert_eq!(appended.base_offset, active_base);
}

#[test]
fn missing_and_damaged_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_bytes: 1_500,
        index_interval_bytes: 100,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let expected = fill(&mut log, 60);
    drop(log);
    let indexes = files(dir.path(), "index");
    let time_indexes = files(dir.path(), "timeindex");
    assert!(indexes.len() >= 4);
    assert!(
        std::fs::metadata(&indexes[0]).unwrap().len() >= 16,
        "sparse, but not empty"
    );

    std::fs::remove_file(&indexes[0]).unwrap();
    // Not a whole number of entries.
    let mut torn = std::fs::read(&time_indexes[1]).unwrap();
    torn.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&time_indexes[1], torn).unwrap();
    // Entries out of order.
    let mut swapped = std::fs::read(&indexes[2]).unwrap();
    let (first, second) = swapped.split_at_mut(8);
    first.swap_with_slice(&mut second[..8]);
    std::fs::write(&indexes[2], swapped).unwrap();
    // An entry past the end of the segment.
    let mut past = std::fs::read(&indexes[1]).unwrap();
    past.extend_from_slice(&[0, 0, 0, 100, 0x7f, 0, 0, 0]);
    std::fs::write(&indexes[1], past).unwrap();
    // The active segment's time index.
    std::fs::remove_file(time_indexes.last().unwrap()).unwrap();

    let log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    assert_eq!(consume(&log, 0), expected);
    for ts in [1_000, 1_015, 3_333, 6_920, 7_000] {
        assert_eq!(
            log.offset_for_timestamp(ts),
            model_lookup(&expected, ts),
            "{ts}"
        );
    }
    assert_eq!(log.max_timestamp(), Some((6_920, 179)));
    for path in files(dir.path(), "index") {
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() % 8,
            0,
            "{}",
            path.display()
        );
    }
    for path in files(dir.path(), "timeindex") {
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len > 0 && len % 12 == 0, "{}", path.display());
    }
    assert!(indexes[0].exists());
    drop(log);
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(consume(&log, 0), expected);
}

#[test]
fn segments_roll_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms: 1_000,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    assert!(
        !log.roll_if_due(1_000_000).unwrap(),
        "an empty segment never rolls"
    );
    log.append(&producer_batch("a", &[1], Codec::None), 10_000)
        .unwrap();
    assert!(!log.roll_if_due(10_999).unwrap());
    assert!(log.roll_if_due(11_000).unwrap());
    assert_eq!(files(dir.path(), "log").len(), 2);
    assert!(!log.roll_if_due(50_000).unwrap());
    log.append(&producer_batch("b", &[1], Codec::None), 50_000)
        .unwrap();
    log.append(&producer_batch("c", &[1], Codec::None), 51_500)
        .unwrap();
    assert_eq!(
        files(dir.path(), "log").len(),
        3,
        "the append rolled the due segment"
    );
    assert_eq!(consume(&log, 0).len(), 3);
}

#[test]
fn the_server_can_share_logs_and_handles_across_threads() {
    fn sendable<T: Send + 'static>() {}
    fn shareable<T: Send + Sync + 'static>() {}
    sendable::<PartitionLog>();
    sendable::<tally_broker::log::SyncHandle>();
    shareable::<Flusher>();
}

#[test]
fn bad_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_bytes: 0,
        ..LogConfig::default()
    };
    let err = PartitionLog::open(dir.path(), cfg).unwrap_err().to_string();
    assert!(err.contains("segment_bytes '0'"), "{err}");
    let cfg = LogConfig {
        retention_ms: -5,
        ..LogConfig::default()
    };
    let err = PartitionLog::open(dir.path(), cfg).unwrap_err().to_string();
    assert!(err.contains("retention_ms '-5'"), "{err}");
}

#[test]
fn delete_removes_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders-0");
    let mut log = PartitionLog::open(&path, LogConfig::default()).unwrap();
    fill(&mut log, 3);
    log.delete().unwrap();
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(parking_lot::Mutex::new(
        PartitionLog::open(dir.path(), LogConfig::default()).unwrap(),
    ));
    let flusher = Arc::new(Flusher::start(FsyncPolicy::Always));
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (log, flusher, barrier) = (log.clone(), flusher.clone(), barrier.clone());
            tokio::spawn(async move {
                let handle = {
                    let mut log = log.lock();
                    log.append(&producer_batch(&format!("p{i}"), &[i], Codec::None), 0)
                        .unwrap();
                    log.sync_handle()
                };
                barrier.wait().await;
                flusher.durable(handle).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        flusher.fsyncs(),
        1,
        "one fsync begun after all 50 appends covers every waiter"
    );

    // Each durable() after a new append needs a new fsync, and gets one.
    let handle = {
        let mut log = log.lock();
        log.append(&producer_batch("q", &[1], Codec::None), 0)
            .unwrap();
        log.sync_handle()
    };
    flusher.durable(handle.clone()).await.unwrap();
    assert_eq!(flusher.fsyncs(), 2);
    flusher.durable(handle).await.unwrap();
    assert_eq!(flusher.fsyncs(), 2, "nothing new to make durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_without_a_barrier_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(parking_lot::Mutex::new(
        PartitionLog::open(dir.path(), LogConfig::default()).unwrap(),
    ));
    let flusher = Arc::new(Flusher::start(FsyncPolicy::Always));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (log, flusher) = (log.clone(), flusher.clone());
            tokio::spawn(async move {
                let handle = {
                    let mut log = log.lock();
                    log.append(&producer_batch(&format!("p{i}"), &[i], Codec::None), 0)
                        .unwrap();
                    log.sync_handle()
                };
                flusher.durable(handle).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }
    assert!((1..=50).contains(&flusher.fsyncs()), "{}", flusher.fsyncs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_and_never_policies_answer_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let never = Flusher::start(FsyncPolicy::Never);
    let interval = Flusher::start(FsyncPolicy::Interval(Duration::from_millis(50)));
    log.append(&producer_batch("a", &[1], Codec::None), 0)
        .unwrap();
    never.durable(log.sync_handle()).await.unwrap();
    interval.durable(log.sync_handle()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while interval.fsyncs() == 0 {
        assert!(
            Instant::now() < deadline,
            "the interval flusher never fsynced"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(never.fsyncs(), 0);
    assert_eq!(interval.fsyncs(), 1, "one dirty file, one fsync");
}

const CRASH_CHILD: &str = "TALLY_LOG_CRASH_CHILD";

#[test]
fn acknowledged_appends_survive_kill_dash_nine() {
    if let Ok(dir) = std::env::var(CRASH_CHILD) {
        crash_child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_appends_survive_kill_dash_nine",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked: Vec<(i64, i64, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acked.len() < 300 && Instant::now() < deadline {
        let Some(line) = lines.next() else { break };
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("acked ") {
            let parts: Vec<&str> = rest.split(' ').collect();
            acked.push((
                parts[0].parse().unwrap(),
                parts[1].parse().unwrap(),
                parts[2].to_string(),
            ));
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush, mid-append
    child.wait().unwrap();
    assert!(
        acked.len() >= 300,
        "the child acknowledged only {} appends",
        acked.len()
    );

    let log = PartitionLog::open(
        dir.path(),
        LogConfig {
            segment_bytes: 16 * 1024,
            ..LogConfig::default()
        },
    )
    .unwrap();
    let seen = consume(&log, 0);
    for (base, last, value) in &acked {
        assert!(
            *last < log.end_offset(),
            "acknowledged offset {last} was lost"
        );
        let record = &seen[*base as usize];
        assert_eq!((record.offset, &record.value), (*base, value));
    }
    let offsets: Vec<i64> = seen.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..log.end_offset()).collect::<Vec<_>>());
}

/// Appends from several tasks, acknowledging on stdout after `durable`,
/// until killed (or a minute passes).
fn crash_child(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let log = Arc::new(parking_lot::Mutex::new(
            PartitionLog::open(
                dir,
                LogConfig {
                    segment_bytes: 16 * 1024,
                    ..LogConfig::default()
                },
            )
            .unwrap(),
        ));
        let flusher = Arc::new(Flusher::start(FsyncPolicy::Always));
        let stdout = Arc::new(parking_lot::Mutex::new(std::io::stdout()));
        let started = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|task| {
                let (log, flusher, stdout) = (log.clone(), flusher.clone(), stdout.clone());
                tokio::spawn(async move {
                    for n in 0.. {
                        if started.elapsed() > Duration::from_secs(60) {
                            break;
                        }
                        let label = format!("t{task}n{n}");
                        let batch = producer_batch(&label, &[n, n + 1, n + 2], Codec::None);
                        let (appended, handle) = {
                            let mut log = log.lock();
                            (log.append(&batch, 0).unwrap(), log.sync_handle())
                        };
                        flusher.durable(handle).await.unwrap();
                        let mut out = stdout.lock();
                        writeln!(
                            out,
                            "acked {} {} {label}-0",
                            appended.base_offset, appended.last_offset
                        )
                        .unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn delete_records_moves_the_start_deletes_whole_segments_below_it_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    let expected = fill(&mut log, 60);
    let segments_before = files(dir.path(), "log").len();
    assert!(segments_before > 3, "{segments_before} segments");
    // Mid-batch: readers start there, whole segments below it are gone.
    assert_eq!(log.delete_records(100).unwrap(), 100);
    assert_eq!(log.start_offset(), 100);
    assert!(
        log.read(99, 1 << 20).is_err(),
        "below the start is out of range"
    );
    assert!(files(dir.path(), "log").len() < segments_before);
    let seen = consume(&log, 100);
    assert_eq!(seen.first().map(|r| r.offset), Some(100));
    assert_eq!(seen, expected[100..].to_vec());
    // Lower than the start: nothing changes. Past the end: refused.
    assert_eq!(log.delete_records(50).unwrap(), 100);
    assert!(log.delete_records(181).is_err());
    assert_eq!(log.start_offset(), 100);
    drop(log);
    let mut log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (100, 180));
    // -1: everything; appends go on after it.
    assert_eq!(log.delete_records(-1).unwrap(), 180);
    assert_eq!(log.start_offset(), 180);
    assert!(consume(&log, 180).is_empty());
}
