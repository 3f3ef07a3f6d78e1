//! Kafka's v2 record batch (`DefaultRecordBatch`): parsing and validating the
//! header, the few in-place rewrites the broker makes (base offset, log append
//! time), and reading every record's timestamp, decompressing where needed.
//!
//! Every length read from the bytes is checked against the bytes actually
//! present (or, for compressed records, against what the decompressor really
//! produces) before anything is sized from it, so hostile input costs at most
//! its own size plus [`MAX_UNCOMPRESSED_BATCH_BYTES`] of decompression work.

use std::cell::Cell;
use std::io::{self, Read};

/// Why bytes are not a valid v2 record batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A record batch that is not a valid v2 batch.
    #[error("invalid record batch: {0}")]
    InvalidBatch(String),
    /// A record batch whose CRC does not match its contents.
    #[error("corrupt record batch: CRC {stored:#010x} stored, {computed:#010x} computed")]
    CorruptBatch {
        /// The CRC in the batch header.
        stored: u32,
        /// The CRC of the batch's bytes.
        computed: u32,
    },
    /// A batch in a message format older than v2 (magic 0 or 1).
    #[error("record batch with magic {0}: only the v2 format (magic 2) is supported")]
    UnsupportedMagic(i8),
}

/// Result with the record batches' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Header bytes of a v2 batch before its records, including the base offset
/// and batch length fields.
pub const BATCH_OVERHEAD: usize = 61;

/// The most bytes a compressed batch's records may decompress to. Producers'
/// batches are far smaller (a request is 1 MiB by default); the cap keeps a
/// decompression bomb from running away with memory or time.
pub const MAX_UNCOMPRESSED_BATCH_BYTES: u64 = 128 << 20;

/// Why a batch's records could not be read within a decompression budget.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The batch is not a valid v2 batch, or its records do not match its
    /// header (count, offsets, framing).
    #[error(transparent)]
    Invalid(#[from] Error),
    /// The records decompress to more bytes than the caller allows.
    #[error(
        "records decompress to more than the '{limit}' bytes left to decompress: a batch may \
         decompress to at most {MAX_UNCOMPRESSED_BATCH_BYTES} bytes, and the batches of one \
         request to at most max_decompressed_bytes"
    )]
    TooLarge {
        /// The bytes that were left for the batch.
        limit: u64,
    },
}

/// A Produce's batches, checked down to their last record.
#[derive(Debug, Default)]
pub struct CheckedBatches {
    /// Every batch's header, in order.
    pub headers: Vec<BatchHeader>,
    /// Every batch's record timestamps (base timestamp plus delta), in record order.
    pub timestamps: Vec<Vec<i64>>,
    /// Bytes the compressed batches' records decompressed to.
    pub decompressed_bytes: u64,
}

/// The base offset and batch length fields, which `batch_length` does not count.
const LOG_OVERHEAD: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// The CRC covers everything from the attributes to the end of the batch.
const ATTRIBUTES_AT: usize = 21;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
/// Smallest record: length, attributes, timestamp delta, offset delta, key
/// length, value length and header count, one byte each.
const MIN_RECORD_BYTES: usize = 7;
const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;
/// Decompressing zstd needs a window of 2^this bytes at most; Kafka's
/// producers use far less, and a frame asking for more is refused rather
/// than allowed to allocate it.
const ZSTD_WINDOW_LOG_MAX: u32 = 25;
const XERIAL_SNAPPY_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_SNAPPY_HEADER: usize = 16;

/// The codec of a batch's records (attribute bits 0-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Records stored as they are.
    None,
    /// gzip.
    Gzip,
    /// Snappy, in xerial's block framing (or raw).
    Snappy,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// The fixed-size header of a v2 record batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// Bytes after the batch length field to the end of the batch.
    pub batch_length: i32,
    /// Epoch of the leader that appended the batch.
    pub partition_leader_epoch: i32,
    /// Format version; 2 for every batch this crate accepts.
    pub magic: i8,
    /// CRC-32C of the bytes from the attributes to the end of the batch.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control flags.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp the records' deltas are relative to.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch (the append time for LogAppendTime).
    pub max_timestamp: i64,
    /// Idempotent producer id, -1 if none.
    pub producer_id: i64,
    /// Idempotent producer epoch, -1 if none.
    pub producer_epoch: i16,
    /// Sequence number of the first record, -1 if none.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `buf`. Refuses the old message
    /// formats (magic 0 and 1) with [`Error::UnsupportedMagic`], and headers
    /// that are short or whose batch length cannot hold a header. Does not
    /// look at the records or the CRC.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader> {
        if let Some(&magic) = buf.get(MAGIC_AT) {
            let magic = magic as i8;
            match magic {
                2 => {}
                0 | 1 => return Err(Error::UnsupportedMagic(magic)),
                other => {
                    return Err(Error::InvalidBatch(format!(
                        "magic byte '{other}' is unknown: accepted is 2"
                    )));
                }
            }
        }
        let Some(head) = buf.get(..BATCH_OVERHEAD) else {
            return Err(Error::InvalidBatch(format!(
                "'{}' bytes cannot hold a batch header of {BATCH_OVERHEAD} bytes",
                buf.len()
            )));
        };
        let header = BatchHeader {
            base_offset: i64_at(head, 0),
            batch_length: i32_at(head, 8),
            partition_leader_epoch: i32_at(head, 12),
            magic: head[MAGIC_AT] as i8,
            crc: u32_at(head, CRC_AT),
            attributes: i16_at(head, ATTRIBUTES_AT),
            last_offset_delta: i32_at(head, 23),
            base_timestamp: i64_at(head, BASE_TIMESTAMP_AT),
            max_timestamp: i64_at(head, MAX_TIMESTAMP_AT),
            producer_id: i64_at(head, 43),
            producer_epoch: i16_at(head, 51),
            base_sequence: i32_at(head, 53),
            record_count: i32_at(head, 57),
        };
        if (header.batch_length as i64) < (BATCH_OVERHEAD - LOG_OVERHEAD) as i64 {
            return Err(Error::InvalidBatch(format!(
                "batch length '{}' is too small: a v2 batch needs at least {}",
                header.batch_length,
                BATCH_OVERHEAD - LOG_OVERHEAD
            )));
        }
        Ok(header)
    }

    /// Bytes the whole batch takes, header included.
    pub fn size(&self) -> usize {
        LOG_OVERHEAD + usize::try_from(self.batch_length).unwrap_or(0)
    }

    /// Offset of the batch's last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// The offset right after the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// The records' codec; an error for the reserved codes 5-7.
    pub fn compression(&self) -> Result<Compression> {
        match self.attributes & 0x7 {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(Error::InvalidBatch(format!(
                "compression code '{other}' is unknown: accepted are 0 (none), 1 (gzip), \
                 2 (snappy), 3 (lz4) and 4 (zstd)"
            ))),
        }
    }

    /// Whether the timestamps are the broker's append time rather than the
    /// producer's create time.
    pub fn log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// Whether the batch holds control records (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }
}

