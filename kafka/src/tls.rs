//! TLS for the Kafka wire: rustls (through tokio-rustls) with the `ring` provider, TLS 1.2
//! and 1.3 only.
//!
//! - The server side reads its certificate chain and private key from PEM files
//!   ([`ServerTlsFiles`]), and with a client CA it requires every client to present a
//!   certificate that chains to that CA (mTLS). [`ServerTls`] holds the configuration
//!   and [`reload`](ServerTls::reload)s it from the same files (SIGHUP); connections
//!   already up keep the configuration they started with.
//! - The client side ([`ClientTls`]) trusts the system's root certificates, or only a
//!   private CA, optionally presents a certificate of its own, and sends each broker's
//!   host as SNI.
//!
//! The provider is always passed explicitly rather than installed process-wide, so that
//! another crate in the same binary that enables a second rustls provider cannot make
//! these configurations ambiguous.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::{Error, Result};

/// A TLS stream that the client side opened.
pub use tokio_rustls::client::TlsStream as ClientTlsStream;
/// A TLS stream that the server side accepted.
pub use tokio_rustls::server::TlsStream as ServerTlsStream;

/// The protocol versions spoken, both sides: TLS 1.3 and TLS 1.2, nothing older.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider of every configuration made here: `ring`.
pub fn provider() -> Arc<CryptoProvider> {
    // rustls 0.23.48 deprecates the ring provider for its lack of post-quantum key
    // exchange; aws-lc-rs, which has it, is a heavy C build, and cold builds count (§10).
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's provider: ring's suites with AES-128-GCM ahead of AES-256-GCM, in
/// TLS 1.3 and in TLS 1.2. Every bulk byte a broker serves is encrypted once by it
/// and decrypted once by the client; AES-128 takes 10 rounds where AES-256 takes 14,
/// and both are approved for this use. OpenSSL-based clients (librdkafka) offer
/// AES-256 first, so the server picks from its own order
/// ([`ServerConfig::ignore_client_order`]).
fn server_provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            _ => 1,
        });
    Arc::new(provider)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, error: pem::Error) -> Error {
    match error {
        pem::Error::Io(source) => Error::Read {
            path: path.to_owned(),
            source,
        },
        other => Error::Pem {
            path: path.to_owned(),
            message: other.to_string(),
        },
    }
}

/// Reads the certificates of a PEM file, in order: for a server or client certificate,
/// the end-entity certificate first and then the intermediates of its chain.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certificates.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// Reads the first private key of a PEM file: PKCS#8 (`PRIVATE KEY`), PKCS#1
/// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`); RSA, ECDSA or Ed25519.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => Error::NoPrivateKey {
            path: path.to_owned(),
        },
        other => pem_error(path, other),
    })
}

/// Reads a CA file (PEM, one or more certificates) as the set of trusted roots.
pub fn load_ca(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(load_certificates(path)?);
    if added == 0 {
        return Err(Error::UnusableCa {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// The system's root certificates (Debian: `/etc/ssl/certs`; `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` override), as trusted roots.
pub fn native_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let details = if found.errors.is_empty() {
            "the store is empty".to_owned()
        } else {
            found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(Error::NoRootCertificates { details });
    }
    Ok(roots)
}

/// The name to verify a server's certificate against and to send as SNI: a DNS name or
/// an IP address (an IPv6 address may be in brackets, as in `[::1]:9093`'s host).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).map_err(|_| Error::InvalidServerName {
        host: host.to_owned(),
    })
}

/// The server's files: `--tls-cert`, `--tls-key` and, for mTLS, `--tls-client-ca`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM: the server's certificate, then any intermediates of its chain.
    pub cert: PathBuf,
    /// PEM: the certificate's private key.
    pub key: PathBuf,
    /// PEM: the CA(s) that client certificates must chain to. When set, a client
    /// without such a certificate is refused.
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// Reads the files and makes the server configuration.
    pub fn server_config(&self) -> Result<ServerConfig> {
        let provider = server_provider();
        let chain = load_certificates(&self.cert)?;
        let key = load_private_key(&self.key)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(PROTOCOL_VERSIONS)?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let roots = load_ca(ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| Error::ClientVerifier {
                            path: ca.clone(),
                            message: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| certified_key_error(&self.cert, &self.key, e))?;
        config.ignore_client_order = true;
        Ok(config)
    }
}

fn certified_key_error(cert: &Path, key: &Path, error: rustls::Error) -> Error {
    match error {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            Error::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            }
        }
        source => Error::CertifiedKey {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        },
    }
}

/// The server's TLS configuration, reloadable from its files.
pub struct ServerTls {
    files: ServerTlsFiles,
    config: ArcSwap<ServerConfig>,
}

impl ServerTls {
    /// Reads the files (see [`ServerTlsFiles::server_config`]).
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls> {
        let config = files.server_config()?;
        Ok(ServerTls {
            files,
            config: ArcSwap::from_pointee(config),
        })
    }

    /// Reads the files again, so that new connections get a renewed certificate. On an
    /// error the configuration in force stays as it was.
    pub fn reload(&self) -> Result<()> {
        let config = self.files.server_config()?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// An acceptor with the configuration in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    /// Runs the server side of a handshake on `io`; `peer` (an address) names the client
    /// in the error.
    pub async fn accept<IO>(&self, io: IO, peer: impl fmt::Display) -> Result<ServerTlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.acceptor()
            .accept(io)
            .await
            .map_err(|source| Error::Handshake {
                peer: peer.to_string(),
                source,
            })
    }

    /// The files it reads.
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// Whether clients must present a certificate (mTLS).
    pub fn requires_client_certificate(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The client's files, with librdkafka's names in mind: `ssl.ca.location` (`ca`),
/// `ssl.certificate.location` (`cert`), `ssl.key.location` (`key`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM: the CA(s) to trust instead of the system's root certificates.
    pub ca: Option<PathBuf>,
    /// PEM: a client certificate (and its chain), for brokers that require one.
    pub cert: Option<PathBuf>,
    /// PEM: the client certificate's private key.
    pub key: Option<PathBuf>,
}

impl ClientTlsFiles {
    /// Reads the files (or the system's roots) and makes the client configuration.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let roots = match &self.ca {
            Some(ca) => load_ca(ca)?,
            None => native_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)?
            .with_root_certificates(roots);
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certificates(cert)?, load_private_key(key)?)
                .map_err(|e| certified_key_error(cert, key, e)),
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err(Error::IncompleteClientCertificate),
        }
    }
}

/// The client side: opens TLS over a connected stream to a broker.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl ClientTls {
    /// A client with the configuration that `files` make.
    pub fn new(files: &ClientTlsFiles) -> Result<ClientTls> {
        Ok(ClientTls::from_config(Arc::new(files.client_config()?)))
    }

    /// A client with a ready configuration.
    pub fn from_config(config: Arc<ClientConfig>) -> ClientTls {
        ClientTls {
            connector: TlsConnector::from(config),
        }
    }

    /// Runs the client side of a handshake on `io` with the broker `host` (its name as
    /// the metadata or the bootstrap list gives it), which is sent as SNI and which the
    /// broker's certificate must name.
    pub async fn connect<IO>(&self, host: &str, io: IO) -> Result<ClientTlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = server_name(host)?;
        self.connector
            .connect(name, io)
            .await
            .map_err(|source| Error::Handshake {
                peer: host.to_owned(),
                source,
            })
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}
