//! SASL: the mechanisms PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, for both sides.
//!
//! The server side is one [`Authenticator`] per connection: the broker feeds it the bytes
//! of each SaslAuthenticate request and sends back what [`Authenticator::step`] returns,
//! until it answers [`Step::Done`] with the authenticated user, or fails with an
//! [`AuthError`] whose [`message`](AuthError::message) goes into the
//! `SASL_AUTHENTICATION_FAILED` response. A wrong password and an unknown user fail in
//! the same way, at the same step: a client cannot learn which users exist.
//!
//! The client side is a [`ClientAuthenticator`], used by the collector and by the tests of
//! the server side.
//!
//! Users come from a TOML file ([`Users::load`]); their SCRAM credentials are derived
//! once, at load, and their passwords are not kept.

mod plain;
mod scram;
mod users;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;

use crate::{Error, Result};

pub use users::{Users, UsersFile};

/// The iteration count of the SCRAM credentials that the server derives (Kafka's
/// default, and RFC 7677's minimum).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// The fewest SCRAM iterations that the client accepts from a server: fewer would make
/// a stolen exchange cheap to brute-force (RFC 7677 §4).
pub const MIN_SCRAM_ITERATIONS: u32 = 4096;

/// The most SCRAM iterations that the client accepts from a server, so that a hostile
/// server cannot make the client spin (Kafka itself allows at most 16384).
pub const MAX_SCRAM_ITERATIONS: u32 = 100_000;

/// A SASL mechanism that tally speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// PLAIN (RFC 4616): the password in clear, so only over TLS in earnest.
    Plain,
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-512 (RFC 5802 with SHA-512, as Kafka speaks it).
    ScramSha512,
}

impl Mechanism {
    /// Every mechanism, in the order the broker advertises them.
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Plain,
        Mechanism::ScramSha256,
        Mechanism::ScramSha512,
    ];

    /// The name on the wire, as in SaslHandshake: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// Whether this is one of the SCRAM mechanisms.
    pub fn is_scram(self) -> bool {
        !matches!(self, Mechanism::Plain)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = Error;

    /// Parses a name as it appears in SaslHandshake; the names are case-sensitive there.
    fn from_str(name: &str) -> Result<Self> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| Error::UnknownMechanism {
                name: name.to_owned(),
            })
    }
}

/// A password: kept out of `Debug` output, so that it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Password(password.into())
    }

    /// The password itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the password is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl From<String> for Password {
    fn from(password: String) -> Self {
        Password(password)
    }
}

impl From<&str> for Password {
    fn from(password: &str) -> Self {
        Password(password.to_owned())
    }
}

/// What the server does after one client message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes to the client (SaslAuthenticate's `auth_bytes`) and wait for its
    /// next message.
    Continue(Vec<u8>),
    /// The client is authenticated as `user`; send `response` (empty for PLAIN, the
    /// server-final message for SCRAM) with the successful SaslAuthenticate response.
    Done {
        /// The authenticated user.
        user: String,
        /// The last bytes for the client.
        response: Vec<u8>,
    },
}

/// Why the server refused an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The user is unknown or the password is wrong: the two are not told apart.
    InvalidCredentials,
    /// A client message does not follow the mechanism's grammar; names which one.
    Malformed(&'static str),
    /// The SCRAM client-final message does not carry the nonce of this exchange.
    NonceMismatch,
    /// The SCRAM client-final message's channel binding is not the client-first
    /// message's gs2 header.
    ChannelBindingMismatch,
    /// The client asked for channel binding (`p=`), which tally does not offer.
    ChannelBindingUnsupported,
    /// The client asked to act as another user than the one it authenticates as.
    AuthzidNotUser,
    /// A message arrived after the exchange had finished or failed.
    Unexpected,
}

/// The server side's refusal. Its [`message`](AuthError::message) is what the client is
/// told; it never holds the password and reads the same for an unknown user as for a
/// wrong password. [`user`](AuthError::user) is the name the client gave, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthError {
    mechanism: Mechanism,
    failure: AuthFailure,
    user: Option<String>,
}

impl AuthError {
    fn new(mechanism: Mechanism, failure: AuthFailure, user: Option<&str>) -> Self {
        AuthError {
            mechanism,
            failure,
            user: user.map(str::to_owned),
        }
    }

    /// The mechanism of the failed exchange (for `tally_broker_auth_failures_total`).
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Why it failed.
    pub fn failure(&self) -> AuthFailure {
        self.failure
    }