/// Splits a Produce request's `records` bytes into validated v2 batches:
/// magic 2 only ([`Error::UnsupportedMagic`] for 0 and 1), every length
/// within the bytes, the CRC ([`Error::CorruptBatch`]), at least one record
/// with a record count that matches the last offset delta, a known codec,
/// and for uncompressed batches every record's framing. Empty input is
/// refused: a produce with no batch has nothing to append.
pub fn validate_batches(records: &[u8]) -> Result<Vec<BatchHeader>> {
    validate(records, |_, _, _| {})
}

/// [`validate_batches`], also giving each uncompressed batch's record
/// timestamps (base timestamp plus delta, read in the same walk that checks
/// the records' framing); a compressed batch's list is empty.
pub fn validate_batches_with_timestamps(
    records: &[u8],
) -> Result<(Vec<BatchHeader>, Vec<Vec<i64>>)> {
    let mut timestamps: Vec<Vec<i64>> = Vec::new();
    let headers = validate(records, |batch, count, ts| {
        if timestamps.len() <= batch {
            // `count` is bounded by the batch's size (checked before the walk).
            timestamps.resize_with(batch + 1, || Vec::with_capacity(count));
        }
        timestamps[batch].push(ts);
    })?;
    timestamps.resize_with(headers.len(), Vec::new);
    Ok((headers, timestamps))
}

/// Whether any batch in `records` is compressed, from the headers alone: a
/// cheap look that tells whether checking them needs decompression.
pub fn any_compressed(mut records: &[u8]) -> bool {
    while let Ok(h) = BatchHeader::parse(records) {
        if h.attributes & 0x7 != 0 {
            return true;
        }
        match records.get(h.size()..) {
            Some(rest) if !rest.is_empty() => records = rest,
            _ => break,
        }
    }
    false
}

/// Checks a Produce's `records` as [`validate_batches_with_timestamps`]
/// does, and also reads every record of every compressed batch, so that a
/// batch is accepted only when it holds exactly the records its header
/// declares, at consecutive offset deltas. The compressed batches may
/// decompress to at most `budget` bytes, and each to at most
/// [`MAX_UNCOMPRESSED_BATCH_BYTES`]; past that the answer is
/// [`RecordsError::TooLarge`]. What was decompressed is taken off `budget`
/// whatever the outcome, so that refused batches cost their sender too.
/// Memory follows the records really read, never a count from the header.
pub fn check_produced(records: &[u8], budget: &mut u64) -> Result<CheckedBatches, RecordsError> {
    let (headers, mut timestamps) = validate_batches_with_timestamps(records)?;
    let mut decompressed = 0u64;
    let mut at = 0usize;
    for (header, ts) in headers.iter().zip(&mut timestamps) {
        let batch = &records[at..at + header.size()];
        at += header.size();
        if header.compression()? == Compression::None {
            continue;
        }
        let limit = (*budget).min(MAX_UNCOMPRESSED_BATCH_BYTES);
        let mut read = Vec::new();
        let mut used = 0;
        let walked = walk_batch(
            batch,
            header,
            limit,
            &mut used,
            |index, offset_delta, timestamp| {
                if offset_delta != index {
                    return Err(offset_error(index, offset_delta));
                }
                read.push(timestamp);
                Ok(())
            },
        );
        *budget -= used;
        decompressed += used;
        walked?;
        *ts = read;
    }
    Ok(CheckedBatches {
        headers,
        timestamps,
        decompressed_bytes: decompressed,
    })
}

fn offset_error(index: i32, offset_delta: i32) -> Error {
    Error::InvalidBatch(format!(
        "record {index} has offset delta '{offset_delta}': the records of a batch have \
         consecutive offset deltas from 0, so {index} is expected"
    ))
}

fn validate(records: &[u8], mut each: impl FnMut(usize, usize, i64)) -> Result<Vec<BatchHeader>> {
    if records.is_empty() {
        return Err(Error::InvalidBatch(
            "the records hold no batch: at least one is needed".to_string(),
        ));
    }
    let mut headers = Vec::new();
    let mut at = 0;
    while let Some(rest) = records.get(at..).filter(|rest| !rest.is_empty()) {
        let header = BatchHeader::parse(rest)?;
        let Some(batch) = rest.get(..header.size()) else {
            return Err(Error::InvalidBatch(format!(
                "batch at byte {at} declares '{}' bytes but only {} remain",
                header.size(),
                rest.len()
            )));
        };
        check_crc(batch, &header)?;
        check_counts(&header)?;
        if header.compression()? == Compression::None {
            let region = &batch[BATCH_OVERHEAD..];
            let count = usize::try_from(header.record_count).unwrap_or(0);
            if count > region.len() / MIN_RECORD_BYTES {
                return Err(Error::InvalidBatch(format!(
                    "record count '{count}' cannot fit in {} bytes of records",
                    region.len()
                )));
            }
            let batch_index = headers.len();
            let base = header.base_timestamp;
            let mut index = 0i32;
            let mut misplaced = None;
            visit_records_in(region, header.record_count, |offset_delta, delta| {
                if offset_delta != index && misplaced.is_none() {
                    misplaced = Some(offset_error(index, offset_delta));
                }
                index += 1;
                each(batch_index, count, base.saturating_add(delta))
            })?;
            if let Some(e) = misplaced {
                return Err(e);
            }
        }
        headers.push(header);
        at += header.size();
    }
    Ok(headers)
}

