//! The dashboard's errors.

/// What can stop the dashboard.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent URL cannot be used.
    #[error("agent URL \"{url}\" is not usable: {reason}")]
    AgentUrl {
        /// The URL as given.
        url: String,
        /// Why, and what is accepted.
        reason: String,
    },
    /// Standard output is not a terminal (a file or a pipe).
    #[error("the dashboard needs a terminal, and standard output is not one (a file or a pipe)")]
    NotATerminal,
    /// The terminal could not be set up or drawn to.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// The dashboard's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
