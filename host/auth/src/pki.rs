//! Shoal's certificate authority and X.509 helpers.
//!
//! On first start Shoal creates a root CA in `<data-dir>/tls/` (or uses one the operator put
//! there). It signs the server certificate of the TLS listeners and, like AWS IoT's
//! `CreateKeysAndCertificate` and `CreateCertificateFromCsr`, device certificates. A
//! certificate's id is the hex SHA-256 of its DER encoding (64 characters, AWS's format), so the
//! same certificate always has the same id on every node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A PKI failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing key material failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Generating or signing failed.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// A certificate, key or CSR did not parse.
    #[error("{0}")]
    Invalid(String),
}

fn rc(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { what, source }
}

/// The hex SHA-256 of a certificate's DER: its id (64 lowercase hex characters).
pub fn certificate_id(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER of the first certificate in `pem`.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::Invalid("no certificate in the PEM text".into()))?
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| PkiError::Invalid(format!("certificate PEM: {e}")))
}

/// The PEM text of a DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What a certificate says, for policy variables and the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// Hex SHA-256 of the DER.
    pub id: String,
    /// Subject fields by AWS policy-variable name (`CommonName`, `Organization`, ...): the
    /// first value of each.
    pub subject: BTreeMap<String, String>,
    /// Issuer fields, same naming.
    pub issuer: BTreeMap<String, String>,
    /// Serial number (hex).
    pub serial: String,
    /// Validity start (seconds since the epoch).
    pub not_before: i64,
    /// Validity end (seconds since the epoch).
    pub not_after: i64,
    /// DNS names in the subject alternative name.
    pub san_dns: Vec<String>,
    /// IP addresses in the subject alternative name.
    pub san_ip: Vec<String>,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
}

/// Reads a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
    let names = |name: &X509Name<'_>| {
        let mut m = BTreeMap::new();
        let fields: [(&str, &x509_parser::der_parser::Oid<'_>); 13] = [
            ("CommonName", &oid_registry::OID_X509_COMMON_NAME),
            ("Country", &oid_registry::OID_X509_COUNTRY_NAME),
            ("Organization", &oid_registry::OID_X509_ORGANIZATION_NAME),
            ("OrganizationalUnit", &oid_registry::OID_X509_ORGANIZATIONAL_UNIT),
            ("State", &oid_registry::OID_X509_STATE_OR_PROVINCE_NAME),
            ("Locality", &oid_registry::OID_X509_LOCALITY_NAME),
            ("DistinguishedNameQualifier", &oid_registry::OID_X509_DN_QUALIFIER),
            ("SerialNumber", &oid_registry::OID_X509_SERIALNUMBER),
            ("Title", &oid_registry::OID_X509_TITLE),
            ("Surname", &oid_registry::OID_X509_SURNAME),
            ("GivenName", &oid_registry::OID_X509_GIVEN_NAME),
            ("Initials", &oid_registry::OID_X509_INITIALS),
            (
                "GenerationQualifier",
                &oid_registry::OID_X509_GENERATION_QUALIFIER,
            ),
        ];
        for (key, oid) in fields {
            if let Some(v) = name.iter_by_oid(oid).next().and_then(|a| a.as_str().ok()) {
                m.insert(key.to_owned(), v.to_owned());
            }
        }
        // id-at-pseudonym (2.5.4.65) is not in oid-registry's table.
        if let Ok(oid) = x509_parser::der_parser::Oid::from(&[2, 5, 4, 65])
            && let Some(v) = name.iter_by_oid(&oid).next().and_then(|a| a.as_str().ok())
        {
            m.insert("Pseudonym".to_owned(), v.to_owned());
        }
        m
    };
    let mut info = CertInfo {
        id: certificate_id(der),
        subject: names(cert.subject()),
        issuer: names(cert.issuer()),
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        ..CertInfo::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => info.san_dns.push((*d).to_owned()),
                GeneralName::IPAddress(ip) => {
                    let s = match ip.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default()).to_string(),
                        16 => {
                            std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default()).to_string()
                        }
                        _ => continue,
                    };
                    info.san_ip.push(s);
                }
                _ => {}
            }
        }
    }
    Ok(info)
}

/// Whether `cert_der` carries a valid signature by the key of `issuer_der`.
pub fn is_signed_by(cert_der: &[u8], issuer_der: &[u8]) -> bool {
    use x509_parser::prelude::*;
    let (Ok((_, cert)), Ok((_, issuer))) = (
        X509Certificate::from_der(cert_der),
        X509Certificate::from_der(issuer_der),
    ) else {
        return false;
    };
    cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// A certificate issued by Shoal, with the private key when Shoal made it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Its id.
    pub id: String,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PEM, PKCS#8); `None` when signed from a CSR. Returned once, never stored.
    pub private_key_pem: Option<String>,
    /// The public key (PEM); `None` when signed from a CSR.
    pub public_key_pem: Option<String>,
}

/// Shoal's root certificate authority.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn write_secret(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| PkiError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        what: format!("reading {}", path.display()),
        source,
    })
}

