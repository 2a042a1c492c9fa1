//! STARTTLS (RFC 3207) for the SMTP and submission listeners: a rustls server config from
//! `[smtp] cert`/`key`, or the s2s certificate when those are unset (one name, one
//! certificate is the common case). Certificates are loaded the way s2s loads them.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::s2s::tls::{TlsError, load_certs};

/// The acceptor for STARTTLS, or `None` when no certificate is configured (STARTTLS is
/// then not offered).
pub fn acceptor(cfg: &Config) -> Result<Option<TlsAcceptor>, TlsError> {
    let (cert, key) = match (&cfg.smtp.cert, &cfg.smtp.key, &cfg.s2s.cert, &cfg.s2s.key) {
        (Some(c), Some(k), _, _) | (None, None, Some(c), Some(k)) => (c, k),
        _ => return Ok(None),
    };
    let chain = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let sc = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Setup(format!("certificate and key: {e}")))?;
    Ok(Some(TlsAcceptor::from(Arc::new(sc))))
}
