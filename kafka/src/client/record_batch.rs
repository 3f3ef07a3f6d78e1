//! Just enough of the record format to read Fetch answers, with bounds checks on every
//! field: the batch header (v2, CRC checked), and in an uncompressed batch each record's
//! length, timestamp delta and offset delta, and (for [`read_records`]) its key and value
//! as slices of the answer, never copies. Headers are skipped and nothing is
//! decompressed.
//!
//! - [`first_record`]: the first record at or after an offset. A compressed batch is
//!   judged by its header, which is never compressed: its base offset and first
//!   timestamp (the max timestamp for LogAppendTime batches).
//! - [`read_records`]: every record at or after an offset. A compressed batch is passed
//!   over and counted (this crate has no codecs yet).
//!
//! Nothing is sized by a length read off the wire: every length is checked against the
//! bytes received before it is used.

use bytes::Bytes;

use super::fetch::{FetchedRecord, Record};

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
pub struct AbortedTransaction {
    /// The transactional producer.
    pub producer_id: i64,
    /// The offset of the transaction's first batch.
    pub first_offset: i64,
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

/// Kafka's consumer's rule for read_committed: a producer's transaction is aborted from
/// the first offset in the answer's aborted list until its next control batch (the
/// abort marker). Fed every batch in log order.
#[derive(Debug, Default)]
pub struct Aborts {
    /// Aborted transactions not reached yet, the lowest first offset last.
    pending: Vec<AbortedTransaction>,
    /// Producers inside an aborted transaction.
    aborting: Vec<i64>,
}

/// What a read_committed reader makes of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchKind {
    /// Records a reader sees.
    Data,
    /// A control batch (a transaction marker): no records.
    Control,
    /// A batch of an aborted transaction.
    Aborted,
}

impl Aborts {
    /// The rule for one Fetch answer's batches, from its aborted list (`None`:
    /// read_uncommitted, where nothing is aborted).
    pub fn new(aborted: Option<&[AbortedTransaction]>) -> Aborts {
        let mut pending: Vec<AbortedTransaction> = aborted.map(<[_]>::to_vec).unwrap_or_default();
        pending.sort_by_key(|a| std::cmp::Reverse(a.first_offset));
        Aborts {
            pending,
            aborting: Vec::new(),
        }
    }

    /// Whether the batch holds no records a reader sees: a control batch (which also
    /// ends its producer's aborted transaction), or a batch of an aborted transaction.
    fn passes_over(&mut self, header: &BatchHeader) -> bool {
        self.kind(header.attributes, header.last_offset, header.producer_id) != BatchKind::Data
    }

    /// Classifies the next batch in log order from its header's attributes, last
    /// offset and producer id.
    pub fn kind(&mut self, attributes: i16, last_offset: i64, producer_id: i64) -> BatchKind {
        while let Some(next) = self.pending.last() {
            if next.first_offset > last_offset {
                break;
            }
            self.aborting.push(next.producer_id);
            self.pending.pop();
        }
        if attributes & CONTROL != 0 {
            self.aborting.retain(|p| *p != producer_id);
            return BatchKind::Control;
        }
        if attributes & TRANSACTIONAL != 0 && self.aborting.contains(&producer_id) {
            BatchKind::Aborted
        } else {
            BatchKind::Data
        }
    }
}

/// The fields of a v2 batch header that the readers use.
struct BatchHeader {
    attributes: i16,
    last_offset: i64,
    first_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    count: i32,
}

impl BatchHeader {
    fn is_compressed(&self) -> bool {
        self.attributes & COMPRESSION_MASK != 0
    }

    fn is_log_append_time(&self) -> bool {
        self.attributes & LOG_APPEND_TIME != 0
    }

    /// A record's timestamp from its delta (the batch's max timestamp for every record
    /// of a LogAppendTime batch).
    fn timestamp(&self, delta: i64) -> i64 {
        if self.is_log_append_time() {
            self.max_timestamp
        } else {
            self.first_timestamp.saturating_add(delta)
        }
    }
}

