//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), as Kafka speaks them:
//!
//! ```text
//! client-first  n,,n=<user>,r=<client nonce>
//! server-first  r=<client nonce><server nonce>,s=<salt, base64>,i=<iterations>
//! client-final  c=biws,r=<both nonces>,p=<proof, base64>
//! server-final  v=<server signature, base64>
//! ```
//!
//! No channel binding is offered (the gs2 flag `n` or `y`; `p=` is refused), and like
//! Kafka the password's UTF-8 bytes are hashed without SASLprep. User names are escaped
//! as RFC 5802's saslname (`,` as `=2C`, `=` as `=3D`). Extensions (Kafka's
//! `tokenauth=true`) are read and ignored.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::{
    AuthError, AuthFailure, MAX_SCRAM_ITERATIONS, MIN_SCRAM_ITERATIONS, Mechanism, Password,
    SCRAM_ITERATIONS, Step,
};
use crate::{Error, Result};

/// The gs2 header that the client sends: no channel binding, no authorization id.
const GS2_HEADER: &str = "n,,";
/// Random bytes in a nonce (before base64), from the client or the server.
const NONCE_BYTES: usize = 24;
/// Bytes of salt per credential.
const SALT_BYTES: usize = 16;
/// The longest SCRAM message either side accepts; real ones are a few hundred bytes.
const MAX_MESSAGE: usize = 4096;

/// Fills `buf` from the operating system's random number generator.
pub(super) fn fill_random(buf: &mut [u8]) {
    // Linux's getrandom(2) does not fail once the pool is seeded, and without
    // randomness there is no safe way on.
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// A fresh nonce: printable, without commas.
pub(super) fn new_nonce() -> String {
    let mut bytes = [0; NONCE_BYTES];
    fill_random(&mut bytes);
    BASE64.encode(bytes)
}

/// A fresh salt for a credential.
pub(super) fn new_salt() -> Vec<u8> {
    let mut salt = vec![0; SALT_BYTES];
    fill_random(&mut salt);
    salt
}

fn hmac_with<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: hashing long ones and padding short ones.
    let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of every length")
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hmac(mechanism: Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha512 => hmac_with::<Hmac<Sha512>>(key, data),
        Mechanism::ScramSha256 | Mechanism::Plain => hmac_with::<Hmac<Sha256>>(key, data),
    }
}

fn hash(mechanism: Mechanism, data: &[u8]) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha512 => Sha512::digest(data).to_vec(),
        Mechanism::ScramSha256 | Mechanism::Plain => Sha256::digest(data).to_vec(),
    }
}

fn hash_len(mechanism: Mechanism) -> usize {
    match mechanism {
        Mechanism::ScramSha512 => 64,
        Mechanism::ScramSha256 | Mechanism::Plain => 32,
    }
}

/// RFC 5802's Hi(): PBKDF2 with HMAC of the mechanism's hash.
fn salted_password(mechanism: Mechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0; hash_len(mechanism)];
    match mechanism {
        Mechanism::ScramSha512 => {
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out)
        }
        Mechanism::ScramSha256 | Mechanism::Plain => {
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out)
        }
    }
    out
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// What the server keeps of one user's password for one SCRAM mechanism (RFC 5802 §3):
/// enough to check a proof, not enough to make one.
#[derive(Clone)]
pub(super) struct ScramCredential {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl ScramCredential {
    /// Derives the credential from a password (the costly part: PBKDF2).
    pub(super) fn derive(
        mechanism: Mechanism,
        password: &[u8],
        salt: Vec<u8>,
        iterations: u32,
    ) -> ScramCredential {
        let salted = salted_password(mechanism, password, &salt, iterations);
        let client_key = hmac(mechanism, &salted, b"Client Key");
        ScramCredential {
            stored_key: hash(mechanism, &client_key),
            server_key: hmac(mechanism, &salted, b"Server Key"),
            salt,
            iterations,
        }
    }

    /// A stand-in for an unknown user: its salt is the same on every attempt, as a real
    /// user's is, and no proof matches its keys except by breaking HMAC.
    pub(super) fn decoy(mechanism: Mechanism, key: &[u8; 32], user: &str) -> ScramCredential {
        let seed = hmac_with::<Hmac<Sha256>>(key, format!("{mechanism}\0{user}").as_bytes());
        ScramCredential {
            salt: seed[..SALT_BYTES].to_vec(),
            iterations: SCRAM_ITERATIONS,
            stored_key: hmac(mechanism, &seed, b"stored key"),
            server_key: hmac(mechanism, &seed, b"server key"),
        }
    }

