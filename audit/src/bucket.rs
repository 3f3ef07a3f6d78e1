use std::fmt;
use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

use crate::{Error, Reason, Result};

/// The width of an event-time bucket, in milliseconds; one setting for a whole
/// deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct BucketWidth(NonZeroU64);

impl BucketWidth {
    /// The default width: one minute.
    pub const DEFAULT: BucketWidth = BucketWidth(NonZeroU64::new(60_000).expect("non-zero"));
    /// The narrowest width accepted (100 ms).
    pub const MIN_MS: u64 = 100;
    /// The widest width accepted (one day).
    pub const MAX_MS: u64 = 86_400_000;

    /// A width of `ms` milliseconds, between [`Self::MIN_MS`] and [`Self::MAX_MS`].
    pub fn new(ms: u64) -> Result<Self> {
        if !(Self::MIN_MS..=Self::MAX_MS).contains(&ms) {
            return Err(Error::new(
                Reason::BadField,
                format!(
                    "bucket width \"{ms}\" ms is out of range: expected {} to {} ms",
                    Self::MIN_MS,
                    Self::MAX_MS
                ),
            ));
        }
        NonZeroU64::new(ms)
            .map(BucketWidth)
            .ok_or_else(|| Error::new(Reason::BadField, "bucket width \"0\" ms is not allowed"))
    }

    /// The width in milliseconds.
    pub fn ms(self) -> u64 {
        self.0.get()
    }

    fn ms_i64(self) -> i64 {
        // MAX_MS fits in i64 by a wide margin.
        self.0.get() as i64
    }

    /// The bucket that holds timestamp `ts_ms`: `floor(ts_ms / width) * width`.
    ///
    /// Negative timestamps round towards negative infinity, so every bucket is
    /// exactly one width wide. The lowest timestamps, whose bucket start would
    /// not fit in an `i64`, fall in the lowest bucket that does.
    pub fn bucket_of(self, ts_ms: i64) -> Bucket {
        let w = self.ms_i64();
        let q = ts_ms.div_euclid(w);
        match q.checked_mul(w) {
            Some(start) => Bucket(start),
            None => Bucket((q + 1) * w),
        }
    }

    /// Whether `start_ms` is the start of a bucket of this width.
    pub fn is_aligned(self, start_ms: i64) -> bool {
        start_ms.rem_euclid(self.ms_i64()) == 0
    }

    /// The bucket starting at `start_ms`, or an error naming it when it is not aligned.
    pub fn bucket_at(self, start_ms: i64) -> Result<Bucket> {
        if self.is_aligned(start_ms) {
            Ok(Bucket(start_ms))
        } else {
            Err(Error::new(
                Reason::UnalignedBucket,
                format!(
                    "bucket \"{start_ms}\" is not aligned to the bucket width of {} ms: expected a multiple of {}, such as {}",
                    self.ms(),
                    self.ms(),
                    self.bucket_of(start_ms).start_ms()
                ),
            ))
        }
    }

    /// The first millisecond after `bucket` ends.
    pub fn end_of(self, bucket: Bucket) -> i64 {
        bucket.0.saturating_add(self.ms_i64())
    }
}

impl Default for BucketWidth {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u64> for BucketWidth {
    type Error = Error;
    fn try_from(ms: u64) -> Result<Self> {
        BucketWidth::new(ms)
    }
}

impl From<BucketWidth> for u64 {
    fn from(w: BucketWidth) -> u64 {
        w.ms()
    }
}

impl fmt::Display for BucketWidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.ms())
    }
}

/// The start of an event-time bucket, in epoch milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bucket(i64);

impl Bucket {
    /// The bucket's start in epoch milliseconds.
    pub fn start_ms(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ms: u64) -> BucketWidth {
        BucketWidth::new(ms).unwrap()
    }

    #[test]
    fn boundaries_belong_to_the_bucket_they_start() {
        let w = w(60_000);
        assert_eq!(w.bucket_of(0).start_ms(), 0);
        assert_eq!(w.bucket_of(59_999).start_ms(), 0);
        assert_eq!(w.bucket_of(60_000).start_ms(), 60_000);
        assert_eq!(w.bucket_of(1_732_800_059_999).start_ms(), 1_732_800_000_000);
    }

    #[test]
    fn negative_timestamps_round_down() {
        let w = w(60_000);
        assert_eq!(w.bucket_of(-1).start_ms(), -60_000);
        assert_eq!(w.bucket_of(-60_000).start_ms(), -60_000);
        assert_eq!(w.bucket_of(-60_001).start_ms(), -120_000);
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let w = w(60_000);
        let low = w.bucket_of(i64::MIN);
        assert!(w.is_aligned(low.start_ms()));
        let high = w.bucket_of(i64::MAX);
        assert!(w.is_aligned(high.start_ms()));
        assert_eq!(w.end_of(high), high.start_ms().saturating_add(60_000));
    }

    #[test]
    fn alignment_is_checked_and_named() {
        let w = w(60_000);
        assert!(w.bucket_at(120_000).is_ok());
        assert!(w.bucket_at(-120_000).is_ok());
        let err = w.bucket_at(120_001).unwrap_err();
        assert_eq!(err.reason, Reason::UnalignedBucket);
        assert!(err.detail.contains("\"120001\""), "{}", err.detail);
        assert!(err.detail.contains("120000"), "{}", err.detail);
    }

    #[test]
    fn widths_out_of_range_are_refused() {
        assert!(BucketWidth::new(0).is_err());
        assert!(BucketWidth::new(99).is_err());
        assert!(BucketWidth::new(86_400_001).is_err());
        assert_eq!(BucketWidth::new(100).unwrap().ms(), 100);
        assert_eq!(BucketWidth::default().ms(), 60_000);
    }
}
