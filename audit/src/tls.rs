//! TLS for the agent's clients (the emitter and the dashboard) and the PEM
//! files that the agent's own listener reads.
//!
//! Everything is rustls with the `ring` provider, TLS 1.2 and 1.3. A client
//! trusts the system's root certificates unless it is given a CA file (a
//! private CA), and sends the URL's host as SNI. [`AgentConnector`] opens a
//! WebSocket over `ws://` or `wss://` with the same code for both.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};

pub use rustls::{ClientConfig, ServerConfig};

/// Why a TLS set-up could not be made; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("no certificate in '{path}': expected a PEM file with \"-----BEGIN CERTIFICATE-----\"")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no PEM private key.
    #[error(
        "no private key in '{path}': expected a PEM PKCS#8, RSA or EC private key (\"-----BEGIN PRIVATE KEY-----\")"
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The file is not well-formed PEM.
    #[error("'{path}' is not readable PEM: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// rustls refused a certificate or key.
    #[error("'{path}' is not accepted: {reason}")]
    Refused {
        /// The file (or files) concerned.
        path: String,
        /// What rustls said.
        reason: String,
    },
    /// No CA file was given and the system has no usable root certificates.
    #[error(
        "no system root certificates were found ({reason}): pass --agent-ca FILE to trust the agent's CA"
    )]
    NoRoots {
        /// What the loader said.
        reason: String,
    },
}

/// The result of a TLS set-up.
pub type TlsResult<T> = std::result::Result<T, TlsError>;

fn read(path: &Path) -> TlsResult<Vec<u8>> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file, in order (a chain starts with its leaf).
pub fn load_certificates(path: &Path) -> TlsResult<Vec<CertificateDer<'static>>> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> TlsResult<PrivateKeyDer<'static>> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        other => TlsError::Pem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// The crypto provider of every TLS set-up: ring.
///
/// rustls marks ring's provider deprecated for its lack of post-quantum key
/// exchange; aws-lc-rs, which has it, needs cmake and a C toolchain that
/// cold CI builds would pay for (DESIGN.md §10).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that trusts `ca` (a PEM file of one or more CA
/// certificates) or, without one, the system's root certificates.
pub fn client_config(ca: Option<&Path>) -> TlsResult<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in load_certificates(path)? {
                roots.add(cert).map_err(|e| TlsError::Refused {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let reason = found
                    .errors
                    .first()
                    .map_or_else(|| "none installed".to_owned(), ToString::to_string);
                return Err(TlsError::NoRoots { reason });
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused {
            path: ca.map_or_else(|| "system roots".to_owned(), |p| p.display().to_string()),
            reason: e.to_string(),
        })?;
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// A client configuration for HTTP clients that may also reach `https://`
/// URLs (the alert notifiers, OTLP): the system's root certificates, or,
/// where the system has none, no trust at all, so that `http://` still
/// works and every `https://` request fails with a certificate error.
pub fn system_client_config() -> (ClientConfig, Option<TlsError>) {
    match client_config(None) {
        Ok(cfg) => (cfg, None),
        Err(e) => {
            let cfg = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                });
            match cfg {
                Ok(cfg) => (cfg, Some(e)),
                // ring supports the default versions; this cannot happen.
                Err(_) => (
                    ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                    Some(e),
                ),
            }
        }
    }
}

/// A connection to the agent: plain TCP or TLS over it.
#[derive(Debug)]
pub enum AgentStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for AgentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            AgentStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            AgentStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_flush(cx),
            AgentStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            AgentStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a WebSocket to the agent could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL cannot be used.
    #[error("agent URL \"{url}\" is not accepted: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why, and what is accepted.
        reason: String,
    },
    /// The TLS set-up (the CA file, the system roots) failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TCP connection or the TLS handshake failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The WebSocket handshake failed (an HTTP error status, say).
    #[error("{0}")]
    Handshake(#[from] tungstenite::Error),
}

/// Opens WebSockets to the agent over `ws://` or `wss://`, building the TLS
/// configuration once, when the first `wss://` connection needs it.
#[derive(Debug)]
pub struct AgentConnector {
    ca: Option<PathBuf>,
    tls: Mutex<Option<Arc<ClientConfig>>>,
}

impl AgentConnector {
    /// A connector that trusts `ca` (PEM) for `wss://`, or the system's roots without one.
    pub fn new(ca: Option<PathBuf>) -> AgentConnector {
        AgentConnector {
            ca,
            tls: Mutex::new(None),
        }
    }

    /// The client TLS configuration, built on first use.
    pub fn tls(&self) -> TlsResult<Arc<ClientConfig>> {
        let mut tls = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cfg) = tls.as_ref() {
            return Ok(cfg.clone());
        }
        let cfg = Arc::new(client_config(self.ca.as_deref())?);
        *tls = Some(cfg.clone());
        Ok(cfg)
    }

    /// Connects to the request's URL and opens the WebSocket (with the
    /// request's headers, such as `Authorization`).
    pub async fn connect(
        &self,
        request: Request,
    ) -> Result<(WebSocketStream<AgentStream>, Response), ConnectError> {
        let uri = request.uri().clone();
        let url = uri.to_string();
        let bad = |reason: &str| ConnectError::Url {
            url: url.clone(),
            reason: reason.to_owned(),
        };
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(bad("expected a ws:// or wss:// URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("the host is missing"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let _ = tcp.set_nodelay(true);
        let stream = if secure {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| bad("the host is not a valid TLS server name"))?;
            let connector = tokio_rustls::TlsConnector::from(self.tls()?);
            AgentStream::Tls(Box::new(connector.connect(name, tcp).await?))
        } else {
            AgentStream::Plain(tcp)
        };
        Ok(tokio_tungstenite::client_async(request, stream).await?)
    }
}

/// The request for `url`, or why it is not a WebSocket URL.
pub fn request(url: &str) -> Result<Request, ConnectError> {
    url.into_client_request().map_err(|e| ConnectError::Url {
        url: url.to_owned(),
        reason: format!("{e}; expected e.g. ws://127.0.0.1:9400/api/v1/ingest"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("tally-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("key.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let err = load_private_key(&empty).unwrap_err().to_string();
        assert!(
            err.contains("no private key in") && err.contains("key.pem"),
            "{err}"
        );
        let err = load_certificates(&empty).unwrap_err().to_string();
        assert!(
            err.contains("no certificate in") && err.contains("key.pem"),
            "{err}"
        );
        let err = client_config(Some(&dir.join("absent.pem")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