    /// The user name the client gave, if it got that far: for the log, never for the
    /// client.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The message for the client (SaslAuthenticate's `error_message`), worded as
    /// Kafka words it where Kafka has a wording.
    pub fn message(&self) -> String {
        let mechanism = self.mechanism;
        match self.failure {
            AuthFailure::InvalidCredentials => format!(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"
            ),
            AuthFailure::Malformed(what) => {
                format!("Authentication failed: malformed {what} with SASL mechanism {mechanism}")
            }
            AuthFailure::NonceMismatch => format!(
                "Authentication failed: the client-final message does not carry this exchange's nonce with SASL mechanism {mechanism}"
            ),
            AuthFailure::ChannelBindingMismatch => format!(
                "Authentication failed: the channel binding does not match the gs2 header with SASL mechanism {mechanism}"
            ),
            AuthFailure::ChannelBindingUnsupported => format!(
                "Authentication failed: channel binding is not supported with SASL mechanism {mechanism}"
            ),
            AuthFailure::AuthzidNotUser => format!(
                "Authentication failed: the authorization id must be empty or the user name with SASL mechanism {mechanism}"
            ),
            AuthFailure::Unexpected => format!(
                "Authentication failed: unexpected message after the exchange ended with SASL mechanism {mechanism}"
            ),
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for AuthError {}

/// The server side of one SASL exchange on one connection.
///
/// ```
/// # use std::sync::Arc;
/// # use tally_kafka::sasl::{Authenticator, ClientAuthenticator, ClientStep, Mechanism, Step, Users};
/// let users = Arc::new(Users::from_entries([("alice", "secret")]).unwrap());
/// let mut server = Authenticator::new(Mechanism::ScramSha256, users);
/// let mut client = ClientAuthenticator::new(Mechanism::ScramSha256, "alice", "secret".into());
/// let Step::Continue(server_first) = server.step(&client.start()).unwrap() else { panic!() };
/// let ClientStep::Continue(client_final) = client.step(&server_first).unwrap() else { panic!() };
/// let Step::Done { user, response } = server.step(&client_final).unwrap() else { panic!() };
/// assert_eq!(user, "alice");
/// assert_eq!(client.step(&response).unwrap(), ClientStep::Done);
/// ```
#[derive(Debug)]
pub struct Authenticator {
    mechanism: Mechanism,
    users: Arc<Users>,
    state: ServerState,
}

#[derive(Debug)]
enum ServerState {
    Start,
    ScramClientFinal(Box<scram::ServerFinalPending>),
    Ended,
}

impl Authenticator {
    /// Starts an exchange with `mechanism` against `users`. The users are those at the
    /// start of the exchange: a reload in the middle of it does not change them.
    pub fn new(mechanism: Mechanism, users: Arc<Users>) -> Self {
        Authenticator {
            mechanism,
            users,
            state: ServerState::Start,
        }
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Takes the client's next message. After an error or [`Step::Done`], every further
    /// message is refused.
    pub fn step(&mut self, client: &[u8]) -> Result<Step, AuthError> {
        let state = std::mem::replace(&mut self.state, ServerState::Ended);
        match state {
            ServerState::Start => match self.mechanism {
                Mechanism::Plain => plain::authenticate(&self.users, client),
                Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                    let nonce = scram::new_nonce();
                    let mechanism = self.mechanism;
                    let (server_first, pending) = scram::server_first(
                        mechanism,
                        |user| self.users.scram(user, mechanism),
                        client,
                        &nonce,
                    )?;
                    self.state = ServerState::ScramClientFinal(Box::new(pending));
                    Ok(Step::Continue(server_first))
                }
            },
            ServerState::ScramClientFinal(pending) => scram::server_final(*pending, client),
            ServerState::Ended => Err(AuthError::new(
                self.mechanism,
                AuthFailure::Unexpected,
                None,
            )),
        }
    }
}

/// What the client does after one server message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// Send these bytes to the server.
    Continue(Vec<u8>),
    /// The exchange succeeded (for SCRAM: the server proved that it knows the password).
    Done,
}

/// The client side of one SASL exchange.
///
/// [`start`](ClientAuthenticator::start) gives the first message; each server answer goes
/// to [`step`](ClientAuthenticator::step) until it returns [`ClientStep::Done`]. For PLAIN
/// the server's answer is the (empty) bytes of a successful SaslAuthenticate response.
#[derive(Debug)]
pub struct ClientAuthenticator {
    mechanism: Mechanism,
    user: String,
    password: Password,
    state: ClientState,
}

#[derive(Debug)]
enum ClientState {
    Start { nonce: String },
    PlainSent,
    ScramServerFirst(scram::ClientFirstSent),
    ScramServerFinal(scram::ClientFinalSent),
    Done,
    Failed,
}

impl ClientAuthenticator {
    /// Prepares an exchange as `user` with `password`.
    pub fn new(mechanism: Mechanism, user: impl Into<String>, password: Password) -> Self {
        ClientAuthenticator::with_nonce(mechanism, user, password, scram::new_nonce())
    }

    /// As [`new`](ClientAuthenticator::new), with a given SCRAM client nonce (tests).
    fn with_nonce(
        mechanism: Mechanism,
        user: impl Into<String>,
        password: Password,
        nonce: String,
    ) -> Self {
        ClientAuthenticator {
            mechanism,
            user: user.into(),
            password,
            state: ClientState::Start { nonce },
        }
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The first message to the server. Called again, it starts over.
    pub fn start(&mut self) -> Vec<u8> {
        let nonce = match &self.state {
            ClientState::Start { nonce } => nonce.clone(),
            _ => scram::new_nonce(),
        };
        match self.mechanism {
            Mechanism::Plain => {
                self.state = ClientState::PlainSent;
                plain::client_message(&self.user, &self.password)
            }
            Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                let (message, sent) = scram::client_first(&self.user, nonce);
                self.state = ClientState::ScramServerFirst(sent);
                message
            }
        }
    }

    /// Takes the server's next message.
    pub fn step(&mut self, server: &[u8]) -> Result<ClientStep> {
        let state = std::mem::replace(&mut self.state, ClientState::Failed);
        let mechanism = self.mechanism;
        let fail = |reason: &str| Error::SaslClient {
            mechanism,
            reason: reason.to_owned(),
        };
        match state {
            ClientState::PlainSent => {
                if !server.is_empty() {
                    return Err(fail("the server answered PLAIN with unexpected bytes"));
                }
                self.state = ClientState::Done;
                Ok(ClientStep::Done)
            }
            ClientState::ScramServerFirst(sent) => {
                let (message, next) = scram::client_final(mechanism, &self.password, sent, server)?;
                self.state = ClientState::ScramServerFinal(next);
                Ok(ClientStep::Continue(message))
            }
            ClientState::ScramServerFinal(sent) => {
                scram::verify_server_final(mechanism, sent, server)?;
                self.state = ClientState::Done;
                Ok(ClientStep::Done)
            }
            ClientState::Start { .. } => Err(fail("`start` must come before the server's answer")),
            ClientState::Done | ClientState::Failed => Err(fail("the exchange has already ended")),
        }
    }

    /// Whether the exchange has succeeded.
    pub fn is_done(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_names_round_trip_and_unknown_ones_are_refused() {
        for m in Mechanism::ALL {
            assert_eq!(m.name().parse::<Mechanism>().unwrap(), m);
        }
        let err = "scram-sha-1".parse::<Mechanism>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown SASL mechanism 'scram-sha-1'; accepted: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
        );
    }

    #[test]
    fn password_debug_is_redacted() {
        let p = Password::new("hunter2");
        assert_eq!(format!("{p:?}"), "Password(<redacted>)");
        let client = ClientAuthenticator::new(Mechanism::Plain, "bob", p);
        assert!(!format!("{client:?}").contains("hunter2"));
    }

    #[test]
    fn client_refuses_step_before_start_and_after_done() {
        let mut client = ClientAuthenticator::new(Mechanism::Plain, "bob", "pw".into());
        assert!(client.step(b"").is_err());
        let mut client = ClientAuthenticator::new(Mechanism::Plain, "bob", "pw".into());
        client.start();
        assert_eq!(client.step(b"").unwrap(), ClientStep::Done);
        assert!(client.is_done());
        assert!(client.step(b"").is_err());
    }

    #[test]
    fn plain_client_refuses_a_non_empty_answer() {
        let mut client = ClientAuthenticator::new(Mechanism::Plain, "bob", "pw".into());
        client.start();
        let err = client.step(b"surprise").unwrap_err().to_string();
        assert!(err.contains("unexpected bytes"), "{err}");
    }
}
