use std::path::PathBuf;

/// Errors of the alerts crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rules file could not be read.
    #[error("cannot read rules file \"{}\": {source}", path.display())]
    Read {
        /// The rules file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The rules file is not the YAML shape of a rules file.
    #[error("rules file \"{origin}\": {detail}")]
    Syntax {
        /// Where the rules came from (a path, or a name for embedded rules).
        origin: String,
        /// What is wrong, with the YAML position where known.
        detail: String,
    },
    /// One rule has a field with a value that cannot work.
    #[error("rules file \"{origin}\": rule \"{rule}\": field \"{field}\": {reason}")]
    Rule {
        /// Where the rules came from.
        origin: String,
        /// The rule's name (or its position when it has none).
        rule: String,
        /// The field.
        field: String,
        /// Why the value is refused and what is accepted.
        reason: String,
    },
    /// A notifier URL that cannot be used.
    #[error("notifier URL \"{url}\": {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A reload was asked of an agent that has no rules file.
    #[error(
        "no rules file to reload: start the agent with --rules FILE (or rules = \"FILE\" in its config file)"
    )]
    NoRulesFile,
    /// Stored alert state that cannot be read.
    #[error("stored alert state: {0}")]
    State(String),
}

/// Result with the alerts crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
