use std::fmt;

/// Why a value or a wire message was refused.
///
/// The reason is a short, stable token: the agent uses it as the `reason`
/// label of `tally_ingest_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not valid JSON, or a field of the wrong type.
    Malformed,
    /// A `"v"` other than the one this build speaks.
    Version,
    /// A `"type"` this build does not know.
    UnknownType,
    /// Larger than the configured message size limit.
    Oversize,
    /// A bucket that is not a multiple of the bucket width.
    UnalignedBucket,
    /// A `hello` whose bucket width differs from the agent's.
    WidthMismatch,
    /// A topic name outside Kafka's rules.
    BadTopic,
    /// A negative, fractional or absurdly large count.
    BadCount,
    /// Any other field with a value outside its range.
    BadField,
    /// A source that would open more series than the agent allows.
    Cardinality,
    /// A message before the session's `hello`, or a second `hello`.
    Protocol,
    /// A missing or wrong bearer token.
    Unauthorized,
    /// A count entry whose bucket lies outside the range the agent accepts
    /// (the `welcome`'s `accept_from_ms` to `accept_to_ms`); the entry is
    /// dropped on its own and the rest of its message applied.
    BucketOutOfRange,
    /// `broker` or `group:` counts of a (cluster, topic) that another live source
    /// reports, or a `hello` of a source id whose session is still live: one
    /// cluster's log tiers have one source (DESIGN §5).
    DuplicateSource,
}

impl Reason {
    /// Every reason, in a fixed order (used to pre-register metric labels).
    pub const ALL: [Reason; 14] = [
        Reason::Malformed,
        Reason::Version,
        Reason::UnknownType,
        Reason::Oversize,
        Reason::UnalignedBucket,
        Reason::WidthMismatch,
        Reason::BadTopic,
        Reason::BadCount,
        Reason::BadField,
        Reason::Cardinality,
        Reason::Protocol,
        Reason::Unauthorized,
        Reason::BucketOutOfRange,
        Reason::DuplicateSource,
    ];

    /// The stable token for this reason, e.g. `"unaligned_bucket"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Version => "version",
            Reason::UnknownType => "unknown_type",
            Reason::Oversize => "oversize",
            Reason::UnalignedBucket => "unaligned_bucket",
            Reason::WidthMismatch => "width_mismatch",
            Reason::BadTopic => "bad_topic",
            Reason::BadCount => "bad_count",
            Reason::BadField => "bad_field",
            Reason::Cardinality => "cardinality",
            Reason::Protocol => "protocol",
            Reason::Unauthorized => "unauthorized",
            Reason::BucketOutOfRange => "bucket_out_of_range",
            Reason::DuplicateSource => "duplicate_source",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused value, with the reason and a message that names the bad value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Error {
    /// The category, used for metrics.
    pub reason: Reason,
    /// A sentence for a person: the bad value in quotes and what is accepted.
    pub detail: String,
}

impl Error {
    /// An error of `reason` with the message `detail`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Error {
            reason,
            detail: detail.into(),
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
