//! TLS for s2s streams with rustls: the server side of STARTTLS (tokio-xmpp has none) and a
//! client side whose certificate check is recorded rather than fatal where the config says
//! `tls = "optional"`, because dialback authenticates the domain either way (RFC 7590 §3.4,
//! XEP-0220 §1.2). Under `tls = "required"` an invalid peer certificate fails the handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::config::{Config, TlsMode};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS set-up: {0}")]
    Setup(String),
}

/// TLS material for both directions.
#[derive(Clone)]
pub struct TlsContext {
    pub mode: TlsMode,
    /// Present when a certificate is configured: STARTTLS is offered on inbound streams.
    pub server: Option<Arc<ServerConfig>>,
    /// Used for outbound STARTTLS.
    pub client: Arc<ClientConfig>,
    /// The same for outbound direct TLS (XEP-0368), with ALPN `xmpp-server`.
    pub client_direct: Arc<ClientConfig>,
    /// Verifies a peer chain after the handshake, to record whether it was valid.
    pub verifier: Arc<WebPkiServerVerifier>,
    /// Whether our own certificate is presented as a client certificate on outbound
    /// streams (for SASL EXTERNAL, XEP-0178).
    pub client_cert: bool,
    /// Our certificate (server and client side), re-read from its files on SIGHUP.
    pub cert: Option<Arc<LiveCert>>,
}

/// A certificate chain and key that SIGHUP re-reads from the same files (a renewed
/// certificate, e.g. by certbot, counts for the next handshake; connections already
/// encrypted keep theirs). It is the rustls certificate resolver of the server and client
/// configs, so swapping it needs no new config.
#[derive(Debug)]
pub struct LiveCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl LiveCert {
    pub fn load(
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<LiveCert>, TlsError> {
        let current = ArcSwap::from_pointee(Self::read(cert, key, &provider)?);
        Ok(Arc::new(LiveCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current,
        }))
    }

    fn read(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let chain = load_certs(cert)?;
        let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
        CertifiedKey::from_der(chain, der, provider)
            .map_err(|e| TlsError::Setup(format!("certificate and key: {e}")))
    }

    /// Re-reads the files; on any error the certificate in use stays. Ok(true) when the
    /// certificate changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let fresh = Self::read(&self.cert, &self.key, &self.provider)?;
        let changed = fresh.cert != self.current.load().cert;
        if changed {
            self.current.store(Arc::new(fresh));
        }
        Ok(changed)
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// A server config presenting this certificate, without client authentication.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        Ok(ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone()))
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ResolvesClientCert for LiveCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect();
    let certs = certs.map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The trust anchors for peer certificates: the system's store (Debian:
/// /etc/ssl/certs, via rustls-native-certs, so the administrator's `update-ca-certificates`
/// counts), or Mozilla's bundled roots (webpki-roots) when the system has none readable.
/// `[s2s] ca` is added on top by the caller.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "reading the system's CA certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no system CA certificates found; trusting the bundled Mozilla roots (webpki-roots)"
        );
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

impl TlsContext {
    pub fn new(config: &Config) -> Result<TlsContext, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = system_roots();
        if let Some(ca) = &config.s2s.ca {
            for cert in load_certs(ca)? {
                roots.add(cert).map_err(|e| file_err(ca, e))?;
            }
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?;

        let schemes = provider
            .signature_verification_algorithms
            .supported_schemes();
        let identity = match (&config.s2s.cert, &config.s2s.key) {
            (Some(cert), Some(key)) => Some(LiveCert::load(cert, key, provider.clone())?),
            _ => None,
        };
        let server = match &identity {
            Some(live) => {
                // Peers may present a certificate (XEP-0178); it is checked after the
                // handshake as a server certificate for the domain the peer claims.
                let sc = ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TlsError::Setup(e.to_string()))?
                    .with_client_cert_verifier(Arc::new(RecordOnly {
                        schemes: schemes.clone(),
                        provider: provider.clone(),
                    }))
                    .with_cert_resolver(live.clone());
                Some(Arc::new(sc))
            }
            None => None,
        };

        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let wants_cert = if config.s2s.tls == TlsMode::Required {
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(RecordOnly {
                    schemes: schemes.clone(),
                    provider: provider.clone(),
                }))
        };
        let client = match &identity {
            Some(live) => wants_cert.with_client_cert_resolver(live.clone()),
            None => wants_cert.with_no_client_auth(),
        };
        let mut direct = client.clone();
        direct.alpn_protocols = vec![b"xmpp-server".to_vec()];
        Ok(TlsContext {
            mode: config.s2s.tls,
            client_cert: server.is_some(),
            server,
            cert: identity,
            client: Arc::new(client),
            client_direct: Arc::new(direct),
            verifier,
        })
    }

    /// Whether `chain` is a valid certificate for `domain` (checked after the handshake).
    pub fn chain_valid_for(&self, chain: &[CertificateDer<'_>], domain: &str) -> bool {
        let Some((end, rest)) = chain.split_first() else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_string()) else {
            return false;
        };
        self.verifier
            .verify_server_cert(end, rest, &name, &[], UnixTime::now())
            .is_ok()
    }
}

/// Accepts any certificate (handshake signatures are still checked); validity for the
/// claimed domain is evaluated separately with `chain_valid_for`. Used for client
/// certificates on inbound streams (checked before SASL EXTERNAL may succeed) and for
/// server certificates when TLS is opportunistic and dialback authenticates the peer.
#[derive(Debug)]
struct RecordOnly {
    schemes: Vec<SignatureScheme>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl RecordOnly {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }
}

impl ClientCertVerifier for RecordOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

impl ServerCertVerifier for RecordOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}
