//! Just enough of the record format to find the first record at or after an offset in a
//! Fetch answer, with bounds checks on every field: the batch header (v2), and in an
//! uncompressed batch each record's length, timestamp delta and offset delta. Keys,
//! values and headers are skipped, never copied, and nothing is decompressed.
//!
//! A compressed batch is judged by its header, which is never compressed: its base
//! offset and first timestamp (the max timestamp for LogAppendTime batches).

use super::fetch::FetchedRecord;

/// Batch header bytes up to and including the record count.
const V2_HEADER: usize = 61;
/// Of those, the bytes after the batch length field.
const V2_MIN_LENGTH: usize = V2_HEADER - 12;

const COMPRESSION_MASK: i16 = 0x07;
const LOG_APPEND_TIME: i16 = 0x08;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

/// An aborted transaction of a read_committed Fetch answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AbortedTransaction {
    pub(crate) producer_id: i64,
    pub(crate) first_offset: i64,
}

/// Reads big-endian fields and varints from a slice, failing rather than running off
/// its end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| format!("a field runs past the end of its batch at byte {}", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn i8(&mut self) -> Result<i8, String> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A zigzag varint of at most `max_bytes` bytes.
    fn zigzag(&mut self, max_bytes: u32) -> Result<i64, String> {
        let mut value: u64 = 0;
        for i in 0..max_bytes {
            let [byte] = self.array::<1>()?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(format!("a varint longer than {max_bytes} bytes"))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
}

/// The offset after the last whole batch in Fetch `records` (control and aborted
/// batches included: they take offsets too), read from the batch headers only; `None`
/// when no whole v2 batch is there. A broker's answer can then be checked against
/// what it served: one peer (tansu) reports a high watermark and a ListOffsets
/// `latest` of the last batch's base offset + 1, below records it serves.
pub(crate) fn next_offset(records: &[u8]) -> Option<i64> {
    let mut cursor = Cursor::new(records);
    let mut next = None;
    while cursor.remaining() >= 17 {
        let base_offset = cursor.i64().ok()?;
        let length = usize::try_from(cursor.i32().ok()?).ok()?;
        if cursor.remaining() < length {
            break;
        }
        let batch = cursor.take(length).ok()?;
        // partition leader epoch (4), magic (1), crc (4), attributes (2), last offset delta (4)
        if batch.get(4) != Some(&2) || batch.len() < 15 {
            continue;
        }
        let delta = i32::from_be_bytes(batch[11..15].try_into().ok()?);
        let after = base_offset
            .saturating_add(i64::from(delta.max(0)))
            .saturating_add(1);
        next = Some(next.map_or(after, |n: i64| n.max(after)));
    }
    next
}

/// The first record at or after `from` in Fetch `records`, or `None` when the records
/// hold none (empty, only control batches, only aborted data, or only a batch cut off
/// by the size limit). With `aborted` (read_committed), transactional batches of an
/// aborted transaction are skipped. Errors name what is malformed.
pub(crate) fn first_record(
    records: &[u8],
    from: i64,
    aborted: Option<&[AbortedTransaction]>,
) -> Result<Option<FetchedRecord>, String> {
    let mut pending: Vec<AbortedTransaction> = aborted.map(<[_]>::to_vec).unwrap_or_default();
    pending.sort_by_key(|a| std::cmp::Reverse(a.first_offset));
    let mut aborting: Vec<i64> = Vec::new();
    let mut cursor = Cursor::new(records);
    while cursor.remaining() >= 17 {
        let start = cursor.at;
        let base_offset = cursor.i64()?;
        let length = cursor.i32()?;
        let length =
            usize::try_from(length).map_err(|_| format!("negative batch length {length}"))?;
        if cursor.remaining() < length {
            // The broker cuts the last batch at the size limit: it is not an error.
            break;
        }
        let batch = cursor.take(length)?;
        let magic = batch.get(4).map(|m| *m as i8).unwrap_or(-1);
        match magic {
            2 => {}
            0 | 1 => {
                if let Some(found) = legacy_message(base_offset, magic, batch, from)? {
                    return Ok(Some(found));
                }
                continue;
            }
            other => {
                return Err(format!(
                    "record batch at byte {start} has magic {other}; expected 0, 1 or 2"
                ));
            }
        }
        if length < V2_MIN_LENGTH {
            return Err(format!(
                "record batch at byte {start} is {length} bytes long, shorter than its header"
            ));
        }
        let mut header = Cursor::new(batch);
        let _leader_epoch = header.i32()?;
        let _magic = header.i8()?;
        let crc = header.u32()?;
        if crc32c::crc32c(&batch[9..]) != crc {
            return Err(format!(
                "record batch at offset {base_offset} fails its CRC"
            ));
        }
        let attributes = header.i16()?;
        let last_offset_delta = header.i32()?;
        let first_timestamp = header.i64()?;
        let max_timestamp = header.i64()?;
        let producer_id = header.i64()?;
        let _producer_epoch = header.i16()?;
        let _base_sequence = header.i32()?;
        let count = header.i32()?;
        let last_offset = base_offset.saturating_add(i64::from(last_offset_delta));

        // Kafka's consumer: a producer's transaction is aborted from the first offset in
        // the aborted list until its next control batch (the abort marker).
        while let Some(next) = pending.last() {
            if next.first_offset > last_offset {
                break;
            }
            aborting.push(next.producer_id);
            pending.pop();
        }
        if attributes & CONTROL != 0 {
            aborting.retain(|p| *p != producer_id);
            continue;
        }
        if attributes & TRANSACTIONAL != 0 && aborting.contains(&producer_id) {
            continue;
        }
        if last_offset < from {
            continue;
        }
        let log_append = attributes & LOG_APPEND_TIME != 0;
        if attributes & COMPRESSION_MASK != 0 {
            return Ok(Some(FetchedRecord {
                offset: base_offset.max(from),
                timestamp_ms: if log_append {
                    max_timestamp
                } else {
                    first_timestamp
                },
            }));
        }
        let mut records = header;
        for _ in 0..count.max(0) {
            let size = records.zigzag(5)?;
            let size =
                usize::try_from(size).map_err(|_| format!("negative record length {size}"))?;
            let mut record = Cursor::new(records.take(size)?);
            let _attributes = record.i8()?;
            let timestamp_delta = record.zigzag(10)?;
            let offset_delta = record.zigzag(5)?;
            let offset = base_offset.saturating_add(offset_delta);
            if offset >= from {
                return Ok(Some(FetchedRecord {
                    offset,
                    timestamp_ms: if log_append {
                        max_timestamp
                    } else {
                        first_timestamp.saturating_add(timestamp_delta)
                    },
                }));
            }
        }
    }
    Ok(None)
}

/// A message of the formats before record batches (v0, v1): its offset and (v1) its
/// timestamp; a compressed wrapper gives its own, those of its last inner message.
fn legacy_message(
    offset: i64,
    magic: i8,
    message: &[u8],
    from: i64,
) -> Result<Option<FetchedRecord>, String> {
    if offset < from {
        return Ok(None);
    }
    let mut c = Cursor::new(message);
    let _crc = c.u32()?;
    let _magic = c.i8()?;
    let _attributes = c.i8()?;
    let timestamp_ms = if magic == 1 { c.i64()? } else { -1 };
    Ok(Some(FetchedRecord {
        offset,
        timestamp_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// A v2 batch of records with these (offset delta, timestamp delta) pairs.
    fn batch(
        base: i64,
        attributes: i16,
        producer: i64,
        first_ts: i64,
        recs: &[(i64, i64)],
    ) -> Vec<u8> {
        let mut body = Vec::new();
        for (od, td) in recs {
            let mut r = vec![0u8];
            varint(&mut r, *td);
            varint(&mut r, *od);
            varint(&mut r, -1); // key
            varint(&mut r, 1); // value
            r.push(b'x');
            varint(&mut r, 0); // headers
            varint(&mut body, r.len() as i64);
            body.extend(r);
        }
        let last_delta = recs.last().map(|r| r.0).unwrap_or(0) as i32;
        let max_ts = first_ts + recs.iter().map(|r| r.1).max().unwrap_or(0);
        let mut after_crc = Vec::new();
        after_crc.extend(attributes.to_be_bytes());
        after_crc.extend(last_delta.to_be_bytes());
        after_crc.extend(first_ts.to_be_bytes());
        after_crc.extend(max_ts.to_be_bytes());
        after_crc.extend(producer.to_be_bytes());
        after_crc.extend(0i16.to_be_bytes());
        after_crc.extend((-1i32).to_be_bytes());
        after_crc.extend((recs.len() as i32).to_be_bytes());
        after_crc.extend(body);
        let mut out = Vec::new();
        out.extend(base.to_be_bytes());
        out.extend(((after_crc.len() + 9) as i32).to_be_bytes());
        out.extend(0i32.to_be_bytes());
        out.push(2);
        out.extend(crc32c::crc32c(&after_crc).to_be_bytes());
        out.extend(after_crc);
        out
    }

    fn rec(offset: i64, timestamp_ms: i64) -> Option<FetchedRecord> {
        Some(FetchedRecord {
            offset,
            timestamp_ms,
        })
    }

    #[test]
    fn finds_the_record_at_or_after_the_offset() {
        let b = batch(10, 0, -1, 1000, &[(0, 0), (1, 5), (2, 9)]);
        assert_eq!(first_record(&b, 10, None).unwrap(), rec(10, 1000));
        assert_eq!(first_record(&b, 11, None).unwrap(), rec(11, 1005));
        assert_eq!(first_record(&b, 12, None).unwrap(), rec(12, 1009));
        assert_eq!(first_record(&b, 13, None).unwrap(), None);
        // Compaction leaves gaps: the next record there is.
        let gap = batch(20, 0, -1, 1000, &[(0, 0), (4, 7)]);
        assert_eq!(first_record(&gap, 21, None).unwrap(), rec(24, 1007));
        // Log append time: the batch's max timestamp for every record.
        let append = batch(0, LOG_APPEND_TIME, -1, 1000, &[(0, 1), (1, 3)]);
        assert_eq!(first_record(&append, 0, None).unwrap(), rec(0, 1003));
    }

    #[test]
    fn a_compressed_batch_is_judged_by_its_header() {
        let mut b = batch(100, 0, -1, 5000, &[(0, 0), (1, 2)]);
        // Flag it gzip; the records are not looked at, so their bytes do not matter,
        // but the CRC must still hold.
        b[21..23].copy_from_slice(&1i16.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(first_record(&b, 100, None).unwrap(), rec(100, 5000));
        assert_eq!(first_record(&b, 101, None).unwrap(), rec(101, 5000));
    }

    #[test]
    fn control_and_aborted_batches_are_skipped() {
        let mut all = batch(0, TRANSACTIONAL, 7, 100, &[(0, 0), (1, 0)]);
        all.extend(batch(2, TRANSACTIONAL | CONTROL, 7, 100, &[(0, 0)]));
        all.extend(batch(3, TRANSACTIONAL, 7, 300, &[(0, 0)]));
        let aborted = [AbortedTransaction {
            producer_id: 7,
            first_offset: 0,
        }];
        assert_eq!(first_record(&all, 0, Some(&aborted)).unwrap(), rec(3, 300));
        // read_uncommitted sees the aborted records; the marker is never a record.
        assert_eq!(first_record(&all, 0, None).unwrap(), rec(0, 100));
        assert_eq!(first_record(&all, 2, None).unwrap(), rec(3, 300));
    }

    #[test]
    fn next_offset_is_after_the_last_whole_batch() {
        let mut all = batch(0, 0, -1, 100, &[(0, 0), (1, 0), (2, 0)]);
        all.extend(batch(3, TRANSACTIONAL | CONTROL, 7, 100, &[(0, 0)]));
        assert_eq!(next_offset(&all), Some(4));
        let whole = all.len();
        all.extend(batch(4, 0, -1, 100, &[(0, 0), (9, 0)]));
        assert_eq!(next_offset(&all), Some(14));
        // A batch cut off by the size limit says nothing.
        all.truncate(whole + 20);
        assert_eq!(next_offset(&all), Some(4));
        assert_eq!(next_offset(&[]), None);
        assert_eq!(next_offset(&[0xff; 40]), None);
    }

    #[test]
    fn a_cut_off_last_batch_ends_the_records_and_damage_is_an_error() {
        let mut b = batch(0, 0, -1, 1, &[(0, 0)]);
        let full = b.clone();
        b.truncate(b.len() - 3);
        assert_eq!(first_record(&b, 0, None).unwrap(), None);
        assert_eq!(first_record(&[], 0, None).unwrap(), None);
        let mut bad = full.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(first_record(&bad, 0, None).unwrap_err().contains("CRC"));
        let mut negative = full.clone();
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(
            first_record(&negative, 0, None)
                .unwrap_err()
                .contains("negative")
        );
        let mut magic = full;
        magic[16] = 9;
        assert!(
            first_record(&magic, 0, None)
                .unwrap_err()
                .contains("magic 9")
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let good = batch(0, 0, -1, 1, &[(0, 0), (1, 1)]);
        for _ in 0..5000 {
            let mut b = good.clone();
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            let cut = rng.random_range(0..=b.len());
            let _ = first_record(&b[..cut], rng.random_range(-1..3), None);
        }
    }
}