/// Reads and checks the header of the v2 `batch` (the bytes after its length field) at
/// `base_offset`, byte `start` of the answer; the cursor it returns is at the first
/// record.
fn batch_header(
    batch: &[u8],
    base_offset: i64,
    start: usize,
) -> Result<(BatchHeader, Cursor<'_>), String> {
    if batch.len() < V2_MIN_LENGTH {
        return Err(format!(
            "record batch at byte {start} is {} bytes long, shorter than its header",
            batch.len()
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
    Ok((
        BatchHeader {
            attributes,
            last_offset: base_offset.saturating_add(i64::from(last_offset_delta)),
            first_timestamp,
            max_timestamp,
            producer_id,
            count,
        },
        header,
    ))
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
    let mut aborts = Aborts::new(aborted);
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
        let (header, mut records) = batch_header(batch, base_offset, start)?;
        if aborts.passes_over(&header) || header.last_offset < from {
            continue;
        }
        if header.is_compressed() {
            return Ok(Some(FetchedRecord {
                offset: base_offset.max(from),
                timestamp_ms: header.timestamp(0),
            }));
        }
        for _ in 0..header.count.max(0) {
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
                    timestamp_ms: header.timestamp(timestamp_delta),
                }));
            }
        }
    }
    Ok(None)
}

/// What [`read_records`] found in one Fetch answer.
#[derive(Debug, Default)]
pub(crate) struct RecordsRead {
    /// The records at or after the offset asked for, in log order.
    pub(crate) records: Vec<Record>,
    /// The offset after the last whole batch (or legacy message): where the next read
    /// starts. `None` when the answer held nothing whole.
    pub(crate) next_offset: Option<i64>,
    /// Compressed batches passed over.
    pub(crate) skipped_compressed_batches: u32,
}

/// Every record at or after `from` in Fetch `records`, with its key and value (slices
/// of `records`, not copies). Control batches hold no records; with `aborted`
/// (read_committed) the batches of aborted transactions are passed over; compressed
/// batches (and compressed legacy wrappers) are passed over and counted. A batch cut
/// off by the size limit ends the answer. Errors name what is malformed (a CRC that
/// fails, a length that runs past its batch, an unknown magic).
pub(crate) fn read_records(
    records: &Bytes,
    from: i64,
    aborted: Option<&[AbortedTransaction]>,
) -> Result<RecordsRead, String> {
    let mut aborts = Aborts::new(aborted);
    let mut out = RecordsRead::default();
    let mut cursor = Cursor::new(records);
    while cursor.remaining() >= 17 {
        let start = cursor.at;
        let base_offset = cursor.i64()?;
        let length = cursor.i32()?;
        let length =
            usize::try_from(length).map_err(|_| format!("negative batch length {length}"))?;
        if cursor.remaining() < length {
            break;
        }
        let batch_at = cursor.at;
        let batch = cursor.take(length)?;
        let magic = batch.get(4).map(|m| *m as i8).unwrap_or(-1);
        let last_offset = match magic {
            2 => {
                let (header, body) = batch_header(batch, base_offset, start)?;
                if !aborts.passes_over(&header) && header.last_offset >= from {
                    if header.is_compressed() {
                        out.skipped_compressed_batches += 1;
                    } else {
                        read_batch(
                            records,
                            batch_at,
                            &header,
                            base_offset,
                            body,
                            from,
                            &mut out.records,
                        )?;
                    }
                }
                header.last_offset
            }
            0 | 1 => {
                if base_offset >= from {
                    match legacy_record(records, batch_at, base_offset, magic, batch)? {
                        Some(record) => out.records.push(record),
                        None => out.skipped_compressed_batches += 1,
                    }
                }
                base_offset
            }
            other => {
                return Err(format!(
                    "record batch at byte {start} has magic {other}; expected 0, 1 or 2"
                ));
            }
        };
        let after = last_offset.saturating_add(1);
        out.next_offset = Some(out.next_offset.map_or(after, |n| n.max(after)));
    }
    Ok(out)
}

/// The records of the uncompressed v2 batch whose records start at `body` (a cursor
/// over the batch, which begins at byte `batch_at` of `all`) at or after `from`.
fn read_batch(
    all: &Bytes,
    batch_at: usize,
    header: &BatchHeader,
    base_offset: i64,
    mut body: Cursor<'_>,
    from: i64,
    out: &mut Vec<Record>,
) -> Result<(), String> {
    for _ in 0..header.count.max(0) {
        let size = body.zigzag(5)?;
        let size = usize::try_from(size).map_err(|_| format!("negative record length {size}"))?;
        let record_at = batch_at + body.at;
        let mut record = Cursor::new(body.take(size)?);
        let _attributes = record.i8()?;
        let timestamp_delta = record.zigzag(10)?;
        let offset_delta = record.zigzag(5)?;
        let key = varint_bytes(&mut record)?;
        let value = varint_bytes(&mut record)?;
        // Headers are skipped with the rest of the record.
        let offset = base_offset.saturating_add(offset_delta);
        if offset < from {
            continue;
        }
        let slice = |range: Option<(usize, usize)>| {
            range.map(|(at, len)| all.slice(record_at + at..record_at + at + len))
        };
        out.push(Record {
            offset,
            timestamp_ms: header.timestamp(timestamp_delta),
            key: slice(key),
            value: slice(value),
        });
    }
    Ok(())
}

