use std::path::PathBuf;

/// Errors of the broker library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation on the log failed.
    #[error("{what} '{path}': {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
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
    /// An offset outside the log.
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: i64,
        /// The log start offset.
        start: i64,
        /// The log end offset.
        end: i64,
    },
    /// A setting with a value that cannot work.
    #[error("{0}")]
    Config(String),
}

impl From<tally_kafka::records::Error> for Error {
    fn from(e: tally_kafka::records::Error) -> Self {
        use tally_kafka::records::Error as Batch;
        match e {
            Batch::InvalidBatch(why) => Error::InvalidBatch(why),
            Batch::CorruptBatch { stored, computed } => Error::CorruptBatch { stored, computed },
            Batch::UnsupportedMagic(magic) => Error::UnsupportedMagic(magic),
        }
    }
}

/// Result with the broker's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