/// The record count of every whole batch in `bytes`, from the headers alone
/// (no CRC, no records): for batches this broker wrote itself.
pub fn count_records(mut bytes: &[u8]) -> u64 {
    let mut total = 0u64;
    while let Ok(h) = BatchHeader::parse(bytes) {
        total += u64::try_from(h.record_count).unwrap_or(0);
        match bytes.get(h.size()..) {
            Some(rest) if h.size() > 0 => bytes = rest,
            _ => break,
        }
    }
    total
}

/// Rewrites the base offset of the batch at the start of `batch`. The CRC
/// does not cover it, so nothing else changes. A slice too short to hold the
/// field is left as it is.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    if let Some(field) = batch.get_mut(..8) {
        field.copy_from_slice(&base_offset.to_be_bytes());
    }
}

/// Marks the batch at the start of `batch` as LogAppendTime: sets attribute
/// bit 3, the base and max timestamps to `now_ms`, and recomputes the CRC.
/// `batch` should be exactly one whole batch (as split by
/// [`validate_batches`]); a slice too short for a header is left as it is.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    if batch.len() < BATCH_OVERHEAD {
        return;
    }
    let attributes = i16_at(batch, ATTRIBUTES_AT) | TIMESTAMP_TYPE_BIT;
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[BASE_TIMESTAMP_AT..BASE_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
    batch[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
    let declared = LOG_OVERHEAD + usize::try_from(i32_at(batch, 8)).unwrap_or(0);
    let end = declared.min(batch.len()).max(ATTRIBUTES_AT);
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..end]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The timestamp of every record of the batch at the start of `batch`, in
/// record order: base timestamp plus the record's delta, or the batch's max
/// timestamp for every record of a LogAppendTime batch. Decompresses where
/// needed, up to [`MAX_UNCOMPRESSED_BATCH_BYTES`].
///
/// The list holds the records really read, never sized from the header's
/// count, and a header whose count differs from its records is an error.
pub fn record_timestamps(batch: &[u8]) -> Result<Vec<i64>> {
    let header = BatchHeader::parse(batch)?;
    let mut out = Vec::new();
    walk_batch(
        batch,
        &header,
        MAX_UNCOMPRESSED_BATCH_BYTES,
        &mut 0,
        |_, _, ts| {
            out.push(ts);
            Ok(())
        },
    )
    .map_err(plain)?;
    Ok(out)
}

fn plain(e: RecordsError) -> Error {
    match e {
        RecordsError::Invalid(e) => e,
        too_large => Error::InvalidBatch(too_large.to_string()),
    }
}

/// (offset, timestamp) of every record of the batch at the start of `batch`.
pub fn record_offsets_and_timestamps(batch: &[u8]) -> Result<Vec<(i64, i64)>> {
    let header = BatchHeader::parse(batch)?;
    let mut out = Vec::new();
    walk_batch(
        batch,
        &header,
        MAX_UNCOMPRESSED_BATCH_BYTES,
        &mut 0,
        |_, offset_delta, timestamp| {
            out.push((
                header.base_offset.saturating_add(i64::from(offset_delta)),
                timestamp,
            ));
            Ok(())
        },
    )
    .map_err(plain)?;
    Ok(out)
}

/// The number of records the batch at the start of `batch` really holds,
/// read record by record (decompressing, up to `max_decompressed` bytes):
/// for callers that must not size anything from the header's count. An
/// error when the records do not match the header.
pub fn verified_record_count(batch: &[u8], max_decompressed: u64) -> Result<u64, RecordsError> {
    let header = BatchHeader::parse(batch)?;
    let mut n = 0u64;
    walk_batch(batch, &header, max_decompressed, &mut 0, |_, _, _| {
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// Reads every record of the whole batch `batch` (whose header is `header`),
/// handing `each` the record's offset and timestamp (the batch's max timestamp
/// for LogAppendTime). For reading someone else's log: nothing is refused for
/// its size. Decompression is streamed, so memory stays within the codec's
/// window (for snappy, one block of at most [`MAX_UNCOMPRESSED_BATCH_BYTES`])
/// whatever the batch decompresses to. Returns the bytes decompressed (0 for
/// an uncompressed batch). An error when the records do not match the header.
pub fn read_batch(
    batch: &[u8],
    header: &BatchHeader,
    mut each: impl FnMut(i64, i64),
) -> Result<u64, RecordsError> {
    let mut used = 0;
    walk_batch(
        batch,
        header,
        u64::MAX,
        &mut used,
        |_, offset_delta, timestamp| {
            each(
                header.base_offset.saturating_add(i64::from(offset_delta)),
                timestamp,
            );
            Ok(())
        },
    )?;
    Ok(used)
}

/// Walks every record of one batch (decompressing at most `limit` bytes),
/// handing `each` the record's index, offset delta and timestamp (the
/// batch's max timestamp for LogAppendTime). Returns the bytes decompressed.
/// Nothing is sized from the header's record count: a count larger than the
/// records ends in an error once the records run out.
fn walk_batch(
    batch: &[u8],
    header: &BatchHeader,
    limit: u64,
    used: &mut u64,
    mut each: impl FnMut(i32, i32, i64) -> Result<()>,
) -> Result<(), RecordsError> {
    let Some(whole) = batch.get(..header.size()) else {
        return Err(Error::InvalidBatch(format!(
            "batch declares '{}' bytes but only {} are present",
            header.size(),
            batch.len()
        ))
        .into());
    };
    check_counts(header)?;
    let region = whole.get(BATCH_OVERHEAD..).unwrap_or_default();
    let append_time = header.log_append_time();
    let mut index = 0i32;
    let mut failed = None;
    let mut push = |offset_delta: i32, timestamp_delta: i64| {
        let timestamp = if append_time {
            header.max_timestamp
        } else {
            header.base_timestamp.saturating_add(timestamp_delta)
        };
        if failed.is_none()
            && let Err(e) = each(index, offset_delta, timestamp)
        {
            failed = Some(e);
        }
        index = index.saturating_add(1);
    };
    let count = header.record_count;
    let snappy_over = Cell::new(false);
    match header.compression()? {
        Compression::None => visit_records_in(region, count, &mut push)?,
        codec => {
            let inner: Box<dyn Read + '_> = match codec {
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(region)),
                Compression::Snappy => {
                    let mut snappy = XerialSnappy::with_budget(region, limit);
                    snappy.over = Some(&snappy_over);
                    Box::new(snappy)
                }
                Compression::Lz4 => {
                    Box::new(lz4::Decoder::new(region).map_err(|e| records_error(&e))?)
                }
                _ => {
                    let mut decoder = zstd::stream::read::Decoder::with_buffer(region)
                        .map_err(|e| records_error(&e))?;
                    decoder
                        .window_log_max(ZSTD_WINDOW_LOG_MAX)
                        .map_err(|e| records_error(&e))?;
                    Box::new(decoder)
                }
            };
            let mut reader = Capped::with_limit(inner, limit);
            let walked = visit_records(&mut reader, count, &mut push);
            *used = limit - reader.left;
            if reader.exceeded || snappy_over.get() {
                *used = limit;
                return Err(RecordsError::TooLarge { limit });
            }
            walked?;
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Checks the CRC of a whole batch whose header is `header`.
pub fn check_crc(batch: &[u8], header: &BatchHeader) -> Result<()> {
    let computed = crc32c::crc32c(batch.get(ATTRIBUTES_AT..).unwrap_or_default());
    if computed == header.crc {
        Ok(())
    } else {
        Err(Error::CorruptBatch {
            stored: header.crc,
            computed,
        })
    }
}

/// Kafka's rule: a batch holds at least one record, and its offset range
/// matches its record count.
pub fn check_counts(header: &BatchHeader) -> Result<()> {
    if header.record_count < 1 {
        return Err(Error::InvalidBatch(format!(
            "record count '{}' is not positive: a batch holds at least one record",
            header.record_count
        )));
    }
    if i64::from(header.last_offset_delta) != i64::from(header.record_count) - 1 {
        return Err(Error::InvalidBatch(format!(
            "last offset delta '{}' does not match record count '{}': it must be count - 1",
            header.last_offset_delta, header.record_count
        )));
    }
    Ok(())
}

/// [`visit_records`] over records held in memory (uncompressed batches, the
/// produce path): the same checks and errors, but fields are skipped by
/// moving an index instead of reading them through `io::Read`.
fn visit_records_in(records: &[u8], count: i32, mut each: impl FnMut(i32, i64)) -> Result<()> {
    let mut at = 0usize;
    for index in 0..count {
        if at == records.len() {
            return Err(too_few(count, index));
        }
        let mut outer = Fields { bytes: records, at };
        let length = outer.varint().map_err(|e| record_error(index, &e))?;
        let length = usize::try_from(length).map_err(|_| {
            Error::InvalidBatch(format!("record {index} has negative length '{length}'"))
        })?;
        let start = outer.at;
        let end = start.saturating_add(length).min(records.len());
        let mut body = Fields {
            bytes: &records[..end],
            at: start,
        };
        let parsed = (|| -> io::Result<(i32, i64)> {
            body.skip(1)?;
            let timestamp_delta = body.varlong()?;
            let offset_delta = body.varint()?;
            body.skip_field("key", true)?;
            body.skip_field("value", true)?;
            let headers = body.varint()?;
            if headers < 0 {
                return Err(io::Error::other(format!(
                    "header count '{headers}' is negative"
                )));
            }
            // Each header takes at least two bytes of the bounded body, so a
            // huge count ends at the body's end, not in a long loop.
            for _ in 0..headers {
                body.skip_field("header key", false)?;
                body.skip_field("header value", true)?;
            }
            Ok((offset_delta, timestamp_delta))
        })();
        let (offset_delta, timestamp_delta) = parsed.map_err(|e| record_error(index, &e))?;
        if end - start < length {
            // The declared length runs past the records, yet its fields fit.
            return Err(record_error(index, &io::ErrorKind::UnexpectedEof.into()));
        }
        if body.at != end {
            return Err(Error::InvalidBatch(format!(
                "record {index} declares '{length}' bytes but its fields take {}",
                body.at - start
            )));
        }
        at = end;
        each(offset_delta, timestamp_delta);
    }
    if at < records.len() {
        return Err(too_many(count));
    }
    Ok(())
}

fn too_few(count: i32, found: i32) -> Error {
    Error::InvalidBatch(format!(
        "record count '{count}' is more than the {found} records the batch holds: \
         the count must equal the records"
    ))
}

fn too_many(count: i32) -> Error {
    Error::InvalidBatch(format!(
        "record count '{count}' is less than the records the batch holds: \
         the count must equal the records"
    ))
}

/// A read position in record bytes, for [`visit_records_in`].
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    fn skip(&mut self, n: usize) -> io::Result<()> {
        match self.at.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                self.at = end;
                Ok(())
            }
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    #[inline(always)]
    fn unsigned_varint(&mut self, max_bytes: u32) -> io::Result<u64> {
        // Most varints in a record (lengths and deltas under 64) are one byte.
        if let Some(&byte) = self.bytes.get(self.at)
            && byte & 0x80 == 0
        {
            self.at += 1;
            return Ok(u64::from(byte));
        }
        self.long_unsigned_varint(max_bytes)
    }

    #[cold]
    #[inline(never)]
    fn long_unsigned_varint(&mut self, max_bytes: u32) -> io::Result<u64> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(io::ErrorKind::UnexpectedEof.into());
            };
            self.at += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(io::Error::other(format!(
            "varint longer than {max_bytes} bytes"
        )))
    }

    #[inline(always)]
    fn varint(&mut self) -> io::Result<i32> {
        let value = zigzag(self.unsigned_varint(5)?);
        i32::try_from(value)
            .map_err(|_| io::Error::other(format!("varint '{value}' exceeds 32 bits")))
    }

    fn varlong(&mut self) -> io::Result<i64> {
        Ok(zigzag(self.unsigned_varint(10)?))
    }

    #[inline(always)]
    fn skip_field(&mut self, what: &'static str, nullable: bool) -> io::Result<()> {
        let length = self.varint()?;
        if length == -1 && nullable {
            return Ok(());
        }
        let Ok(length) = usize::try_from(length) else {
            return Err(io::Error::other(format!(
                "{what} length '{length}' is negative"
            )));
        };
        self.skip(length)
    }
}

/// Walks `count` records, handing each one's offset delta and timestamp delta
/// to `each`, and requires the records to end exactly where the bytes do.
fn visit_records<R: Read>(
    mut records: R,
    count: i32,
    mut each: impl FnMut(i32, i64),
) -> Result<()> {
    for index in 0..count {
        let mut first = [0u8; 1];
        if records.read(&mut first).map_err(|e| records_error(&e))? == 0 {
            return Err(too_few(count, index));
        }
        let length = read_varint(&mut (&first[..]).chain(&mut records))
            .map_err(|e| record_error(index, &e))?;
        let length = u64::try_from(length).map_err(|_| {
            Error::InvalidBatch(format!("record {index} has negative length '{length}'"))
        })?;
        let mut body = (&mut records).take(length);
        let parsed = (|| -> io::Result<(i32, i64)> {
            let mut attributes = [0u8; 1];
            body.read_exact(&mut attributes)?;
            let timestamp_delta = read_varlong(&mut body)?;
            let offset_delta = read_varint(&mut body)?;
            skip_field(&mut body, "key", true)?;
            skip_field(&mut body, "value", true)?;
            let headers = read_varint(&mut body)?;
            if headers < 0 {
                return Err(io::Error::other(format!(
                    "header count '{headers}' is negative"
                )));
            }
            // Each header reads at least two bytes from the bounded body, so
            // a huge count ends at the body's end, not in a long loop.
            for _ in 0..headers {
                skip_field(&mut body, "header key", false)?;
                skip_field(&mut body, "header value", true)?;
            }
            Ok((offset_delta, timestamp_delta))
        })();
        let (offset_delta, timestamp_delta) = parsed.map_err(|e| record_error(index, &e))?;
        if body.limit() != 0 {
            return Err(Error::InvalidBatch(format!(
                "record {index} declares '{length}' bytes but its fields take {}",
                length - body.limit()
            )));
        }
        each(offset_delta, timestamp_delta);
    }
    let mut trailing = [0u8; 1];
    match records.read(&mut trailing) {
        Ok(0) => Ok(()),
        Ok(_) => Err(too_many(count)),
        Err(e) => Err(records_error(&e)),
    }
}

/// Skips a varint-length-prefixed field; -1 is null where `nullable`.
fn skip_field(r: &mut impl Read, what: &str, nullable: bool) -> io::Result<()> {
    let length = read_varint(r)?;
    if length == -1 && nullable {
        return Ok(());
    }
    let Ok(length) = u64::try_from(length) else {
        return Err(io::Error::other(format!(
            "{what} length '{length}' is negative"
        )));
    };
    if io::copy(&mut r.take(length), &mut io::sink())? != length {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn record_error(index: i32, error: &io::Error) -> Error {
    Error::InvalidBatch(format!("record {index}: {}", describe_io(error)))
}

fn records_error(error: &io::Error) -> Error {
    Error::InvalidBatch(format!("records: {}", describe_io(error)))
}

fn describe_io(error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        "the records end in the middle of a record".to_string()
    } else {
        error.to_string()
    }
}

/// A transaction marker: the one control record of a control batch, written
/// by the broker to end a producer's transaction on a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The producer whose transaction it ends.
    pub producer_id: i64,
    /// The producer's epoch.
    pub producer_epoch: i16,
    /// Commit (true) or abort (false).
    pub commit: bool,
}

/// A control batch holding one transaction marker (Kafka's EndTransactionMarker:
/// key version 0 and type, 0 abort or 1 commit; value version 0 and the
/// coordinator epoch), stamped `timestamp`, at base offset 0.
pub fn control_batch(marker: Marker, coordinator_epoch: i32, timestamp: i64) -> Vec<u8> {
    // The record: attributes, timestamp delta, offset delta, key, value, no headers.
    let mut record = vec![0u8, 0, 0];
    record.push(8); // key length 4, zigzag
    record.extend_from_slice(&0i16.to_be_bytes());
    record.extend_from_slice(&i16::from(marker.commit).to_be_bytes());
    record.push(12); // value length 6, zigzag
    record.extend_from_slice(&0i16.to_be_bytes());
    record.extend_from_slice(&coordinator_epoch.to_be_bytes());
    record.push(0); // no headers
    let mut batch = Vec::with_capacity(BATCH_OVERHEAD + record.len() + 1);
    batch.extend_from_slice(&0i64.to_be_bytes());
    let length = BATCH_OVERHEAD - LOG_OVERHEAD + 1 + record.len();
    batch.extend_from_slice(&(length as i32).to_be_bytes());
    batch.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    batch.push(2);
    batch.extend_from_slice(&[0; 4]); // CRC, set below
    batch.extend_from_slice(&(TRANSACTIONAL_BIT | CONTROL_BIT).to_be_bytes());
    batch.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    batch.extend_from_slice(&timestamp.to_be_bytes());
    batch.extend_from_slice(&timestamp.to_be_bytes());
    batch.extend_from_slice(&marker.producer_id.to_be_bytes());
    batch.extend_from_slice(&marker.producer_epoch.to_be_bytes());
    batch.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    batch.extend_from_slice(&1i32.to_be_bytes()); // one record
    batch.push((record.len() as u8) << 1);
    batch.extend_from_slice(&record);
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    batch
}

/// The transaction marker of the control batch at the start of `batch`;
/// `None` when it is not a control batch or its first record is not a
/// marker Kafka defines (type 0 abort or 1 commit).
pub fn control_marker(batch: &[u8]) -> Option<Marker> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control() || header.compression().ok()? != Compression::None {
        return None;
    }
    let mut r = batch.get(BATCH_OVERHEAD..header.size().min(batch.len()))?;
    read_varint(&mut r).ok()?; // record length
    let mut attributes = [0u8; 1];
    r.read_exact(&mut attributes).ok()?;
    read_varlong(&mut r).ok()?; // timestamp delta
    read_varint(&mut r).ok()?; // offset delta
    if read_varint(&mut r).ok()? < 4 {
        return None;
    }
    let mut key = [0u8; 4];
    r.read_exact(&mut key).ok()?;
    let commit = match i16::from_be_bytes([key[2], key[3]]) {
        0 => false,
        1 => true,
        _ => return None,
    };
    Some(Marker {
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        commit,
    })
}

/// Kafka's zigzag varint, at most 5 bytes.
fn read_varint(r: &mut impl Read) -> io::Result<i32> {
    let raw = read_unsigned_varint(r, 5)?;
    let value = zigzag(raw);
    i32::try_from(value).map_err(|_| io::Error::other(format!("varint '{value}' exceeds 32 bits")))
}

/// Kafka's zigzag varlong, at most 10 bytes.
fn read_varlong(r: &mut impl Read) -> io::Result<i64> {
    Ok(zigzag(read_unsigned_varint(r, 10)?))
}

fn zigzag(raw: u64) -> i64 {
    ((raw >> 1) as i64) ^ -((raw & 1) as i64)
}

fn read_unsigned_varint(r: &mut impl Read, max_bytes: u32) -> io::Result<u64> {
    let mut value = 0u64;
    for i in 0..max_bytes {
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte)?;
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(io::Error::other(format!(
        "varint longer than {max_bytes} bytes"
    )))
}

/// Fails, rather than silently ending, once the inner reader yields more than
/// [`MAX_UNCOMPRESSED_BATCH_BYTES`].
struct Capped<R> {
    inner: R,
    left: u64,
    /// Whether the inner reader went past the limit.
    exceeded: bool,
}

impl<R: Read> Capped<R> {
    fn with_limit(inner: R, left: u64) -> Self {
        Capped {
            inner,
            left,
            exceeded: false,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.exceeded = true;
                    Err(too_large())
                }
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn too_large() -> io::Error {
    io::Error::other("records decompress to more than allowed")
}

/// Snappy as Kafka's Java clients write it: xerial's framing (a 16-byte
/// header, then blocks each prefixed by its compressed length), or a single
/// raw block when the header is absent. One block is held at a time, sized by
/// the block's own declared length only after checking it against the budget.
struct XerialSnappy<'a> {
    input: &'a [u8],
    framed: bool,
    started: bool,
    block: Vec<u8>,
    at: usize,
    budget: u64,
    /// Set when a block would go past the budget.
    over: Option<&'a Cell<bool>>,
}

impl<'a> XerialSnappy<'a> {
    #[cfg(test)]
    fn new(input: &'a [u8]) -> Self {
        Self::with_budget(input, MAX_UNCOMPRESSED_BATCH_BYTES)
    }

    fn with_budget(input: &'a [u8], budget: u64) -> Self {
        let framed = input.starts_with(XERIAL_SNAPPY_MAGIC) && input.len() >= XERIAL_SNAPPY_HEADER;
        XerialSnappy {
            input: if framed {
                &input[XERIAL_SNAPPY_HEADER..]
            } else {
                input
            },
            framed,
            started: false,
            block: Vec::new(),
            at: 0,
            budget,
            over: None,
        }
    }

    /// Decompresses the next block; false at the end of the input.
    fn next_block(&mut self) -> io::Result<bool> {
        let compressed = if self.framed {
            if self.input.is_empty() {
                return Ok(false);
            }
            let Some(length) = self.input.get(..4) else {
                return Err(io::Error::other("snappy block length is cut short"));
            };
            let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
            let Some(block) = self.input.get(4..4usize.saturating_add(length)) else {
                return Err(io::Error::other(format!(
                    "snappy block declares '{length}' bytes but fewer remain"
                )));
            };
            self.input = &self.input[4 + length..];
            block
        } else {
            if self.started {
                return Ok(false);
            }
            self.input
        };
        self.started = true;
        let length = snap::raw::decompress_len(compressed).map_err(io::Error::other)?;
        // A block is held whole; however generous the caller's budget, one
        // block never takes more than a batch may decompress to.
        if length as u64 > self.budget.min(MAX_UNCOMPRESSED_BATCH_BYTES) {
            if let Some(over) = self.over {
                over.set(true);
            }
            return Err(too_large());
        }
        self.budget -= length as u64;
        self.block.clear();
        self.block.resize(length, 0);
        let written = snap::raw::Decoder::new()
            .decompress(compressed, &mut self.block)
            .map_err(io::Error::other)?;
        self.block.truncate(written);
        self.at = 0;
        Ok(true)
    }
}

impl Read for XerialSnappy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn i64_at(buf: &[u8], at: usize) -> i64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(bytes)
}

fn i32_at(buf: &[u8], at: usize) -> i32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    i32::from_be_bytes(bytes)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(bytes)
}