    #[cfg(test)]
    pub(super) fn salt(&self) -> &[u8] {
        &self.salt
    }

    #[cfg(test)]
    pub(super) fn iterations(&self) -> u32 {
        self.iterations
    }
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("salt", &BASE64.encode(&self.salt))
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// `name=value`: the value, when `part` is attribute `name`.
fn attribute<'a>(part: &'a str, name: &str) -> Option<&'a str> {
    part.strip_prefix(name)?.strip_prefix('=')
}

/// An extension: `key=value` with an alphanumeric key (Kafka's `tokenauth=true`).
fn is_extension(part: &str) -> bool {
    part.split_once('=')
        .is_some_and(|(key, _)| !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// RFC 5802's nonce: printable ASCII except `,`.
fn is_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A saslname to a user name: `=2C` is `,` and `=3D` is `=`; any other `=` is invalid.
fn decode_saslname(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3)?;
        out.push(match escape {
            "=2C" => ',',
            "=3D" => '=',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// A user name to a saslname.
fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// The server's state between its server-first message and the client-final message.
#[derive(Debug)]
pub(super) struct ServerFinalPending {
    mechanism: Mechanism,
    user: String,
    known: bool,
    credential: ScramCredential,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Reads the client-first message, looks the user up, and answers with the server-first
/// message. An unknown user gets a decoy credential and fails only at the proof.
pub(super) fn server_first(
    mechanism: Mechanism,
    lookup: impl FnOnce(&str) -> (ScramCredential, bool),
    message: &[u8],
    server_nonce: &str,
) -> Result<(Vec<u8>, ServerFinalPending), AuthError> {
    let malformed = |user: Option<&str>| {
        AuthError::new(
            mechanism,
            AuthFailure::Malformed("SCRAM client-first message"),
            user,
        )
    };
    if message.len() > MAX_MESSAGE {
        return Err(malformed(None));
    }
    let text = std::str::from_utf8(message).map_err(|_| malformed(None))?;
    let (flag, rest) = text.split_once(',').ok_or_else(|| malformed(None))?;
    match flag {
        "n" | "y" => {}
        _ if flag.starts_with("p=") => {
            return Err(AuthError::new(
                mechanism,
                AuthFailure::ChannelBindingUnsupported,
                None,
            ));
        }
        _ => return Err(malformed(None)),
    }
    let (authzid, bare) = rest.split_once(',').ok_or_else(|| malformed(None))?;
    let authzid = match authzid {
        "" => None,
        _ => Some(
            attribute(authzid, "a")
                .and_then(decode_saslname)
                .ok_or_else(|| malformed(None))?,
        ),
    };
    let gs2_header = &text[..text.len() - bare.len()];

    let mut parts = bare.split(',');
    let user = parts
        .next()
        .and_then(|p| attribute(p, "n"))
        .and_then(decode_saslname)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| malformed(None))?;
    let client_nonce = parts
        .next()
        .and_then(|p| attribute(p, "r"))
        .filter(|n| is_nonce(n))
        .ok_or_else(|| malformed(Some(&user)))?;
    if !parts.all(is_extension) {
        return Err(malformed(Some(&user)));
    }
    if authzid.is_some_and(|a| a != user) {
        return Err(AuthError::new(
            mechanism,
            AuthFailure::AuthzidNotUser,
            Some(&user),
        ));
    }

    let (credential, known) = lookup(&user);
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        BASE64.encode(&credential.salt),
        credential.iterations
    );
    let pending = ServerFinalPending {
        mechanism,
        user,
        known,
        credential,
        gs2_header: gs2_header.to_owned(),
        client_first_bare: bare.to_owned(),
        server_first: server_first.clone(),
        nonce,
    };
    Ok((server_first.into_bytes(), pending))
}

/// Reads the client-final message and checks its proof; on success, answers with the
/// server-final message, which proves to the client that the server knows its password.
pub(super) fn server_final(pending: ServerFinalPending, message: &[u8]) -> Result<Step, AuthError> {
    let ServerFinalPending {
        mechanism,
        user,
        known,
        credential,
        gs2_header,
        client_first_bare,
        server_first,
        nonce,
    } = pending;
    let fail = |failure| AuthError::new(mechanism, failure, Some(&user));
    let malformed = || fail(AuthFailure::Malformed("SCRAM client-final message"));
    if message.len() > MAX_MESSAGE {
        return Err(malformed());
    }
    let text = std::str::from_utf8(message).map_err(|_| malformed())?;
    let (without_proof, proof) = text.rsplit_once(',').ok_or_else(malformed)?;
    let proof = attribute(proof, "p")
        .and_then(|p| BASE64.decode(p).ok())
        .filter(|p| p.len() == hash_len(mechanism))
        .ok_or_else(malformed)?;
    let mut parts = without_proof.split(',');
    let binding = parts
        .next()
        .and_then(|p| attribute(p, "c"))
        .and_then(|c| BASE64.decode(c).ok())
        .ok_or_else(malformed)?;
    let final_nonce = parts
        .next()
        .and_then(|p| attribute(p, "r"))
        .ok_or_else(malformed)?;
    if !parts.all(is_extension) {
        return Err(malformed());
    }
    if binding != gs2_header.as_bytes() {
        return Err(fail(AuthFailure::ChannelBindingMismatch));
    }
    // librdkafka before 2.x's fix sends the client nonce again in front of the
    // combined one; Kafka accepts a nonce that ends with the combined one
    // (ScramSaslServer), and so does tally. The proof covers the message as sent.
    if !final_nonce.ends_with(nonce.as_str()) || !is_nonce(final_nonce) {
        return Err(fail(AuthFailure::NonceMismatch));
    }

    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let client_signature = hmac(mechanism, &credential.stored_key, auth_message.as_bytes());
    let client_key = xor(&proof, &client_signature);
    let proof_holds: bool = hash(mechanism, &client_key)
        .ct_eq(&credential.stored_key)
        .into();
    if !(proof_holds && known) {
        return Err(fail(AuthFailure::InvalidCredentials));
    }
    let server_signature = hmac(mechanism, &credential.server_key, auth_message.as_bytes());
    Ok(Step::Done {
        response: format!("v={}", BASE64.encode(server_signature)).into_bytes(),
        user,
    })
}

/// The client's state between its client-first message and the server-first message.
#[derive(Debug)]
pub(super) struct ClientFirstSent {
    nonce: String,
    client_first_bare: String,
}

/// The client's state between its client-final message and the server-final message.
pub(super) struct ClientFinalSent {
    server_signature: Vec<u8>,
}

impl fmt::Debug for ClientFinalSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFinalSent").finish_non_exhaustive()
    }
}

/// The client-first message.
pub(super) fn client_first(user: &str, nonce: String) -> (Vec<u8>, ClientFirstSent) {
    let client_first_bare = format!("n={},r={nonce}", encode_saslname(user));
    let message = format!("{GS2_HEADER}{client_first_bare}").into_bytes();
    (
        message,
        ClientFirstSent {
            nonce,
            client_first_bare,
        },
    )
}

/// What a server sent in an `e=` attribute, shortened and printable, for an error.
fn server_error(value: &str) -> String {
    value
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Reads the server-first message, checks it, and makes the client-final message with
/// the proof.
pub(super) fn client_final(
    mechanism: Mechanism,
    password: &Password,
    sent: ClientFirstSent,
    server_first: &[u8],
) -> Result<(Vec<u8>, ClientFinalSent)> {
    let fail = |reason: String| Error::SaslClient { mechanism, reason };
    let malformed = || fail("the server-first message is malformed".to_owned());
    if server_first.len() > MAX_MESSAGE {
        return Err(malformed());
    }
    let text = std::str::from_utf8(server_first).map_err(|_| malformed())?;
    if let Some(refusal) = attribute(text, "e") {
        return Err(fail(format!(
            "the server refused: {}",
            server_error(refusal)
        )));
    }
    let mut parts = text.split(',');
    let nonce = parts
        .next()
        .and_then(|p| attribute(p, "r"))
        .ok_or_else(malformed)?;
    let salt = parts
        .next()
        .and_then(|p| attribute(p, "s"))
        .and_then(|s| BASE64.decode(s).ok())
        .filter(|s| !s.is_empty())
        .ok_or_else(malformed)?;
    let iterations = parts
        .next()
        .and_then(|p| attribute(p, "i"))
        .and_then(|i| i.parse::<u32>().ok())
        .ok_or_else(malformed)?;
    if !parts.all(is_extension) {
        return Err(malformed());
    }
    if !(nonce.len() > sent.nonce.len() && nonce.starts_with(&sent.nonce) && is_nonce(nonce)) {
        return Err(fail(
            "the server's nonce does not extend the client's".to_owned(),
        ));
    }
    if iterations < MIN_SCRAM_ITERATIONS {
        return Err(fail(format!(
            "the server asks for {iterations} iterations; at least {MIN_SCRAM_ITERATIONS} are required"
        )));
    }
    if iterations > MAX_SCRAM_ITERATIONS {
        return Err(fail(format!(
            "the server asks for {iterations} iterations; at most {MAX_SCRAM_ITERATIONS} are accepted"
        )));
    }

    let salted = salted_password(mechanism, password.expose().as_bytes(), &salt, iterations);
    let client_key = hmac(mechanism, &salted, b"Client Key");
    let stored_key = hash(mechanism, &client_key);
    let server_key = hmac(mechanism, &salted, b"Server Key");
    let without_proof = format!("c={},r={nonce}", BASE64.encode(GS2_HEADER));
    let auth_message = format!("{},{text},{without_proof}", sent.client_first_bare);
    let client_signature = hmac(mechanism, &stored_key, auth_message.as_bytes());
    let proof = xor(&client_key, &client_signature);
    let message = format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes();
    let server_signature = hmac(mechanism, &server_key, auth_message.as_bytes());
    Ok((message, ClientFinalSent { server_signature }))
}

/// Checks the server-final message: the server must prove that it knows the password.
pub(super) fn verify_server_final(
    mechanism: Mechanism,
    sent: ClientFinalSent,
    server_final: &[u8],
) -> Result<()> {
    let fail = |reason: String| Error::SaslClient { mechanism, reason };
    let text = std::str::from_utf8(server_final)
        .map_err(|_| fail("the server-final message is malformed".to_owned()))?;
    let first = text.split(',').next().unwrap_or_default();
    if let Some(refusal) = attribute(first, "e") {
        return Err(fail(format!(
            "the server refused: {}",
            server_error(refusal)
        )));
    }
    let signature = attribute(first, "v")
        .and_then(|v| BASE64.decode(v).ok())
        .ok_or_else(|| fail("the server-final message is malformed".to_owned()))?;
    if bool::from(signature.ct_eq(&sent.server_signature)) {
        Ok(())
    } else {
        Err(fail(
            "the server's signature does not verify: it does not know the password".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sasl::{Authenticator, ClientAuthenticator, ClientStep, Users};

    // RFC 7677 §3.
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credential() -> ScramCredential {
        static CREDENTIAL: std::sync::OnceLock<ScramCredential> = std::sync::OnceLock::new();
        CREDENTIAL
            .get_or_init(|| {
                ScramCredential::derive(
                    Mechanism::ScramSha256,
                    b"pencil",
                    BASE64.decode(RFC_SALT).unwrap(),
                    4096,
                )
            })
            .clone()
    }

    fn rfc_client() -> ClientAuthenticator {
        ClientAuthenticator::with_nonce(
            Mechanism::ScramSha256,
            "user",
            "pencil".into(),
            RFC_CLIENT_NONCE.to_owned(),
        )
    }

    fn rfc_server_first(message: &[u8]) -> Result<(Vec<u8>, ServerFinalPending), AuthError> {
        server_first(
            Mechanism::ScramSha256,
            |user| (rfc_credential(), user == "user"),
            message,
            RFC_SERVER_NONCE,
        )
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn rfc_7677_client_side() {
        let mut client = rfc_client();
        assert_eq!(text(&client.start()), RFC_CLIENT_FIRST);
        let ClientStep::Continue(client_final) = client.step(RFC_SERVER_FIRST.as_bytes()).unwrap()
        else {
            panic!("the client-final message comes next")
        };
        assert_eq!(text(&client_final), RFC_CLIENT_FINAL);
        assert_eq!(
            client.step(RFC_SERVER_FINAL.as_bytes()).unwrap(),
            ClientStep::Done
        );
        assert!(client.is_done());
    }

    #[test]
    fn rfc_7677_server_side() {
        let (server_first, pending) = rfc_server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(text(&server_first), RFC_SERVER_FIRST);
        let step = server_final(pending, RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(
            step,
            Step::Done {
                user: "user".into(),
                response: RFC_SERVER_FINAL.as_bytes().to_vec()
            }
        );
    }

    /// librdkafka 2.0 (Debian's kcat) sends its own nonce again before the combined
    /// one in the client-final message, with a proof over what it sent; Kafka accepts
    /// it, and so does tally.
    #[test]
    fn a_client_final_nonce_that_ends_with_the_exchanges_is_accepted_as_kafka_does() {
        let mechanism = Mechanism::ScramSha256;
        let salt = BASE64.decode(RFC_SALT).unwrap();
        let salted = salted_password(mechanism, b"pencil", &salt, 4096);
        let client_key = hmac(mechanism, &salted, b"Client Key");
        let stored_key = hash(mechanism, &client_key);
        let client_final = |nonce: &str| {
            let without_proof = format!("c=biws,r={nonce}");
            let auth_message =
                format!("n=user,r={RFC_CLIENT_NONCE},{RFC_SERVER_FIRST},{without_proof}");
            let signature = hmac(mechanism, &stored_key, auth_message.as_bytes());
            let proof = xor(&client_key, &signature);
            format!("{without_proof},p={}", BASE64.encode(proof))
        };
        let doubled = format!("{RFC_CLIENT_NONCE}{RFC_CLIENT_NONCE}{RFC_SERVER_NONCE}");
        let (_, pending) = rfc_server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        let step = server_final(pending, client_final(&doubled).as_bytes()).unwrap();
        assert!(matches!(step, Step::Done { user, .. } if user == "user"));
        // The exchange's nonce must still end it, with a valid proof.
        let other = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_NONCE}x");
        let (_, pending) = rfc_server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        let err = server_final(pending, client_final(&other).as_bytes()).unwrap_err();
        assert_eq!(err.failure(), AuthFailure::NonceMismatch);
    }

    fn users() -> Arc<Users> {
        Arc::new(Users::from_entries([("alice", "wonderland"), ("b,o=b", "builder")]).unwrap())
    }

    /// Runs a whole exchange; the error, if any, of the server or of the client.
    fn exchange(
        mechanism: Mechanism,
        user: &str,
        password: &str,
    ) -> std::result::Result<String, AuthError> {
        let mut server = Authenticator::new(mechanism, users());
        let mut client = ClientAuthenticator::new(mechanism, user, password.into());
        let Step::Continue(server_first) = server.step(&client.start())? else {
            panic!("SCRAM has a server-first message")
        };
        let ClientStep::Continue(client_final) = client.step(&server_first).unwrap() else {
            panic!("SCRAM has a client-final message")
        };
        let Step::Done { user, response } = server.step(&client_final)? else {
            panic!("SCRAM ends after the client-final message")
        };
        assert_eq!(client.step(&response).unwrap(), ClientStep::Done);
        Ok(user)
    }

    #[test]
    fn both_mechanisms_round_trip() {
        for mechanism in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
            assert_eq!(exchange(mechanism, "alice", "wonderland").unwrap(), "alice");
            assert_eq!(exchange(mechanism, "b,o=b", "builder").unwrap(), "b,o=b");
        }
    }

    #[test]
    fn sha512_messages_carry_a_64_byte_proof() {
        let mut client =
            ClientAuthenticator::new(Mechanism::ScramSha512, "alice", "wonderland".into());
        let mut server = Authenticator::new(Mechanism::ScramSha512, users());
        let Step::Continue(server_first) = server.step(&client.start()).unwrap() else {
            panic!()
        };
        assert!(text(&server_first).ends_with(",i=4096"));
        let ClientStep::Continue(client_final) = client.step(&server_first).unwrap() else {
            panic!()
        };
        let proof = text(&client_final).rsplit_once(",p=").unwrap().1;
        assert_eq!(BASE64.decode(proof).unwrap().len(), 64);
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_alike_at_the_proof() {
        for mechanism in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
            let wrong = exchange(mechanism, "alice", "builder").unwrap_err();
            let unknown = exchange(mechanism, "mallory", "wonderland").unwrap_err();
            assert_eq!(wrong.failure(), AuthFailure::InvalidCredentials);
            assert_eq!(unknown.failure(), AuthFailure::InvalidCredentials);
            assert_eq!(wrong.message(), unknown.message());
            assert_eq!(
                wrong.message(),
                format!(
                    "Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"
                )
            );
            assert_eq!(wrong.user(), Some("alice"));
            assert_eq!(unknown.user(), Some("mallory"));
            assert_eq!(wrong.mechanism(), mechanism);
        }
    }

    #[test]
    fn the_server_first_message_of_an_unknown_user_looks_like_a_known_ones() {
        let users = users();
        let shape = |user: &str| {
            let mut server = Authenticator::new(Mechanism::ScramSha256, users.clone());
            let Step::Continue(first) = server
                .step(format!("n,,n={user},r=abc").as_bytes())
                .unwrap()
            else {
                panic!()
            };
            let first = String::from_utf8(first).unwrap();
            let parts: Vec<String> = first.split(',').map(str::to_owned).collect();
            (parts[1].clone(), parts[2].clone(), parts[0].len())
        };
        let (known_salt, known_iterations, known_len) = shape("alice");
        let (decoy_salt, decoy_iterations, decoy_len) = shape("mallory");
        assert_eq!(known_salt.len(), decoy_salt.len());
        assert_eq!(known_iterations, decoy_iterations);
        assert_eq!(known_len, decoy_len);
        assert_eq!(shape("mallory").0, decoy_salt, "stable across attempts");
    }

    #[test]
    fn malformed_client_first_messages_are_refused() {
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"x,,n=user,r=abc",
            b"n,a,n=user,r=abc",
            b"n,a=bad=name,n=user,r=abc",
            b"n,,m=ext,n=user,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=us=er,r=abc",
            b"n,,n=us=2,r=abc",
            b"n,,n=user",
            b"n,,n=user,r=",
            b"n,,n=user,r=a\x01c",
            b"n,,n=user,x=abc",
            b"n,,r=abc,n=user",
            b"n,,n=user,r=abc,novalue",
            b"n,,n=user,r=abc,=x",
            b"n,,n=\xff,r=abc",
        ];
        for case in cases {
            let err = rfc_server_first(case).unwrap_err();
            assert_eq!(
                err.failure(),
                AuthFailure::Malformed("SCRAM client-first message"),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        let long = [b"n,,n=user,r=".as_slice(), &[b'a'; MAX_MESSAGE]].concat();
        assert!(rfc_server_first(&long).is_err());
        let err = rfc_server_first(b"p=tls-unique,,n=user,r=abc").unwrap_err();
        assert_eq!(err.failure(), AuthFailure::ChannelBindingUnsupported);
        let err = rfc_server_first(b"n,a=other,n=user,r=abc").unwrap_err();
        assert_eq!(err.failure(), AuthFailure::AuthzidNotUser);
        // An authzid that is the user, the flag `y`, and Kafka's extension are fine.
        rfc_server_first(b"y,a=user,n=user,r=abc,tokenauth=true").unwrap();
    }

    #[test]
    fn malformed_client_final_messages_are_refused() {
        let nonce = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_NONCE}");
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let cases: Vec<(String, AuthFailure)> = vec![
            (
                String::new(),
                AuthFailure::Malformed("SCRAM client-final message"),
            ),
            (
                format!("c=biws,r={nonce}"),
                AuthFailure::Malformed("SCRAM client-final message"),
            ),
            (
                format!("c=biws,r={nonce},p="),
                AuthFailure::Malformed("SCRAM client-final message"),
            ),
            (
                format!("c=biws,r={nonce},p=!!!"),
                AuthFailure::Malformed("SCRAM client-final message"),
            ),
            (
                format!("c=biws,r={nonce},p=AAAA"),
                AuthFailure::Malformed("SCRAM client-final message"),
            ),
            (
                format!("r={nonce},c=biws,p={proof}"),
                AuthFailure::Malformed("SCRAM client-final message"),
            ),
            (
                format!("c=biws,p={proof}"),
                AuthFailure::Malformed("SCRAM client-final message"),
            ),
            (
                format!("c=***,r={nonce},p={proof}"),
                AuthFailure::Malformed("SCRAM client-final message"),
            ),
            (
                format!("c=biws,r={nonce},junk,p={proof}"),
                AuthFailure::Malformed("SCRAM client-final message"),
            ),
            (
                format!("c=biws,r={nonce},p={proof},x=1"),
                AuthFailure::Malformed("SCRAM client-final message"),
            ),
            (
                format!("c=eSws,r={nonce},p={proof}"),
                AuthFailure::ChannelBindingMismatch,
            ),
            (
                format!("c=biws,r={RFC_CLIENT_NONCE},p={proof}"),
                AuthFailure::NonceMismatch,
            ),
            (
                format!("c=biws,r={nonce}x,p={proof}"),
                AuthFailure::NonceMismatch,
            ),
        ];
        for (case, failure) in cases {
            let (_, pending) = rfc_server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            let err = server_final(pending, case.as_bytes()).unwrap_err();
            assert_eq!(err.failure(), failure, "{case}");
            assert_eq!(err.user(), Some("user"));
        }
        let (_, pending) = rfc_server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert!(server_final(pending, b"\xff\xfe").is_err());
    }

    #[test]
    fn every_truncation_and_corruption_fails_without_panicking() {
        let client_final = RFC_CLIENT_FINAL.as_bytes();
        for end in 0..client_final.len() {
            let (_, pending) = rfc_server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            assert!(server_final(pending, &client_final[..end]).is_err());
        }
        for at in 0..client_final.len() {
            for byte in [0u8, b',', b'=', 0xff, client_final[at] ^ 1] {
                let mut corrupt = client_final.to_vec();
                corrupt[at] = byte;
                if corrupt == client_final {
                    continue;
                }
                let (_, pending) = rfc_server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
                let _ = server_final(pending, &corrupt);
            }
        }
        let client_first = RFC_CLIENT_FIRST.as_bytes();
        for end in 0..client_first.len() {
            let _ = rfc_server_first(&client_first[..end]);
        }
        let server_first = RFC_SERVER_FIRST.as_bytes();
        for end in 0..server_first.len() {
            let mut client = rfc_client();
            client.start();
            assert!(client.step(&server_first[..end]).is_err());
        }
    }

    /// One random edit of `message`: a byte changed, inserted or removed, or a cut.
    fn mutate(rng: &mut rand::rngs::SmallRng, message: &[u8]) -> Vec<u8> {
        use rand::Rng;
        let mut out = message.to_vec();
        let at = rng.random_range(0..=out.len());
        let interesting = [0u8, b',', b'=', b'r', b'p', b'v', b'e', 0xff, b'A', b'/'];
        match rng.random_range(0..4) {
            0 if at < out.len() => out[at] = interesting[rng.random_range(0..interesting.len())],
            1 => out.insert(at, interesting[rng.random_range(0..interesting.len())]),
            2 if at < out.len() => {
                out.remove(at);
            }
            _ => out.truncate(at),
        }
        out
    }

    /// The same properties as the `sasl` fuzz target, as a bounded, seeded loop: each
    /// message of the RFC 7677 exchange, edited at random, is refused by the side that
    /// checks it (never accepted, never a panic), on both sides.
    #[test]
    fn mutated_messages_are_refused_on_both_sides() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(13);
        for _ in 0..2000 {
            let client_first = mutate(&mut rng, RFC_CLIENT_FIRST.as_bytes());
            if let Ok((server_first, pending)) = rfc_server_first(&client_first) {
                // An edit the grammar allows (another nonce, an extension) still needs
                // the proof that goes with it.
                if client_first != RFC_CLIENT_FIRST.as_bytes() {
                    assert!(server_final(pending, RFC_CLIENT_FINAL.as_bytes()).is_err());
                }
                assert!(server_first.starts_with(b"r="));
            }
            let client_final = mutate(&mut rng, RFC_CLIENT_FINAL.as_bytes());
            let (_, pending) = rfc_server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            let accepted = server_final(pending, &client_final).is_ok();
            assert_eq!(accepted, client_final == RFC_CLIENT_FINAL.as_bytes());
        }
        // The client derives its keys (4096 rounds of PBKDF2) for each server-first
        // message it accepts: fewer rounds here.
        for _ in 0..80 {
            let server_first = mutate(&mut rng, RFC_SERVER_FIRST.as_bytes());
            let mut client = client_after_first();
            if let Ok(ClientStep::Continue(_)) = client.step(&server_first) {
                let done = client.step(RFC_SERVER_FINAL.as_bytes());
                assert_eq!(done.is_ok(), server_first == RFC_SERVER_FIRST.as_bytes());
            }
            let server_final_message = mutate(&mut rng, RFC_SERVER_FINAL.as_bytes());
            let mut client = client_after_first();
            client.step(RFC_SERVER_FIRST.as_bytes()).unwrap();
            let done = client.step(&server_final_message);
            assert_eq!(
                done.is_ok(),
                server_final_message == RFC_SERVER_FINAL.as_bytes()
            );
        }
    }

    #[test]
    fn a_message_after_the_exchange_is_refused() {
        let mut server = Authenticator::new(Mechanism::ScramSha256, users());
        server.step(b"garbage").unwrap_err();
        let err = server.step(b"n,,n=alice,r=abc").unwrap_err();
        assert_eq!(err.failure(), AuthFailure::Unexpected);
    }

    fn client_after_first() -> ClientAuthenticator {
        let mut client = rfc_client();
        client.start();
        client
    }

    fn client_error(server_first: &str) -> String {
        client_after_first()
            .step(server_first.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_client_refuses_a_foreign_nonce() {
        let err = client_error("r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
        assert_eq!(
            err,
            "SASL SCRAM-SHA-256 authentication failed: the server's nonce does not extend the client's"
        );
        // The client's nonce alone, with nothing of the server's, is no better.
        let err = client_error(&format!("r={RFC_CLIENT_NONCE},s={RFC_SALT},i=4096"));
        assert!(err.contains("does not extend"), "{err}");
    }

    #[test]
    fn the_client_refuses_too_few_or_too_many_iterations() {
        let nonce = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_NONCE}");
        let err = client_error(&format!("r={nonce},s={RFC_SALT},i=4095"));
        assert_eq!(
            err,
            "SASL SCRAM-SHA-256 authentication failed: the server asks for 4095 iterations; at least 4096 are required"
        );
        let err = client_error(&format!("r={nonce},s={RFC_SALT},i=4000000000"));
        assert!(err.contains("at most 100000 are accepted"), "{err}");
    }

    #[test]
    fn the_client_refuses_malformed_server_messages() {
        let nonce = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_NONCE}");
        for case in [
            String::new(),
            format!("r={nonce}"),
            format!("r={nonce},s={RFC_SALT}"),
            format!("r={nonce},s=,i=4096"),
            format!("r={nonce},s=%%%,i=4096"),
            format!("r={nonce},s={RFC_SALT},i=-1"),
            format!("r={nonce},s={RFC_SALT},i=many"),
            format!("s={RFC_SALT},r={nonce},i=4096"),
            format!("m=x,r={nonce},s={RFC_SALT},i=4096"),
            format!("r={nonce},s={RFC_SALT},i=4096,junk"),
        ] {
            let err = client_error(&case);
            assert!(err.contains("malformed"), "{case}: {err}");
        }
        assert!(client_after_first().step(b"\xff").is_err());
        let err = client_error("e=unknown-user");
        assert_eq!(
            err,
            "SASL SCRAM-SHA-256 authentication failed: the server refused: unknown-user"
        );
    }

    #[test]
    fn the_client_refuses_a_server_that_does_not_know_the_password() {
        let final_step = |server_final: &[u8]| {
            let mut client = client_after_first();
            client.step(RFC_SERVER_FIRST.as_bytes()).unwrap();
            client.step(server_final).unwrap_err().to_string()
        };
        let forged = format!("v={}", BASE64.encode([7u8; 32]));
        assert!(final_step(forged.as_bytes()).contains("does not verify"));
        assert!(final_step(b"v=***").contains("malformed"));
        assert!(final_step(b"").contains("malformed"));
        assert!(final_step(b"\xff").contains("malformed"));
        assert!(final_step(b"e=invalid-proof").contains("the server refused: invalid-proof"));
    }

    #[test]
    fn saslnames_escape_commas_and_equals() {
        assert_eq!(encode_saslname("a,b=c"), "a=2Cb=3Dc");
        assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(decode_saslname("a=2"), None);
        assert_eq!(decode_saslname("a=41"), None);
    }
}
