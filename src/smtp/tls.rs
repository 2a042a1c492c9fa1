//! STARTTLS (RFC 3207) for the SMTP and submission listeners: a rustls server config from
//! `[smtp] cert`/`key`, or the s2s certificate when those are unset (one name, one
//! certificate is the common case). Certificates are loaded the way s2s loads them.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::s2s::tls::{LiveCert, TlsError};

/// The acceptor for STARTTLS and its certificate (re-read on SIGHUP), or `None` when no
/// certificate is configured (STARTTLS is then not offered).
pub fn acceptor(cfg: &Config) -> Result<Option<(TlsAcceptor, Arc<LiveCert>)>, TlsError> {
    let (cert, key) = match (&cfg.smtp.cert, &cfg.smtp.key, &cfg.s2s.cert, &cfg.s2s.key) {
        (Some(c), Some(k), _, _) | (None, None, Some(c), Some(k)) => (c, k),
        _ => return Ok(None),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let live = LiveCert::load(cert, key, provider)?;
    let sc = live.server_config()?;
    Ok(Some((TlsAcceptor::from(Arc::new(sc)), live)))
}