fn i16_at(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression as Codec, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    const CODECS: [(Codec, Compression); 5] = [
        (Codec::None, Compression::None),
        (Codec::Gzip, Compression::Gzip),
        (Codec::Snappy, Compression::Snappy),
        (Codec::Lz4, Compression::Lz4),
        (Codec::Zstd, Compression::Zstd),
    ];

    /// A producer's batch of `timestamps.len()` records, offsets from 0.
    fn encode(timestamps: &[i64], codec: Codec) -> Vec<u8> {
        let records: Vec<Record> = timestamps
            .iter()
            .enumerate()
            .map(|(i, &timestamp)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: 7,
                producer_epoch: 1,
                sequence: i as i32,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                timestamp,
                key: Some(Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(format!("value-{i}-{}", "x".repeat(i % 50)))),
                headers: if i % 3 == 0 {
                    [
                        ("trace".into(), Some(Bytes::from("abc"))),
                        ("empty".into(), None),
                    ]
                    .into()
                } else {
                    Default::default()
                },
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

    #[test]
    fn records_are_counted_from_the_headers() {
        let mut two = encode(&[1, 2, 3], Codec::None);
        two.extend(encode(&[4, 5], Codec::Lz4));
        assert_eq!(count_records(&two), 5);
        assert_eq!(count_records(&[]), 0);
        assert_eq!(count_records(&two[..10]), 0);
    }

    #[test]
    fn parses_real_batches_of_every_codec() {
        // Out of order on purpose: Java producers take the first record's
        // timestamp as the base, so deltas can be negative.
        let timestamps: Vec<i64> = (0..40)
            .map(|i| 1_700_000_000_000 + (i * 37) % 11 - 5)
            .collect();
        for (codec, compression) in CODECS {
            let bytes = encode(&timestamps, codec);
            let headers = validate_batches(&bytes).unwrap();
            assert_eq!(headers.len(), 1, "{codec:?}");
            let h = headers[0];
            assert_eq!(h.size(), bytes.len());
            assert_eq!(h.magic, 2);
            assert_eq!(h.compression().unwrap(), compression);
            assert_eq!(h.record_count, 40);
            assert_eq!(h.last_offset(), 39);
            assert_eq!(h.next_offset(), 40);
            assert_eq!(h.producer_id, 7);
            assert_eq!(h.producer_epoch, 1);
            assert_eq!(h.max_timestamp, *timestamps.iter().max().unwrap());
            assert!(!h.log_append_time() && !h.is_transactional() && !h.is_control());
            assert_eq!(record_timestamps(&bytes).unwrap(), timestamps, "{codec:?}");
        }
    }

    #[test]
    fn several_batches_split_in_order() {
        let mut bytes = encode(&[1, 2, 3], Codec::None);
        bytes.extend(encode(&[4, 5], Codec::Zstd));
        let headers = validate_batches(&bytes).unwrap();
        assert_eq!(
            headers.iter().map(|h| h.record_count).collect::<Vec<_>>(),
            [3, 2]
        );
    }

    #[test]
    fn log_append_time_rewrites_timestamps_and_keeps_the_crc_valid() {
        for (codec, _) in CODECS {
            let mut bytes = encode(&[10, 20, 30], codec);
            set_base_offset(&mut bytes, 1_000);
            set_log_append_time(&mut bytes, 5_000);
            let h = validate_batches(&bytes).unwrap()[0];
            assert!(h.log_append_time());
            assert_eq!(
                (h.base_offset, h.base_timestamp, h.max_timestamp),
                (1_000, 5_000, 5_000)
            );
            assert_eq!(record_timestamps(&bytes).unwrap(), [5_000; 3]);
            // A real client's decoder accepts the new CRC and sees the type.
            let decoded = RecordBatchDecoder::decode(&mut Bytes::from(bytes)).unwrap();
            let seen: Vec<(i64, TimestampType)> = decoded
                .records
                .iter()
                .map(|r| (r.offset, r.timestamp_type))
                .collect();
            assert_eq!(
                seen,
                (1_000..1_003)
                    .map(|o| (o, TimestampType::LogAppend))
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn record_offsets_follow_the_base_offset() {
        let mut bytes = encode(&[1, 2, 3], Codec::Lz4);
        set_base_offset(&mut bytes, 42);
        let offsets: Vec<i64> = record_offsets_and_timestamps(&bytes)
            .unwrap()
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        assert_eq!(offsets, [42, 43, 44]);
    }

    #[test]
    fn a_flipped_bit_fails_the_crc() {
        let bytes = encode(&[1, 2, 3], Codec::None);
        for at in [ATTRIBUTES_AT, 40, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(
                matches!(validate_batches(&bad), Err(Error::CorruptBatch { .. })),
                "byte {at}"
            );
        }
    }

    #[test]
    fn old_formats_are_refused() {
        for magic in [0u8, 1] {
            let mut bytes = encode(&[1], Codec::None);
            bytes[MAGIC_AT] = magic;
            assert!(matches!(
                validate_batches(&bytes),
                Err(Error::UnsupportedMagic(m)) if m == magic as i8
            ));
            // A v0 message set is shorter than a v2 header.
            assert!(matches!(
                validate_batches(&bytes[..26]),
                Err(Error::UnsupportedMagic(_))
            ));
        }
        let mut bytes = encode(&[1], Codec::None);
        bytes[MAGIC_AT] = 3;
        assert!(matches!(
            validate_batches(&bytes),
            Err(Error::InvalidBatch(_))
        ));
    }

    #[test]
    fn inconsistent_counts_and_lengths_are_refused() {
        let fix_crc = |b: &mut Vec<u8>| {
            let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
            b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        };
        let good = encode(&[1, 2, 3], Codec::None);
        assert!(validate_batches(&[]).is_err());
        assert!(
            validate_batches(&good[..good.len() - 1]).is_err(),
            "cut short"
        );
        let mut extra = good.clone();
        extra.push(0);
        assert!(validate_batches(&extra).is_err(), "trailing byte");
        let mut count = good.clone();
        count[57..61].copy_from_slice(&4i32.to_be_bytes());
        fix_crc(&mut count);
        assert!(
            validate_batches(&count).is_err(),
            "count vs last offset delta"
        );
        count[23..27].copy_from_slice(&3i32.to_be_bytes());
        fix_crc(&mut count);
        assert!(
            validate_batches(&count).is_err(),
            "count vs records present"
        );
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(validate_batches(&huge).is_err(), "length past the bytes");
        let mut codec = good;
        codec[ATTRIBUTES_AT + 1] |= 0x7;
        fix_crc(&mut codec);
        assert!(validate_batches(&codec).is_err(), "unknown codec");
    }

    #[test]
    fn a_record_longer_than_its_fields_is_refused() {
        let mut bytes = encode(&[1], Codec::None);
        // The record's length is a one-byte zigzag varint right after the
        // header; claim one more byte and supply it.
        let length = bytes[BATCH_OVERHEAD];
        assert!(length < 0x7e, "a one-byte varint");
        bytes[BATCH_OVERHEAD] = length + 2;
        bytes.push(0);
        let batch_length = (bytes.len() - LOG_OVERHEAD) as i32;
        bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[ATTRIBUTES_AT..]);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        let err = validate_batches(&bytes).unwrap_err().to_string();
        assert!(err.contains("but its fields take"), "{err}");
    }

    /// xorshift: deterministic, and no dependency for a test.
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let len = (noise.next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
            if len > MAGIC_AT && noise.next() & 1 == 0 {
                bytes[MAGIC_AT] = 2;
            }
            let _ = validate_batches(&bytes);
            let _ = record_timestamps(&bytes);
            let _ = BatchHeader::parse(&bytes);
            set_base_offset(&mut bytes, 1);
            set_log_append_time(&mut bytes, 1);
        }
    }

    #[test]
    fn mutated_batches_with_valid_crcs_never_panic() {
        // Fixing the CRC after each mutation gets it past the checksum and
        // into the record parser and the decompressors.
        let mut noise = Noise(42);
        for (codec, _) in CODECS {
            let good = encode(&(0..20).collect::<Vec<_>>(), codec);
            for _ in 0..400 {
                let mut bad = good.clone();
                for _ in 0..1 + noise.next() % 4 {
                    let at = BATCH_OVERHEAD - 4
                        + (noise.next() as usize) % (bad.len() - BATCH_OVERHEAD + 4);
                    bad[at] = noise.next() as u8;
                }
                let crc = crc32c::crc32c(&bad[ATTRIBUTES_AT..]);
                bad[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
                let _ = validate_batches(&bad);
                let _ = record_timestamps(&bad);
            }
        }
    }

    /// Sets the record count (and last offset delta, so that they agree) of
    /// the batch in `b`, and fixes its CRC: a producer that lies consistently.
    fn claim_records(b: &mut [u8], count: i32) {
        b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn a_record_count_that_differs_from_the_records_is_refused_for_every_codec() {
        for (codec, _) in CODECS {
            let good = encode(&[1, 2, 3], codec);
            let checked = check_produced(&good, &mut (1 << 20)).unwrap();
            assert_eq!(checked.timestamps, [vec![1, 2, 3]], "{codec:?}");
            for claim in [20_000_000, 4, 2, 1] {
                let mut lying = good.clone();
                claim_records(&mut lying, claim);
                let err = check_produced(&lying, &mut (1 << 20))
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(&format!("record count '{claim}'")),
                    "{codec:?} claiming {claim}: {err}"
                );
                assert!(record_timestamps(&lying).is_err(), "{codec:?} {claim}");
                assert!(verified_record_count(&lying, 1 << 20).is_err());
            }
            assert_eq!(verified_record_count(&good, 1 << 20).unwrap(), 3);
        }
    }

    /// `header` (a batch's first 61 bytes) over `region` as its records,
    /// with the batch length and CRC fixed.
    fn rebatch(header: &[u8], region: &[u8]) -> Vec<u8> {
        let mut b = header[..BATCH_OVERHEAD].to_vec();
        b.extend_from_slice(region);
        let length = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn records_out_of_offset_order_are_refused() {
        // Three records whose second claims offset delta 2 (0, 2, 2).
        let plain = encode(&[5, 5, 5], Codec::None);
        let mut region = plain[BATCH_OVERHEAD..].to_vec();
        let first_len = usize::from(region[0] / 2) + 1;
        // length, attributes, timestamp delta (0), then the offset delta.
        let at = first_len + 3;
        assert_eq!(region[at], 2, "zigzag of offset delta 1");
        region[at] = 4;
        let bad = rebatch(&plain, &region);
        let err = check_produced(&bad, &mut (1 << 20))
            .unwrap_err()
            .to_string();
        assert!(err.contains("offset delta '2'"), "{err}");
        let zstd_header = encode(&[5, 5, 5], Codec::Zstd);
        let bad = rebatch(&zstd_header, &zstd::encode_all(&region[..], 1).unwrap());
        let err = check_produced(&bad, &mut (1 << 20))
            .unwrap_err()
            .to_string();
        assert!(err.contains("offset delta '2'"), "zstd: {err}");
        let good = rebatch(
            &zstd_header,
            &zstd::encode_all(&plain[BATCH_OVERHEAD..], 1).unwrap(),
        );
        check_produced(&good, &mut (1 << 20)).unwrap();
    }

    #[test]
    fn what_a_request_may_decompress_is_capped_across_its_batches() {
        let big: Vec<i64> = (0..2_000).collect();
        for (codec, _) in CODECS.into_iter().skip(1) {
            let one = encode(&big, codec);
            let mut unlimited = u64::MAX;
            let need = check_produced(&one, &mut unlimited)
                .unwrap()
                .decompressed_bytes;
            assert!(need > 20_000, "{codec:?}: {need}");
            let mut two = one.clone();
            two.extend(&one);
            assert_eq!(
                check_produced(&two, &mut (2 * need))
                    .unwrap()
                    .decompressed_bytes,
                2 * need
            );
            let mut budget = 2 * need - 1;
            let err = check_produced(&two, &mut budget).unwrap_err();
            assert!(
                matches!(err, RecordsError::TooLarge { limit } if limit == need - 1),
                "{codec:?}: {err}"
            );
            assert!(err.to_string().contains(&format!("'{}'", need - 1)));
            assert_eq!(
                budget, 0,
                "{codec:?}: a refused batch costs what it was allowed"
            );
        }
        // Uncompressed batches decompress nothing.
        let plain = encode(&big, Codec::None);
        assert_eq!(
            check_produced(&plain, &mut 1024)
                .unwrap()
                .decompressed_bytes,
            0
        );
        assert!(!any_compressed(&plain));
        assert!(any_compressed(&encode(&big, Codec::Zstd)));
    }

    #[test]
    fn decompression_is_capped() {
        let mut capped = Capped::with_limit(io::repeat(0).take(1_000), 999);
        let err = io::copy(&mut capped, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("decompress to more than"));
        let mut exact = Capped::with_limit(io::repeat(0).take(1_000), 1_000);
        assert_eq!(io::copy(&mut exact, &mut io::sink()).unwrap(), 1_000);
    }

    #[test]
    fn a_snappy_block_declaring_a_huge_length_is_refused_before_allocating() {
        // A raw snappy stream starts with its uncompressed length as a
        // varint: claim 4 GiB.
        let mut input = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
        input.extend_from_slice(&[0; 8]);
        let err = io::copy(&mut XerialSnappy::new(&input), &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("decompress to more than"), "{err}");
    }

    #[test]
    fn control_batches_are_valid_markers_that_kafka_protocol_reads() {
        for commit in [true, false] {
            let marker = Marker {
                producer_id: 42,
                producer_epoch: 3,
                commit,
            };
            let batch = control_batch(marker, 7, 1_700_000_000_000);
            let headers = validate_batches(&batch).unwrap();
            assert_eq!(headers.len(), 1);
            let h = headers[0];
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.record_count),
                (42, 3, 1)
            );
            assert_eq!(control_marker(&batch), Some(marker));
            // An independent reader sees the same marker.
            let mut bytes = Bytes::from(batch);
            let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
            let record = &set.records[0];
            assert!(record.control && record.transactional);
            let key = record.key.as_ref().unwrap();
            assert_eq!(key.as_ref(), &[0, 0, 0, u8::from(commit)]);
            let value = record.value.as_ref().unwrap();
            assert_eq!(value.as_ref(), &[0, 0, 0, 0, 0, 7]);
        }
        // A data batch is no marker.
        assert_eq!(control_marker(&[0u8; 10]), None);
    }
}
