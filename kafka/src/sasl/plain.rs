//! PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`, in one message.

use super::users::Users;
use super::{AuthError, AuthFailure, Mechanism, Password, Step};

/// The largest PLAIN message accepted: a name and a password, with room to spare.
const MAX_MESSAGE: usize = 4096;

/// Checks one PLAIN message against `users`.
pub(super) fn authenticate(users: &Users, message: &[u8]) -> Result<Step, AuthError> {
    let malformed = |user: Option<&str>| {
        AuthError::new(
            Mechanism::Plain,
            AuthFailure::Malformed("PLAIN message"),
            user,
        )
    };
    if message.len() > MAX_MESSAGE {
        return Err(malformed(None));
    }
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(None));
    };
    let (Ok(authzid), Ok(user)) = (std::str::from_utf8(authzid), std::str::from_utf8(authcid))
    else {
        return Err(malformed(None));
    };
    if user.is_empty() || password.is_empty() {
        return Err(malformed(Some(user).filter(|u| !u.is_empty())));
    }
    // Kafka lets a client name itself as the authorization id, and nobody else.
    if !authzid.is_empty() && authzid != user {
        return Err(AuthError::new(
            Mechanism::Plain,
            AuthFailure::AuthzidNotUser,
            Some(user),
        ));
    }
    if users.check_plain(user, password) {
        Ok(Step::Done {
            user: user.to_owned(),
            response: Vec::new(),
        })
    } else {
        Err(AuthError::new(
            Mechanism::Plain,
            AuthFailure::InvalidCredentials,
            Some(user),
        ))
    }
}

/// The client's PLAIN message, with an empty authorization id (as Kafka clients send it).
pub(super) fn client_message(user: &str, password: &Password) -> Vec<u8> {
    let mut message = Vec::with_capacity(user.len() + password.expose().len() + 2);
    message.push(0);
    message.extend_from_slice(user.as_bytes());
    message.push(0);
    message.extend_from_slice(password.expose().as_bytes());
    message
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sasl::{Authenticator, ClientAuthenticator, ClientStep};

    fn users() -> Arc<Users> {
        Arc::new(Users::from_entries([("alice", "wonderland"), ("bob", "builder")]).unwrap())
    }

    fn server(message: &[u8]) -> Result<Step, AuthError> {
        Authenticator::new(Mechanism::Plain, users()).step(message)
    }

    #[test]
    fn client_and_server_agree() {
        let mut client = ClientAuthenticator::new(Mechanism::Plain, "alice", "wonderland".into());
        let first = client.start();
        assert_eq!(first, b"\0alice\0wonderland");
        let Step::Done { user, response } = server(&first).unwrap() else {
            panic!("PLAIN is one step")
        };
        assert_eq!(user, "alice");
        assert_eq!(client.step(&response).unwrap(), ClientStep::Done);
    }

    #[test]
    fn authzid_may_be_the_user_and_no_one_else() {
        let ok = server(b"alice\0alice\0wonderland").unwrap();
        assert_eq!(
            ok,
            Step::Done {
                user: "alice".into(),
                response: vec![]
            }
        );
        let err = server(b"bob\0alice\0wonderland").unwrap_err();
        assert_eq!(err.failure(), AuthFailure::AuthzidNotUser);
        assert_eq!(err.user(), Some("alice"));
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_alike() {
        let wrong = server(b"\0alice\0builder").unwrap_err();
        let unknown = server(b"\0mallory\0wonderland").unwrap_err();
        assert_eq!(wrong.failure(), AuthFailure::InvalidCredentials);
        assert_eq!(wrong.message(), unknown.message());
        assert_eq!(
            wrong.message(),
            "Authentication failed during authentication due to invalid credentials with SASL mechanism PLAIN"
        );
        assert!(!wrong.message().contains("builder"));
        assert_eq!(wrong.user(), Some("alice"));
        assert_eq!(unknown.user(), Some("mallory"));
    }

    #[test]
    fn malformed_messages_are_refused_without_echoing_them() {
        for message in [
            &b""[..],
            b"alice",
            b"\0alice",
            b"\0alice\0",
            b"\0\0secretpw",
            b"\0alice\0secretpw\0extra",
            b"\xff\0alice\0secretpw",
            b"\0al\xffice\0secretpw",
        ] {
            let err = server(message).unwrap_err();
            assert_eq!(err.failure(), AuthFailure::Malformed("PLAIN message"));
            assert!(!err.message().contains("secretpw"), "{}", err.message());
        }
        assert!(server(&vec![b'a'; MAX_MESSAGE + 1]).is_err());
    }

    #[test]
    fn a_second_message_is_refused() {
        let mut auth = Authenticator::new(Mechanism::Plain, users());
        auth.step(b"\0alice\0wonderland").unwrap();
        let err = auth.step(b"\0alice\0wonderland").unwrap_err();
        assert_eq!(err.failure(), AuthFailure::Unexpected);
    }
}
