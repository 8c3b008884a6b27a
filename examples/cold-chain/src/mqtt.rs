//! MQTT over mutual TLS with a device certificate (rumqttc with a rustls configuration built on
//! the `ring` provider, chosen explicitly), and the topics a truck uses.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rumqttc::{MqttOptions, Transport};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest MQTT packet a truck sends or accepts (shadow documents are small).
pub const MAX_PACKET: usize = 128 * 1024;
/// MQTT keep-alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The topics of one truck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `fleet/{truck}/telemetry`
    pub telemetry: String,
    /// `$aws/things/{truck}/shadow/update`
    pub update: String,
    /// `$aws/things/{truck}/shadow/update/delta`
    pub delta: String,
    /// `$aws/things/{truck}/shadow/update/rejected`
    pub update_rejected: String,
    /// `$aws/things/{truck}/shadow/get`
    pub get: String,
    /// `$aws/things/{truck}/shadow/get/accepted`
    pub get_accepted: String,
}

impl Topics {
    /// The topics of truck `name`.
    pub fn new(name: &str) -> Topics {
        let shadow = format!("$aws/things/{name}/shadow");
        Topics {
            telemetry: telemetry_topic(name),
            update: format!("{shadow}/update"),
            delta: format!("{shadow}/update/delta"),
            update_rejected: format!("{shadow}/update/rejected"),
            get: format!("{shadow}/get"),
            get_accepted: format!("{shadow}/get/accepted"),
        }
    }

    /// What a truck subscribes to.
    pub fn subscriptions(&self) -> [&str; 3] {
        [&self.delta, &self.get_accepted, &self.update_rejected]
    }
}

/// `fleet/{truck}/telemetry`
pub fn telemetry_topic(truck: &str) -> String {
    format!("fleet/{truck}/telemetry")
}

/// `host:port` (`[v6]:port` for IPv6) into its parts.
pub fn parse_endpoint(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("{s:?} is not host:port (e.g. 127.0.0.1:8883)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{s:?} has no host");
    }
    let port = port
        .parse::<u16>()
        .with_context(|| format!("{s:?}: {port:?} is not a port number"))?;
    Ok((host.to_owned(), port))
}

/// A rustls client configuration trusting only `ca_pem` and presenting `cert_pem` / `key_pem`.
pub fn tls_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| anyhow::anyhow!("the CA file is not PEM: {e:?}"))?;
        roots.add(c).context("adding the CA certificate")?;
    }
    if roots.is_empty() {
        bail!("the CA file holds no certificate");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("the client certificate is not PEM: {e:?}"))?;
    if chain.is_empty() {
        bail!("the client certificate file holds no certificate");
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| anyhow::anyhow!("the private key: {e:?}"))?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("client certificate and key")?;
    Ok(Arc::new(cfg))
}

/// [`tls_config`] from files.
pub fn tls_config_from_files(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    tls_config(&read(ca)?, &read(cert)?, &read(key)?)
        .with_context(|| format!("TLS set-up with {} and {}", cert.display(), key.display()))
}

/// Options of a device connection: client id `client_id`, MQTT 3.1.1 over TLS to
/// `endpoint` (`host:port`), persistent session (`clean_session = false`).
pub fn device_options(
    client_id: &str,
    endpoint: &str,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<MqttOptions> {
    if client_id.is_empty() || client_id.starts_with(' ') {
        bail!("invalid client id {client_id:?}");
    }
    let (host, port) = parse_endpoint(endpoint)?;
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)))
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(false)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("127.0.0.1:8883").unwrap(),
            ("127.0.0.1".into(), 8883)
        );
        assert_eq!(parse_endpoint("[::1]:8883").unwrap(), ("::1".into(), 8883));
        assert_eq!(
            parse_endpoint("iot.example:1").unwrap(),
            ("iot.example".into(), 1)
        );
        assert!(parse_endpoint("127.0.0.1").is_err());
        assert!(parse_endpoint(":8883").is_err());
        assert!(parse_endpoint("h:99999").is_err());
    }

    #[test]
    fn topics() {
        let t = Topics::new("truck-7");
        assert_eq!(t.telemetry, "fleet/truck-7/telemetry");
        assert_eq!(t.update, "$aws/things/truck-7/shadow/update");
        assert_eq!(t.delta, "$aws/things/truck-7/shadow/update/delta");
        assert_eq!(t.get_accepted, "$aws/things/truck-7/shadow/get/accepted");
    }

    #[test]
    fn tls_config_needs_pem() {
        assert!(tls_config(b"nothing", b"", b"").is_err());
    }
}