/// A varint-length byte field of a v2 record: `None` for null (-1), else where it is
/// in the record and how long.
fn varint_bytes(c: &mut Cursor<'_>) -> Result<Option<(usize, usize)>, String> {
    let len = c.zigzag(5)?;
    if len < 0 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| format!("field length {len}"))?;
    let at = c.at;
    c.take(len)?;
    Ok(Some((at, len)))
}

/// An int32-length byte field of a legacy message, as [`varint_bytes`].
fn i32_bytes(c: &mut Cursor<'_>) -> Result<Option<(usize, usize)>, String> {
    let len = c.i32()?;
    if len < 0 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| format!("field length {len}"))?;
    let at = c.at;
    c.take(len)?;
    Ok(Some((at, len)))
}

/// CRC-32 (IEEE, reflected, polynomial 0xEDB88320), the checksum of legacy messages
/// (record batches use CRC-32C). Bitwise: legacy messages are rare and small.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// The record of an uncompressed legacy message (v0, v1) that begins at byte `at` of
/// `all`; `None` for a compressed wrapper.
fn legacy_record(
    all: &Bytes,
    at: usize,
    offset: i64,
    magic: i8,
    message: &[u8],
) -> Result<Option<Record>, String> {
    let mut c = Cursor::new(message);
    let crc = c.u32()?;
    if crc32(&message[4..]) != crc {
        return Err(format!("message at offset {offset} fails its CRC"));
    }
    let _magic = c.i8()?;
    let attributes = c.i8()?;
    let timestamp_ms = if magic == 1 { c.i64()? } else { -1 };
    if i16::from(attributes) & COMPRESSION_MASK != 0 {
        return Ok(None);
    }
    let key = i32_bytes(&mut c)?;
    let value = i32_bytes(&mut c)?;
    let slice =
        |range: Option<(usize, usize)>| range.map(|(s, len)| all.slice(at + s..at + s + len));
    Ok(Some(Record {
        offset,
        timestamp_ms,
        key: slice(key),
        value: slice(value),
    }))
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
        seal(base, attributes, producer, first_ts, recs, body)
    }

    /// The v2 batch header around `body`, the encoded records with these (offset
    /// delta, timestamp delta) pairs.
    fn seal(
        base: i64,
        attributes: i16,
        producer: i64,
        first_ts: i64,
        recs: &[(i64, i64)],
        body: Vec<u8>,
    ) -> Vec<u8> {
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

    /// A v2 batch of records (offset delta, timestamp delta, key, value).
    fn batch_kv(
        base: i64,
        attributes: i16,
        first_ts: i64,
        recs: &[(i64, i64, Option<&str>, Option<&str>)],
    ) -> Vec<u8> {
        let mut body = Vec::new();
        for (od, td, k, v) in recs {
            let mut r = vec![0u8];
            varint(&mut r, *td);
            varint(&mut r, *od);
            for field in [k, v] {
                match field {
                    Some(text) => {
                        varint(&mut r, text.len() as i64);
                        r.extend(text.as_bytes());
                    }
                    None => varint(&mut r, -1),
                }
            }
            varint(&mut r, 1); // one header, skipped
            varint(&mut r, 1);
            r.push(b'h');
            varint(&mut r, 1);
            r.push(b'v');
            varint(&mut body, r.len() as i64);
            body.extend(r);
        }
        let deltas: Vec<(i64, i64)> = recs.iter().map(|r| (r.0, r.1)).collect();
        seal(base, attributes, -1, first_ts, &deltas, body)
    }

    fn whole(offset: i64, ts: i64, key: Option<&str>, value: Option<&str>) -> Record {
        let bytes = |text: &str| Bytes::copy_from_slice(text.as_bytes());
        Record {
            offset,
            timestamp_ms: ts,
            key: key.map(bytes),
            value: value.map(bytes),
        }
    }

    #[test]
    fn read_records_gives_keys_values_and_where_to_go_next() {
        let mut all = batch_kv(
            10,
            0,
            1_000,
            &[
                (0, 0, Some("k0"), Some("v0")),
                (1, 5, None, Some("")),
                (3, 9, Some("k3"), None),
            ],
        );
        all.extend(batch_kv(
            14,
            LOG_APPEND_TIME,
            2_000,
            &[(0, 4, Some("k14"), Some("v"))],
        ));
        let all = Bytes::from(all);
        let read = read_records(&all, 11, None).unwrap();
        assert_eq!(
            read.records,
            vec![
                whole(11, 1_005, None, Some("")),
                whole(13, 1_009, Some("k3"), None),
                whole(14, 2_004, Some("k14"), Some("v")),
            ]
        );
        assert_eq!(read.next_offset, Some(15));
        assert_eq!(read.skipped_compressed_batches, 0);
        // A cut-off last batch is read next time.
        let cut = all.slice(..all.len() - 4);
        let read = read_records(&cut, 10, None).unwrap();
        assert_eq!(read.records.len(), 3);
        assert_eq!(read.next_offset, Some(14));
        assert_eq!(
            read_records(&Bytes::new(), 0, None).unwrap().next_offset,
            None
        );
    }

    #[test]
    fn read_records_passes_over_compressed_control_and_aborted_batches() {
        let mut zipped = batch_kv(
            0,
            0,
            100,
            &[(0, 0, Some("a"), Some("b")), (1, 0, None, None)],
        );
        zipped[21..23].copy_from_slice(&4i16.to_be_bytes()); // zstd
        let crc = crc32c::crc32c(&zipped[21..]);
        zipped[17..21].copy_from_slice(&crc.to_be_bytes());
        let mut all = zipped;
        all.extend(batch(2, TRANSACTIONAL, 7, 200, &[(0, 0)]));
        all.extend(batch(3, TRANSACTIONAL | CONTROL, 7, 200, &[(0, 0)]));
        all.extend(batch(4, 0, -1, 300, &[(0, 0)]));
        let all = Bytes::from(all);
        let aborted = [AbortedTransaction {
            producer_id: 7,
            first_offset: 2,
        }];
        let read = read_records(&all, 0, Some(&aborted)).unwrap();
        assert_eq!(read.records, vec![whole(4, 300, None, Some("x"))]);
        assert_eq!(read.skipped_compressed_batches, 1);
        assert_eq!(read.next_offset, Some(5));
        // read_uncommitted sees the aborted record; the marker is never a record.
        let read = read_records(&all, 0, None).unwrap();
        let offsets: Vec<i64> = read.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![2, 4]);
        // A compressed batch wholly below the offset asked for is not counted.
        assert_eq!(
            read_records(&all, 2, None)
                .unwrap()
                .skipped_compressed_batches,
            0
        );
    }

    #[test]
    fn read_records_reads_legacy_messages() {
        // A v1 message: offset, size, crc, magic, attributes, timestamp, key, value.
        let message = |offset: i64, attributes: i8| {
            let mut m = vec![1, attributes as u8];
            m.extend(1_234i64.to_be_bytes());
            m.extend(1i32.to_be_bytes());
            m.push(b'k');
            m.extend((-1i32).to_be_bytes());
            let mut m = [crc32(&m).to_be_bytes().to_vec(), m].concat();
            if offset < 0 {
                m[0] ^= 1;
            }
            let mut out = offset.to_be_bytes().to_vec();
            out.extend((m.len() as i32).to_be_bytes());
            out.extend(m);
            out
        };
        let mut all = message(5, 0);
        all.extend(message(6, 1)); // a gzip wrapper
        let read = read_records(&Bytes::from(all), 0, None).unwrap();
        assert_eq!(read.records, vec![whole(5, 1_234, Some("k"), None)]);
        assert_eq!(read.skipped_compressed_batches, 1);
        assert_eq!(read.next_offset, Some(7));
        // The check value of CRC-32, and a damaged message.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let err = read_records(&Bytes::from(message(-2, 0)), -5, None).unwrap_err();
        assert!(err.contains("CRC"), "{err}");
    }

    #[test]
    fn read_records_refuses_damage() {
        let good = batch_kv(0, 0, 1, &[(0, 0, Some("key"), Some("value"))]);
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let err = read_records(&Bytes::from(bad), 0, None).unwrap_err();
        assert!(err.contains("CRC"), "{err}");
        // A key length that runs past its record, with a CRC that holds.
        let mut long = good;
        let key_len_at = 61 + 4; // header, record length, attributes, two deltas
        long[key_len_at] = 100; // zigzag 50
        let crc = crc32c::crc32c(&long[21..]);
        long[17..21].copy_from_slice(&crc.to_be_bytes());
        let err = read_records(&Bytes::from(long), 0, None).unwrap_err();
        assert!(err.contains("runs past"), "{err}");
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
            let b = Bytes::copy_from_slice(&b[..cut]);
            let _ = read_records(&b, rng.random_range(-1..3), None);
        }
    }
}
