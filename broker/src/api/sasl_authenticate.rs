//! SaslAuthenticate (v0–2): one step of the exchange that a SaslHandshake
//! began, through the connection's [`Authenticator`]. A refusal answers
//! SASL_AUTHENTICATION_FAILED with the authenticator's message, which never
//! holds the password and reads the same for an unknown user as for a wrong
//! password.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslAuthenticateResponse};
use tally_kafka::sasl::{AuthError, Authenticator, Step};

use super::str_bytes;

/// Where the exchange stands after one request.
pub(crate) enum Outcome {
    /// The client has more to send.
    Continue,
    /// The client is authenticated as this user.
    Done(String),
    /// The login was refused; the connection closes after the answer.
    Failed(AuthError),
}

/// One step: the answer and where the exchange stands.
pub(crate) fn handle(
    auth: &mut Authenticator,
    request: &SaslAuthenticateRequest,
) -> (SaslAuthenticateResponse, Outcome) {
    match auth.step(&request.auth_bytes) {
        Ok(Step::Continue(bytes)) => (
            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(bytes)),
            Outcome::Continue,
        ),
        Ok(Step::Done { user, response }) => (
            // A session lifetime of 0: the client never needs to log in again.
            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(response)),
            Outcome::Done(user),
        ),
        Err(e) => (
            SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                .with_error_message(Some(str_bytes(&e.message()))),
            Outcome::Failed(e),
        ),
    }
}

/// The answer to a SaslAuthenticate before any SaslHandshake, or after the login.
pub(crate) fn illegal_state() -> SaslAuthenticateResponse {
    SaslAuthenticateResponse::default()
        .with_error_code(ResponseError::IllegalSaslState.code())
        .with_error_message(Some(str_bytes(
            "SaslAuthenticate is only valid after a SaslHandshake and before the login completes",
        )))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tally_kafka::sasl::{Mechanism, Users};

    use super::*;

    fn plain(user: &str, password: &str) -> SaslAuthenticateRequest {
        SaslAuthenticateRequest::default()
            .with_auth_bytes(Bytes::from(format!("\0{user}\0{password}")))
    }

    #[test]
    fn plain_logs_in_and_a_wrong_password_fails_with_a_message_without_it() {
        let users = Arc::new(Users::from_entries([("alice", "secret")]).unwrap());
        let mut auth = Authenticator::new(Mechanism::Plain, users.clone());
        let (r, outcome) = handle(&mut auth, &plain("alice", "secret"));
        assert_eq!(r.error_code, 0);
        assert!(matches!(outcome, Outcome::Done(u) if u == "alice"));

        let mut auth = Authenticator::new(Mechanism::Plain, users);
        let (r, outcome) = handle(&mut auth, &plain("alice", "wrong-password"));
        assert_eq!(r.error_code, 58);
        let message = r.error_message.unwrap().to_string();
        assert!(message.contains("invalid credentials"), "{message}");
        assert!(!message.contains("wrong-password"), "{message}");
        assert!(matches!(outcome, Outcome::Failed(e) if e.user() == Some("alice")));
    }
}
