//! The Kafka wire shared by tally's broker (the server side) and collector (the client
//! side): the TLS set-up ([`tls`]), the SASL mechanisms ([`sasl`]), and the collector's
//! Kafka client ([`client`]).
//!
//! Nothing here knows about listeners: the broker runs [`tls::ServerTls::accept`] on each
//! accepted socket and feeds SaslAuthenticate's bytes to a [`sasl::Authenticator`]. The
//! client frames its own requests, and runs [`tls::ClientTls::connect`] and a
//! [`sasl::ClientAuthenticator`] on each connection it opens.

pub mod client;
mod error;
pub mod sasl;
pub mod tls;

pub use error::{Error, Result};
