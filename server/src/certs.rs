//! A small certificate authority for a cluster (`isthmus certs`): a CA,
//! node certificates naming `isthmus://node/<dc>/<node_id>` (for servers
//! and clients: a node both serves and dials), and client certificates
//! naming `isthmus://client/<name>` (for clients only). For local
//! clusters, tests and the demo; operators with their own PKI issue
//! certificates with the same URI names from it instead (README,
//! Security).
//!
//! Keys are ECDSA P-256. Files are PEM; private keys are written with mode
//! 0600 and never overwrite an existing file.

use std::io::Write;
use std::path::{Path, PathBuf};

use isthmus_client::tls::CertIdentity;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or the CA files.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// When a certificate is valid: from a day ago (clocks differ) for `days`.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Start.
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From a day ago until `days` from now.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl Issued {
    /// Write `<dir>/<stem>.pem` and `<dir>/<stem>.key` (0600); refuses to
    /// overwrite either. Returns the two paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), CertError> {
        std::fs::create_dir_all(dir).map_err(|e| CertError::File {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write_new(&cert, self.cert_pem.as_bytes(), 0o644)?;
        write_new(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok((cert, key))
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| CertError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}

/// A certificate authority that can issue node and client certificates.
pub struct Ca {
    issued: Issued,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str, validity: Validity) -> Result<Self, CertError> {
        let mut params = CertificateParams::new(Vec::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Ca {
            issued,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key, PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, KeyPair::from_pem(key_pem)?)?;
        Ok(Ca {
            issued: Issued {
                cert_pem: cert_pem.to_owned(),
                key_pem: key.serialize_pem(),
            },
            issuer,
        })
    }

    /// A CA from `<dir>/ca.pem` and `<dir>/ca.key`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| CertError::File {
                path,
                reason: e.to_string(),
            })
        };
        Self::from_pem(&read("ca.pem")?, &read("ca.key")?)
    }

    /// The CA's own certificate and key.
    pub fn issued(&self) -> &Issued {
        &self.issued
    }

    /// Issue a certificate for `identity`. A node's is for servers and
    /// clients (it serves and dials) and may also name `hosts` (DNS names
    /// or IP addresses, for tools that check them); a client's is for
    /// clients only.
    pub fn issue(
        &self,
        identity: &CertIdentity,
        hosts: &[String],
        validity: Validity,
    ) -> Result<Issued, CertError> {
        let mut params = CertificateParams::new(Vec::new())?;
        params
            .subject_alt_names
            .push(SanType::URI(identity.uri().try_into()?));
        for host in hosts {
            params.subject_alt_names.push(match host.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into()?),
            });
        }
        let common_name = match identity {
            CertIdentity::Node { node_id, .. } => node_id,
            CertIdentity::Client { name } => name,
        };
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match identity {
            CertIdentity::Node { .. } => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            CertIdentity::Client { .. } => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use isthmus_client::tls::{TlsMaterial, identity_of};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn issued_certificates_name_their_identity_and_load() {
        let ca = Ca::new("test", Validity::days(1)).unwrap();
        let node = CertIdentity::Node {
            node_id: "n1".into(),
            dc: "dc1".into(),
        };
        let issued = ca
            .issue(
                &node,
                &["127.0.0.1".into(), "n1.local".into()],
                Validity::days(1),
            )
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(identity_of(&der).unwrap(), node);
        let material = TlsMaterial::from_pem(
            ca.issued().cert_pem.as_bytes(),
            Some((issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())),
        )
        .unwrap();
        assert_eq!(material.identity(), Some(&node));
        assert!(material.server_config().is_ok());
        assert!(material.client_config().is_ok());
        // A CA reloaded from its PEM issues certificates that chain to it.
        let again = Ca::from_pem(&ca.issued().cert_pem, &ca.issued().key_pem).unwrap();
        let client = CertIdentity::Client {
            name: "alice".into(),
        };
        let issued = again.issue(&client, &[], Validity::days(1)).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(identity_of(&der).unwrap(), client);
    }

    #[test]
    fn files_are_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("isthmus-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = Ca::new("test", Validity::days(1)).unwrap();
        ca.issued().write(&dir, "ca").unwrap();
        assert!(matches!(
            ca.issued().write(&dir, "ca"),
            Err(CertError::File { .. })
        ));
        let loaded = Ca::load(&dir).unwrap();
        assert_eq!(loaded.issued().cert_pem, ca.issued().cert_pem);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
