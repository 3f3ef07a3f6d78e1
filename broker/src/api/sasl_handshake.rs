//! SaslHandshake (v0–1): the client names a mechanism; the answer lists the
//! enabled ones, with UNSUPPORTED_SASL_MECHANISM when its choice is not one.
//! v1 is followed by SaslAuthenticate requests, v0 by raw SASL tokens.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{SaslHandshakeRequest, SaslHandshakeResponse};
use tally_kafka::sasl::Mechanism;

use super::str_bytes;

/// The answer, and the mechanism when the client chose an enabled one.
pub(crate) fn handle(request: &SaslHandshakeRequest) -> (SaslHandshakeResponse, Option<Mechanism>) {
    let mechanisms = Mechanism::ALL.iter().map(|m| str_bytes(m.name())).collect();
    let chosen = request.mechanism.parse::<Mechanism>().ok();
    let error = match chosen {
        Some(_) => 0,
        None => ResponseError::UnsupportedSaslMechanism.code(),
    };
    (
        SaslHandshakeResponse::default()
            .with_error_code(error)
            .with_mechanisms(mechanisms),
        chosen,
    )
}

/// The answer to a SaslHandshake out of order (after a handshake or a login).
pub(crate) fn illegal_state() -> SaslHandshakeResponse {
    SaslHandshakeResponse::default()
        .with_error_code(ResponseError::IllegalSaslState.code())
        .with_mechanisms(Mechanism::ALL.iter().map(|m| str_bytes(m.name())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enabled_mechanism_is_chosen_and_others_are_refused_with_the_list() {
        for m in Mechanism::ALL {
            let (r, chosen) =
                handle(&SaslHandshakeRequest::default().with_mechanism(str_bytes(m.name())));
            assert_eq!((r.error_code, chosen), (0, Some(m)));
            assert_eq!(r.mechanisms.len(), 3);
        }
        let (r, chosen) =
            handle(&SaslHandshakeRequest::default().with_mechanism(str_bytes("GSSAPI")));
        assert_eq!((r.error_code, chosen), (33, None));
        let names: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
        assert_eq!(names, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);
    }
}
