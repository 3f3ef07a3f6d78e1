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
    /// The listener's certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tally_audit::tls::TlsError),
}

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The most characters of a value that an error message quotes.
const SHOWN_CHARS: usize = 200;

/// A value as an error message quotes it: at most 200 characters, with an
/// ellipsis and the full length where it was longer, and control, bidi and
/// other invisible formatting characters escaped (`\u{202e}`), so that what
/// a client sent can neither flood a reply or a log nor reorder its text.
pub(crate) fn shown(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(SHOWN_CHARS) + 16);
    let mut count = 0usize;
    for c in value.chars() {
        count += 1;
        if count > SHOWN_CHARS {
            continue;
        }
        if invisible(c) {
            out.extend(c.escape_unicode());
        } else if c == '"' || c == '\\' {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    if count > SHOWN_CHARS {
        out.push_str(&format!("… ({count} characters)"));
    }
    out
}

/// Characters that must not reach a reply or a log as they are: controls,
/// bidirectional overrides and isolates, and zero-width or separator marks.
fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn shown_values_are_bounded_and_escaped() {
        assert_eq!(shown("orders"), "orders");
        assert_eq!(shown("a\u{202e}b\nc"), "a\\u{202e}b\\u{a}c");
        assert_eq!(shown("say \"hi\""), "say \\\"hi\\\"");
        let long = shown(&"x".repeat(8_000));
        assert!(long.starts_with(&"x".repeat(200)));
        assert!(long.ends_with("… (8000 characters)"), "{long}");
        assert!(long.chars().count() < 230);
        assert_eq!(shown("ümlaut"), "ümlaut");
    }
}
