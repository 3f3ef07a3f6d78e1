//! The Kafka wire shared by tally's broker (the server side) and collector (the client
//! side): the TLS set-up ([`tls`]), the SASL mechanisms ([`sasl`]), and the collector's
//! Kafka client ([`client`]), and with the `codecs` feature Kafka's v2 record
//! batches ([`records`]): parsing, checking and reading every record's offset and
//! timestamp through gzip, snappy, lz4 and zstd.
//!
//! Nothing here knows about listeners: the broker runs [`tls::ServerTls::accept`] on each
//! accepted socket and feeds SaslAuthenticate's bytes to a [`sasl::Authenticator`]. The
//! client frames its own requests, and runs [`tls::ClientTls::connect`] and a
//! [`sasl::ClientAuthenticator`] on each connection it opens.

pub mod client;
mod error;
#[cfg(feature = "codecs")]
pub mod records;
pub mod sasl;
pub mod tls;

pub use error::{Error, Result};