impl CertificateAuthority {
    /// Loads `dir/ca.pem` + `dir/ca.key`, creating both on first start (`dir` is created).
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if !(cert_path.exists() && key_path.exists()) {
            let key = KeyPair::generate().map_err(rc("generating the CA key"))?;
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA parameters"))?;
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
            let cert = params.self_signed(&key).map_err(rc("self-signing the CA"))?;
            write_secret(&key_path, &key.serialize_pem())?;
            std::fs::write(&cert_path, cert.pem()).map_err(|source| PkiError::Io {
                what: format!("writing {}", cert_path.display()),
                source,
            })?;
            let _ = std::fs::remove_file(dir.join("server.pem"));
            tracing::info!(path = %cert_path.display(), "generated a root CA");
        }
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(rc("parsing ca.key"))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(rc("parsing ca.pem"))?;
        Ok(CertificateAuthority {
            cert_der: pem_to_der(&cert_pem)?,
            cert_pem,
            issuer,
            dir: dir.to_owned(),
        })
    }

    /// The CA certificate (PEM) clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA's id (hex SHA-256 of its DER).
    pub fn id(&self) -> String {
        certificate_id(&self.cert_der)
    }

    /// Ensures `dir/server.pem` (chain: server, CA) and `dir/server.key` exist for
    /// `localhost`, 127.0.0.1, ::1 and `extra_names`; returns their paths.
    pub fn ensure_server_cert(&self, extra_names: &[String]) -> Result<(PathBuf, PathBuf), PkiError> {
        let (cert_path, key_path) = (self.dir.join("server.pem"), self.dir.join("server.key"));
        if cert_path.exists() && key_path.exists() {
            return Ok((cert_path, key_path));
        }
        let key = KeyPair::generate().map_err(rc("generating the server key"))?;
        let mut names = vec!["localhost".to_owned()];
        names.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::new(names).map_err(rc("server parameters"))?;
        for ip in ["127.0.0.1", "::1"] {
            if let Ok(ip) = ip.parse() {
                params.subject_alt_names.push(SanType::IpAddress(ip));
            }
        }
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rc("signing the server certificate"))?;
        write_secret(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.cert_pem)).map_err(|source| {
            PkiError::Io {
                what: format!("writing {}", cert_path.display()),
                source,
            }
        })?;
        tracing::info!(path = %cert_path.display(), "generated a server certificate");
        Ok((cert_path, key_path))
    }

    fn device_params(common_name: &str, validity_days: u32) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("device parameters"))?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Shoal device");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(i64::from(validity_days));
        params.serial_number = Some(rcgen::SerialNumber::from_slice(
            &uuid::Uuid::new_v4().into_bytes(),
        ));
        Ok(params)
    }

    /// A new key pair and a device certificate for it (AWS `CreateKeysAndCertificate`).
    pub fn create_keys_and_certificate(
        &self,
        common_name: &str,
        validity_days: u32,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(rc("generating a device key"))?;
        let cert = Self::device_params(common_name, validity_days)?
            .signed_by(&key, &self.issuer)
            .map_err(rc("signing the device certificate"))?;
        Ok(Issued {
            id: certificate_id(cert.der()),
            cert_pem: cert.pem(),
            private_key_pem: Some(key.serialize_pem()),
            public_key_pem: Some(key.public_key_pem()),
        })
    }

    /// Signs a device's certificate signing request (AWS `CreateCertificateFromCsr`). The
    /// subject comes from the CSR; the validity and key usages from Shoal.
    pub fn sign_csr(&self, csr_pem: &str, validity_days: u32) -> Result<Issued, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Invalid(format!("certificate signing request: {e}")))?;
        let defaults = Self::device_params("device", validity_days)?;
        csr.params.not_before = defaults.not_before;
        csr.params.not_after = defaults.not_after;
        csr.params.serial_number = defaults.serial_number;
        csr.params.is_ca = IsCa::NoCa;
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = csr.signed_by(&self.issuer).map_err(rc("signing the CSR"))?;
        Ok(Issued {
            id: certificate_id(cert.der()),
            cert_pem: cert.pem(),
            private_key_pem: None,
            public_key_pem: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issues_and_ids_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let again = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.id(), again.id());
        assert_eq!(ca.id().len(), 64);
        let issued = ca.create_keys_and_certificate("truck-7", 365).unwrap();
        let der = pem_to_der(&issued.cert_pem).unwrap();
        assert_eq!(certificate_id(&der), issued.id);
        assert!(is_signed_by(&der, ca.cert_der()));
        let info = cert_info(&der).unwrap();
        assert_eq!(
            info.subject.get("CommonName").map(String::as_str),
            Some("truck-7")
        );
        assert_eq!(
            info.issuer.get("CommonName").map(String::as_str),
            Some("Shoal Root CA")
        );
        assert!(!info.is_ca);
        assert!(info.not_after > info.not_before);
        let (c, k) = ca.ensure_server_cert(&[]).unwrap();
        assert!(c.exists() && k.exists());
    }

    #[test]
    fn signs_a_csr() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "sensor-1");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca.sign_csr(&csr, 30).unwrap();
        assert!(issued.private_key_pem.is_none());
        let info = cert_info(&pem_to_der(&issued.cert_pem).unwrap()).unwrap();
        assert_eq!(
            info.subject.get("CommonName").map(String::as_str),
            Some("sensor-1")
        );
        assert!(ca.sign_csr("not a csr", 30).is_err());
        let other = tempfile::tempdir().unwrap();
        let other_ca = CertificateAuthority::load_or_create(other.path()).unwrap();
        assert!(!is_signed_by(
            &pem_to_der(&issued.cert_pem).unwrap(),
            other_ca.cert_der()
        ));
    }
}
