//! The crate's error type.
//!
//! Messages name the file or value that is wrong, in quotes, and say what would be
//! accepted. None of them ever holds a password or a private key.

use std::io;
use std::path::PathBuf;

use crate::sasl::Mechanism;

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while setting up TLS, loading users, or running the
/// client side of a SASL exchange. The server side of an exchange fails with
/// [`AuthError`](crate::sasl::AuthError), which is what a client may be told.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    #[error("cannot read '{}': {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// A certificate file holds no `CERTIFICATE` PEM section.
    #[error(
        "certificate file '{}' holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` sections)",
        path.display()
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },

    /// A key file holds no private key section.
    #[error(
        "no private key found in '{}' (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` section; an encrypted key must be decrypted first)",
        path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },

    /// A file is not well-formed PEM.
    #[error("'{}' is not valid PEM: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader found wrong.
        message: String,
    },

    /// The private key does not belong to the (first) certificate of the chain.
    #[error(
        "the private key in '{}' does not belong to the certificate in '{}'",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },

    /// The certificate chain and key could not be used together for another reason
    /// (for example, a key type that the `ring` provider cannot sign with).
    #[error(
        "cannot use the certificate in '{}' with the key in '{}': {source}",
        cert.display(),
        key.display()
    )]
    CertifiedKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },

    /// A CA file holds certificates, but none that can serve as a trust anchor.
    #[error("CA file '{}' holds no certificate that can serve as a trusted CA", path.display())]
    UnusableCa {
        /// The file.
        path: PathBuf,
    },

    /// The verifier of client certificates could not be built from the CA file.
    #[error("cannot verify client certificates with the CA in '{}': {message}", path.display())]
    ClientVerifier {
        /// The client CA file.
        path: PathBuf,
        /// What rustls said.
        message: String,
    },

    /// The system's root certificates could not be found.
    #[error(
        "no root certificates found on this system ({details}); install the system's CA \
         certificates (Debian: `ca-certificates`) or pass a CA file"
    )]
    NoRootCertificates {
        /// What the platform's certificate store reported.
        details: String,
    },

    /// A client certificate was given without its key, or a key without its certificate.
    #[error("a client certificate needs both files: the certificate and its private key")]
    IncompleteClientCertificate,

    /// Any other TLS set-up error.
    #[error("TLS set-up failed: {0}")]
    Tls(#[from] rustls::Error),

    /// A host cannot be used as a TLS server name.
    #[error("'{host}' is not a valid TLS server name (expected a DNS name or an IP address)")]
    InvalidServerName {
        /// The host as given.
        host: String,
    },

    /// The TLS handshake failed.
    #[error("TLS handshake with '{peer}' failed: {source}")]
    Handshake {
        /// The peer: a host name, or an address.
        peer: String,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// The users file can be read by group or others.
    #[error(
        "'{path}' holds passwords but group or others may read it (mode {mode:04o}); \
         allow only its owner: `chmod 600 '{path}'`",
        path = path.display()
    )]
    UsersFileReadable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The users file is not valid TOML of the expected shape.
    #[error(
        "'{}' is not a valid users file: {message} (expected `[[user]]` tables with \
         `name = \"…\"` and `password = \"…\"`)",
        path.display()
    )]
    UsersFileSyntax {
        /// The file.
        path: PathBuf,
        /// What is wrong and where (line and column), without the text of the line.
        message: String,
    },

    /// The users file names no user.
    #[error(
        "'{}' names no user: add at least one `[[user]]` with `name = \"…\"` and `password = \"…\"`",
        path.display()
    )]
    NoUsers {
        /// The file.
        path: PathBuf,
    },

    /// A user has an empty name.
    #[error("'{}': user number {number} has an empty name", path.display())]
    EmptyUserName {
        /// The file.
        path: PathBuf,
        /// Which `[[user]]` entry, counting from 1.
        number: usize,
    },

    /// A user has an empty password.
    #[error("'{}': user '{name}' has an empty password", path.display())]
    EmptyPassword {
        /// The file.
        path: PathBuf,
        /// The user.
        name: String,
    },

    /// A user name appears twice.
    #[error("'{}' names user '{name}' more than once; each user may appear once", path.display())]
    DuplicateUser {
        /// The file.
        path: PathBuf,
        /// The user.
        name: String,
    },

    /// A SASL mechanism name is not one that tally speaks.
    #[error("unknown SASL mechanism '{name}'; accepted: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")]
    UnknownMechanism {
        /// The name as given.
        name: String,
    },

    /// The client side of a SASL exchange failed: the server refused, or it sent
    /// something that a correct server would not.
    #[error("SASL {mechanism} authentication failed: {reason}")]
    SaslClient {
        /// The mechanism.
        mechanism: Mechanism,
        /// What went wrong (never the password).
        reason: String,
    },
}
