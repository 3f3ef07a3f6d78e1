//! What the client is told: where the cluster is, how to reach it securely, its limits,
//! and who watches its requests.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::sasl::Password;
use crate::tls::ClientTlsFiles;
use crate::{Error, Result};

/// How the client speaks to brokers, with librdkafka's names (`security.protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    /// TCP, no TLS, no SASL.
    #[default]
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL over TCP.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    const ACCEPTED: &'static str = "plaintext, ssl, sasl_plaintext, sasl_ssl";

    /// The lowercase name: `plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether connections run TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether connections log in with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SecurityProtocol {
    type Err = Error;

    /// Parses a name, case-insensitively.
    fn from_str(value: &str) -> Result<Self> {
        [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(value))
        .ok_or_else(|| Error::InvalidSetting {
            setting: "security protocol",
            value: value.to_owned(),
            accepted: SecurityProtocol::ACCEPTED,
        })
    }
}

/// A SASL mechanism the client logs in with (`sasl.mechanism`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SaslMechanism {
    /// PLAIN (RFC 4616).
    Plain,
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
    /// OAUTHBEARER (RFC 7628) with a token read from a file.
    OauthBearer,
}

impl SaslMechanism {
    const ACCEPTED: &'static str = "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER";

    /// The name on the wire: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER`.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }

    /// The mechanism of [`crate::sasl`] that runs the exchange; `None` for OAUTHBEARER,
    /// which the client runs itself.
    pub fn exchange(self) -> Option<crate::sasl::Mechanism> {
        match self {
            SaslMechanism::Plain => Some(crate::sasl::Mechanism::Plain),
            SaslMechanism::ScramSha256 => Some(crate::sasl::Mechanism::ScramSha256),
            SaslMechanism::ScramSha512 => Some(crate::sasl::Mechanism::ScramSha512),
            SaslMechanism::OauthBearer => None,
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SaslMechanism {
    type Err = Error;

    /// Parses a name, case-insensitively.
    fn from_str(value: &str) -> Result<Self> {
        [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
            SaslMechanism::OauthBearer,
        ]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(value))
        .ok_or_else(|| Error::InvalidSetting {
            setting: "SASL mechanism",
            value: value.to_owned(),
            accepted: SaslMechanism::ACCEPTED,
        })
    }
}

/// How one request ended, for an [`Observer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The broker answered without any error code.
    Ok,
    /// The broker answered, and the answer holds this error code (the first found, at
    /// any level: whole response, group, topic or partition).
    KafkaError(i16),
    /// No answer: the connection failed, timed out, or the answer did not decode.
    TransportError,
}

/// Watches every request the client sends (for the collector's own metrics).
pub trait Observer: Send + Sync {
    /// One request to `broker` (`host:port`) of `api` (`"Metadata"`, `"ListOffsets"`, …)
    /// ended with `outcome` after `elapsed`.
    fn request(&self, api: &'static str, broker: &str, outcome: Outcome, elapsed: Duration);
}

/// The client's settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// Bootstrap servers, `host:port` each.
    pub bootstrap: Vec<String>,
    /// The client id of every request (default `tally-collect`).
    pub client_id: String,
    /// Plaintext, TLS, SASL, or both.
    pub security_protocol: SecurityProtocol,
    /// The SASL mechanism; required by the `sasl_*` protocols.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user (PLAIN and SCRAM).
    pub sasl_username: Option<String>,
    /// The SASL password (PLAIN and SCRAM).
    pub sasl_password: Option<Password>,
    /// OAUTHBEARER: the file that holds the token. It is read again at each new login,
    /// so that a rotated token is used by the next connection.
    pub sasl_oauthbearer_token_file: Option<PathBuf>,
    /// TLS files: the CA to trust (the system's roots when `None`), and a client
    /// certificate and key for brokers that require one.
    pub tls: ClientTlsFiles,
    /// How long opening a connection (TCP, TLS, ApiVersions, SASL) may take (default 10 s).
    pub connect_timeout: Duration,
    /// How long a broker may take to answer a request (default 30 s).
    pub request_timeout: Duration,
    /// The largest response frame accepted (default 64 MiB). A larger length is an error
    /// that closes the connection; nothing is allocated after a length read off the wire
    /// until it has been checked against this.
    pub max_response_bytes: usize,
    /// Told about every request.
    pub observer: Option<Arc<dyn Observer>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap: Vec::new(),
            client_id: "tally-collect".to_owned(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_oauthbearer_token_file: None,
            tls: ClientTlsFiles::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 64 << 20,
            observer: None,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("bootstrap", &self.bootstrap)
            .field("client_id", &self.client_id)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .field(
                "sasl_oauthbearer_token_file",
                &self.sasl_oauthbearer_token_file,
            )
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("observer", &self.observer.as_ref().map(|_| "…"))
            .finish()
    }
}

/// The login a connection runs after ApiVersions, checked once from the settings.
#[derive(Clone, Debug)]
pub(crate) enum Login {
    /// No SASL.
    None,
    /// PLAIN or SCRAM through [`crate::sasl::ClientAuthenticator`].
    Exchange {
        mechanism: crate::sasl::Mechanism,
        user: String,
        password: Password,
    },
    /// OAUTHBEARER with the token in this file.
    OauthBearer { token_file: PathBuf },
}

impl ClientConfig {
    /// Checks that the settings fit together: a `sasl_*` protocol needs a mechanism and
    /// its credentials, and the bootstrap list must hold `host:port` entries.
    pub fn validate(&self) -> Result<()> {
        self.login().map(|_| ())?;
        if self.bootstrap.is_empty() {
            return Err(Error::MissingSetting {
                what: "at least one bootstrap server (host:port)",
                because: "every client".to_owned(),
            });
        }
        for b in &self.bootstrap {
            super::transport::BrokerAddr::parse(b)?;
        }
        if self.max_response_bytes < 8 {
            return Err(Error::InvalidSetting {
                setting: "max_response_bytes",
                value: self.max_response_bytes.to_string(),
                accepted: "at least 8 bytes (64 MiB by default)",
            });
        }
        Ok(())
    }

