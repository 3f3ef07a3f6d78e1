//! The Kafka wire shared by tally's broker (the server side) and collector (the client
//! side): for now the TLS set-up ([`tls`]) and the SASL mechanisms ([`sasl`]).
//!
//! Nothing here knows about listeners or Kafka request framing: the broker runs
//! [`tls::ServerTls::accept`] on each accepted socket and feeds SaslAuthenticate's bytes to
//! a [`sasl::Authenticator`]; the collector runs [`tls::ClientTls::connect`] and a
//! [`sasl::ClientAuthenticator`].

mod error;
pub mod sasl;
pub mod tls;

pub use error::{Error, Result};
