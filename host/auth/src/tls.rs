//! Mutual TLS: a client-certificate verifier whose trusted CAs can change while the server runs
//! (registering a CA takes effect for the next handshake, without restarting the listener).
//!
//! The chain itself (signature, validity period, key usage) is checked by rustls' WebPKI
//! verifier; whether the certificate is registered and ACTIVE is checked at CONNECT by
//! [`crate::service::IdentityService`], where the answer can be a proper MQTT refusal.

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// Whether the TLS listener asks for and requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate chaining to a trusted CA (AWS IoT's port 8883).
    Required,
    /// A certificate is verified when presented; clients without one get the anonymous
    /// treatment of the plain listener.
    Optional,
}

/// A [`ClientCertVerifier`] over a CA set that can be replaced at run time.
#[derive(Debug)]
pub struct DynamicClientVerifier {
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
    mode: ClientAuth,
}

/// Why a verifier could not be built.
#[derive(Debug, thiserror::Error)]
#[error("client certificate verifier: {0}")]
pub struct VerifierError(String);

fn build(cas: &[Vec<u8>], mode: ClientAuth) -> Result<Arc<dyn ClientCertVerifier>, VerifierError> {
    let mut roots = RootCertStore::empty();
    for der in cas {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| VerifierError(format!("CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let b = match mode {
        ClientAuth::Required => b,
        ClientAuth::Optional => b.allow_unauthenticated(),
    };
    b.build().map_err(|e| VerifierError(e.to_string()))
}

impl DynamicClientVerifier {
    /// A verifier trusting `cas` (DER).
    pub fn new(cas: &[Vec<u8>], mode: ClientAuth) -> Result<Arc<Self>, VerifierError> {
        Ok(Arc::new(DynamicClientVerifier {
            inner: RwLock::new(build(cas, mode)?),
            mode,
        }))
    }

    /// Replaces the trusted CAs (for the next handshakes).
    pub fn set_cas(&self, cas: &[Vec<u8>]) -> Result<(), VerifierError> {
        let v = build(cas, self.mode)?;
        *self.inner.write() = v;
        Ok(())
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner.read().clone()
    }
}

impl ClientCertVerifier for DynamicClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; an empty list lets clients pick any certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let res = self.current().verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &res {
            let who = crate::pki::cert_info(end_entity.as_ref())
                .map(|i| {
                    format!(
                        "certificate {} (CN={})",
                        i.id,
                        i.subject.get("CommonName").map(String::as_str).unwrap_or("-")
                    )
                })
                .unwrap_or_else(|_| "an unparsable certificate".into());
            tracing::info!("TLS client refused: {who}: {e}");
        }
        res
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// A TLS server configuration for the MQTT listener with this verifier.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    verifier: Arc<DynamicClientVerifier>,
) -> Result<Arc<rustls::ServerConfig>, VerifierError> {
    build_server_config(
        cert_chain_pem,
        key_pem,
        verifier,
        vec![b"x-amzn-mqtt-ca".to_vec(), b"mqtt".to_vec()],
    )
}

fn build_server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    verifier: Arc<dyn ClientCertVerifier>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<rustls::ServerConfig>, VerifierError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| VerifierError(format!("server certificate: {e}")))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| VerifierError(format!("server key: {e}")))?;
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| VerifierError(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| VerifierError(e.to_string()))?;
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

/// The TLS client verifier of the HTTPS listener: the same trusted CAs as MQTT/TLS (it reads
/// through to the [`DynamicClientVerifier`]), but a client certificate is optional, since most
/// HTTP callers sign with SigV4 instead.
#[derive(Debug)]
struct OptionalClientCert(Arc<DynamicClientVerifier>);

impl ClientCertVerifier for OptionalClientCert {
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
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A TLS server configuration for the HTTPS listener (ALPN `http/1.1`; client certificates
/// optional, checked against the registered CAs like on MQTT/TLS).
pub fn https_server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    verifier: Arc<DynamicClientVerifier>,
) -> Result<Arc<rustls::ServerConfig>, VerifierError> {
    build_server_config(
        cert_chain_pem,
        key_pem,
        Arc::new(OptionalClientCert(verifier)),
        vec![b"http/1.1".to_vec()],
    )
}
