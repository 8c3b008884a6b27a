//! The server's own certificates: on first start, a root CA and a server certificate signed by
//! it are generated into `<data-dir>/tls/` (clients trust `ca.pem`). The identity issue reuses
//! this CA to issue device certificates.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Paths of the generated material.
#[derive(Debug, Clone)]
pub struct ServerPki {
    /// Root CA certificate (PEM) clients should trust.
    pub ca_cert: PathBuf,
    /// Root CA private key.
    pub ca_key: PathBuf,
    /// Server certificate chain (server, then CA).
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
}

/// Ensures a CA and a server certificate exist under `data_dir/tls`, generating what is
/// missing. Returns their paths.
pub fn ensure(data_dir: &Path) -> anyhow::Result<ServerPki> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = ServerPki {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    };
    if !(pki.ca_cert.exists() && pki.ca_key.exists()) {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Shoal Root CA");
        params.distinguished_name.push(DnType::OrganizationName, "Shoal");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        write_secret(&pki.ca_key, &key.serialize_pem())?;
        std::fs::write(&pki.ca_cert, cert.pem()).context("writing ca.pem")?;
        let _ = std::fs::remove_file(&pki.server_cert);
        tracing::info!(path = %pki.ca_cert.display(), "generated a root CA");
    }
    if !(pki.server_cert.exists() && pki.server_key.exists()) {
        let ca_pem = std::fs::read_to_string(&pki.ca_cert).context("reading ca.pem")?;
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&pki.ca_key).context("reading ca.key")?)
            .context("parsing ca.key")?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("parsing ca.pem")?;
        let key = KeyPair::generate().context("generating the server key")?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).context("server parameters")?;
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse()?));
        params.subject_alt_names.push(SanType::IpAddress("::1".parse()?));
        if let Ok(host) = std::env::var("HOSTNAME")
            && let Ok(name) = host.clone().try_into()
        {
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing the server certificate")?;
        write_secret(&pki.server_key, &key.serialize_pem())?;
        std::fs::write(&pki.server_cert, format!("{}{}", cert.pem(), ca_pem))
            .context("writing server.pem")?;
        tracing::info!(path = %pki.server_cert.display(), "generated a server certificate");
    }
    Ok(pki)
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn generates_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = super::ensure(dir.path()).unwrap();
        let before = std::fs::read(&a.server_cert).unwrap();
        let b = super::ensure(dir.path()).unwrap();
        assert_eq!(before, std::fs::read(&b.server_cert).unwrap());
        let cfg = shoal_broker::mqtt::tls::server_config(
            &std::fs::read(&b.server_cert).unwrap(),
            &std::fs::read(&b.server_key).unwrap(),
        );
        assert!(cfg.is_ok());
    }
}
