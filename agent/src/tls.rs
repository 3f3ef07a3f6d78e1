//! HTTPS on the agent's listener: the certificate and key (PEM) and their
//! reload on SIGHUP. A reload that fails keeps the certificate in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use tally_audit::tls::{ServerConfig, TlsError, load_certificates, load_private_key, provider};
use tokio_rustls::TlsAcceptor;

use crate::Result;

/// The listener's TLS: where the certificate comes from and the acceptor in force.
pub(crate) struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    acceptor: RwLock<TlsAcceptor>,
}

impl ServerTls {
    /// Reads the certificate chain and the key; errors name the file.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<ServerTls> {
        let acceptor = RwLock::new(acceptor(cert, key)?);
        Ok(ServerTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            acceptor,
        })
    }

    /// The acceptor for a new connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again; new connections use the new certificate,
    /// open ones keep theirs.
    pub(crate) fn reload(&self) -> Result<()> {
        let fresh = acceptor(&self.cert, &self.key)?;
        *self
            .acceptor
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let chain = load_certificates(cert)?;
    let private = load_private_key(key)?;
    let refused = |reason: String| TlsError::Refused {
        path: format!("{}' and '{}", cert.display(), key.display()),
        reason,
    };
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| refused(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| refused(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