    pub(crate) fn login(&self) -> Result<Login> {
        let protocol = self.security_protocol;
        if !protocol.uses_sasl() {
            return Ok(Login::None);
        }
        let because = || format!("security protocol '{protocol}'");
        let mechanism = self.sasl_mechanism.ok_or_else(|| Error::MissingSetting {
            what: "a SASL mechanism (sasl_mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)",
            because: because(),
        })?;
        let because = || format!("security protocol '{protocol}' and SASL mechanism {mechanism}");
        match mechanism.exchange() {
            Some(exchange) => {
                let user = self
                    .sasl_username
                    .clone()
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| Error::MissingSetting {
                        what: "a SASL user name (sasl_username)",
                        because: because(),
                    })?;
                let password = self
                    .sasl_password
                    .clone()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| Error::MissingSetting {
                        what: "a SASL password (sasl_password)",
                        because: because(),
                    })?;
                Ok(Login::Exchange {
                    mechanism: exchange,
                    user,
                    password,
                })
            }
            None => {
                let token_file = self.sasl_oauthbearer_token_file.clone().ok_or_else(|| {
                    Error::MissingSetting {
                        what: "a token file (sasl_oauthbearer_token_file)",
                        because: because(),
                    }
                })?;
                Ok(Login::OauthBearer { token_file })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_case_insensitively_and_name_the_bad_value() {
        assert_eq!(
            "SASL_SSL".parse::<SecurityProtocol>().unwrap(),
            SecurityProtocol::SaslSsl
        );
        assert_eq!(
            SecurityProtocol::SaslPlaintext.to_string(),
            "sasl_plaintext"
        );
        let err = "tls".parse::<SecurityProtocol>().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid security protocol 'tls'; accepted: plaintext, ssl, sasl_plaintext, sasl_ssl"
        );
    }

    #[test]
    fn mechanisms_parse_case_insensitively_and_name_the_bad_value() {
        assert_eq!(
            "scram-sha-512".parse::<SaslMechanism>().unwrap(),
            SaslMechanism::ScramSha512
        );
        assert_eq!(
            "oauthbearer".parse::<SaslMechanism>().unwrap(),
            SaslMechanism::OauthBearer
        );
        let err = "GSSAPI".parse::<SaslMechanism>().unwrap_err().to_string();
        assert!(
            err.contains("'GSSAPI'") && err.contains("SCRAM-SHA-512"),
            "{err}"
        );
    }

    #[test]
    fn sasl_protocols_need_a_mechanism_and_credentials() {
        let mut cfg = ClientConfig {
            bootstrap: vec!["localhost:9092".into()],
            security_protocol: SecurityProtocol::SaslSsl,
            ..ClientConfig::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("SASL mechanism") && err.contains("sasl_ssl"),
            "{err}"
        );
        cfg.sasl_mechanism = Some(SaslMechanism::ScramSha512);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("sasl_username"), "{err}");
        cfg.sasl_username = Some("alice".into());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("sasl_password"), "{err}");
        cfg.sasl_password = Some("pw".into());
        cfg.validate().unwrap();
        cfg.sasl_mechanism = Some(SaslMechanism::OauthBearer);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("sasl_oauthbearer_token_file"), "{err}");
    }

    #[test]
    fn bootstrap_entries_need_a_port() {
        let cfg = ClientConfig {
            bootstrap: vec!["localhost".into()],
            ..ClientConfig::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("'localhost'"), "{err}");
        let cfg = ClientConfig::default();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let cfg = ClientConfig {
            sasl_password: Some("hunter2".into()),
            ..ClientConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
