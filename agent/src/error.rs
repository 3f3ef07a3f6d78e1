use std::path::PathBuf;

/// Errors of the agent library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state database could not be opened, read or written.
    #[error("state database '{}': {source}", path.display())]
    Store {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The state database is not one this agent can use: another program's
    /// database, or one written by a newer tally.
    #[error("state database '{}' {problem}", path.display())]
    StoreSchema {
        /// The database file.
        path: PathBuf,
        /// What is wrong with the file and what to do about it.
        problem: String,
    },
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path or address.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A setting has a value that cannot work.
    #[error("{0}")]
    Config(String),
    /// A value refused by the audit vocabulary.
    #[error(transparent)]
    Audit(#[from] tally_audit::Error),
    /// Alert rules or notifier settings that cannot work.
    #[error(transparent)]
    Alerts(#[from] tally_alerts::Error),
}

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
