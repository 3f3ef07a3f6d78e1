//! The crate's error type.
//!
//! Messages name the file or value that is wrong, in quotes, and say what would be
//! accepted. None of them ever holds a password or a private key.

use std::io;
use std::path::PathBuf;

use crate::client::KafkaCode;
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

    /// A client setting has a value that is not one of those accepted.
    #[error("invalid {setting} '{value}'; accepted: {accepted}")]
    InvalidSetting {
        /// The setting, as a user names it (`security protocol`, `SASL mechanism`, …).
        setting: &'static str,
        /// The value as given.
        value: String,
        /// What would be accepted.
        accepted: &'static str,
    },

    /// A client setting that the others make necessary is missing.
    #[error("{what} is required with {because}")]
    MissingSetting {
        /// What is missing (`a SASL mechanism (sasl_mechanism)`, …).
        what: &'static str,
        /// Why it is needed (`security protocol 'sasl_ssl'`, …).
        because: String,
    },

    /// No bootstrap server could be reached and asked for the cluster's metadata.
    #[error("cannot reach the cluster through any bootstrap server: {}", tried.iter().map(|(b, e)| format!("'{b}': {e}")).collect::<Vec<_>>().join("; "))]
    Bootstrap {
        /// Each server tried, with why it failed.
        tried: Vec<(String, String)>,
    },

    /// A TCP connection to a broker could not be opened in time or at all.
    #[error("cannot connect to broker '{broker}': {reason}")]
    Connect {
        /// The broker, `host:port`.
        broker: String,
        /// Why.
        reason: String,
    },

    /// The connection to a broker failed or was closed while requests were on it.
    #[error("connection to broker '{broker}' lost: {reason}")]
    Connection {
        /// The broker, `host:port`.
        broker: String,
        /// Why.
        reason: String,
    },

    /// A broker did not answer a request within the request timeout.
    #[error("broker '{broker}' did not answer {api} within {timeout_ms} ms")]
    Timeout {
        /// The broker, `host:port`.
        broker: String,
        /// The request.
        api: &'static str,
        /// The request timeout.
        timeout_ms: u128,
    },

    /// A broker sent a frame that cannot be a response: a length that is negative, too
    /// short, or above `max_response_bytes`, or bytes that do not decode.
    #[error("broker '{broker}' sent a malformed response: {reason}")]
    Malformed {
        /// The broker, `host:port`.
        broker: String,
        /// What is wrong.
        reason: String,
    },

    /// A Fetch answer decoded, but its records are damaged (a CRC that does not hold, a
    /// field that runs past its batch). The connection is fine and is kept.
    #[error("broker '{broker}' sent damaged records: {reason}")]
    CorruptRecords {
        /// The broker, `host:port`.
        broker: String,
        /// What is wrong, and where.
        reason: String,
    },

    /// A record of `__consumer_offsets` whose key or value is not in any layout Kafka
    /// writes there.
    #[error("a __consumer_offsets record does not parse: {reason}")]
    OffsetsTopicRecord {
        /// What is wrong, and where.
        reason: String,
    },

    /// A request could not be encoded (a bug, or a value out of the protocol's range).
    #[error("cannot encode {api} v{version}: {reason}")]
    Encode {
        /// The request.
        api: &'static str,
        /// Its version.
        version: i16,
        /// What kafka-protocol said.
        reason: String,
    },

    /// The broker and this client share no version of an API.
    #[error(
        "broker '{broker}' speaks {api} v{broker_min} to v{broker_max} and this client \
         v{client_min} to v{client_max}: no common version"
    )]
    NoCommonVersion {
        /// The broker, `host:port`.
        broker: String,
        /// The API.
        api: &'static str,
        /// The oldest version the broker speaks.
        broker_min: i16,
        /// The newest version the broker speaks.
        broker_max: i16,
        /// The oldest version this client speaks.
        client_min: i16,
        /// The newest version this client speaks.
        client_max: i16,
    },

    /// The broker does not offer an API at all.
    #[error("broker '{broker}' does not offer {api}")]
    UnsupportedApi {
        /// The broker, `host:port`.
        broker: String,
        /// The API.
        api: &'static str,
    },

    /// A broker answered a whole request with an error code.
    #[error("broker '{broker}' answered {api} with {code}")]
    Kafka {
        /// The broker, `host:port`.
        broker: String,
        /// The request.
        api: &'static str,
        /// The error.
        code: KafkaCode,
    },

    /// The client knows no broker that it could send a request to.
    #[error("no broker is known to send {api} to")]
    NoBroker {
        /// The request.
        api: &'static str,
    },

    /// A SASL login to a broker failed. Never holds the password or the token.
    #[error("SASL {mechanism} login as '{user}' to broker '{broker}' failed: {reason}")]
    SaslLogin {
        /// The mechanism.
        mechanism: String,
        /// The user (for OAUTHBEARER, the token file).
        user: String,
        /// The broker, `host:port`.
        broker: String,
        /// Why.
        reason: String,
    },
}
