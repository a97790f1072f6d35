//! Cluster PKI: the cluster CA, node and client certificates (rcgen), and loading them.
//!
//! Layout of a cluster dir:
//!
//! ```text
//! ca.pem                 the cluster CA certificate
//! ca.key                 its private key (mode 0600)
//! certs/<node-id>.pem    a node's certificate: SAN `mend-node` and the node id, server + client auth
//! certs/<node-id>.key    its private key (mode 0600)
//! certs/client.pem       the client certificate: SAN `client`, client auth only
//! certs/client.key       its private key (mode 0600)
//! ```
//!
//! Every key is ECDSA P-256 and every file PEM. The CA's subject is rebuilt from `ca.pem`
//! itself when a certificate is issued later (rcgen's issuer reads it with x509-parser),
//! and every issued certificate is checked to name its issuer with exactly the bytes of
//! the CA's subject, so a certificate that would not chain is never written.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::transport::SERVER_NAME;

/// How long a new cluster CA is valid.
pub const CA_VALIDITY_DAYS: u32 = 3650;

/// How long node and client certificates written by this module are valid.
pub const CERT_VALIDITY_DAYS: u32 = 3650;

/// The name of the client certificate (`certs/client.pem`); no node may take it.
pub const CLIENT_NAME: &str = "client";

/// Certificates start to be valid this long before they are issued, so a peer whose clock
/// is a little behind does not refuse them.
const BACKDATE: Duration = Duration::hours(1);

/// Errors of certificate generation and loading.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{path} holds no valid {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// rcgen failed to generate or sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate name is not usable as a DNS name and a file name.
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An in-memory CA cannot issue certificates (its certificate or key is unusable).
    #[error("the cluster CA cannot issue certificates: {reason}")]
    UnusableCa {
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A storage node (server and client: nodes talk to each other).
    Node,
    /// A client (the CLI, the engine).
    Client,
}

/// A cluster CA: certificate and private key, PEM.
#[derive(Debug, Clone)]
pub struct ClusterCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA private key, PEM.
    pub key_pem: String,
}

/// A certificate issued by the cluster CA, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

/// A peer's TLS identity: the cluster CA to trust, its own chain and key.
#[derive(Debug)]
pub struct Credentials {
    /// The cluster CA certificate.
    pub ca: CertificateDer<'static>,
    /// The peer's certificate chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// The peer's private key.
    pub key: PrivateKeyDer<'static>,
}

/// What makes a [`ClusterCa`] unusable, so callers can name the file at fault.
#[derive(Debug, Clone, Copy)]
enum CaDefect {
    /// The certificate is not PEM, not DER, or its subject cannot be rebuilt.
    Certificate,
    /// The key is not a PEM private key rcgen can sign with.
    Key,
    /// The key is not the certificate's key.
    KeyMismatch,
}

impl CaDefect {
    fn reason(self) -> &'static str {
        match self {
            CaDefect::Certificate => {
                "its certificate is not a readable CA certificate with a supported subject"
            }
            CaDefect::Key => "its private key is not a usable PEM private key",
            CaDefect::KeyMismatch => "its private key does not belong to its certificate",
        }
    }
}

/// A CA ready to sign: rcgen's issuer plus the exact DER of the CA's subject.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    subject: Vec<u8>,
}

impl ClusterCa {
    /// Generates a new CA for the cluster `name`, valid for [`CA_VALIDITY_DAYS`].
    pub fn generate(name: &str) -> Result<ClusterCa, PkiError> {
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(PkiError::InvalidName {
                name: name.to_owned(),
                reason: "a cluster name must be non-empty text without control characters",
            });
        }
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mend cluster CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(i64::from(CA_VALIDITY_DAYS));
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `role` named `name`, valid from an hour ago to `days` from
    /// now.
    pub fn issue(&self, role: Role, name: &str, days: u32) -> Result<Issued, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_with_validity(
            role,
            name,
            now - BACKDATE,
            now + Duration::days(i64::from(days)),
        )
    }

    /// Issues a certificate for `role` named `name`, valid from `not_before` to `not_after`
    /// (tests use it for expired and not-yet-valid certificates).
    ///
    /// A node certificate carries the SANs [`SERVER_NAME`] and `name` and may authenticate
    /// as server and as client; a client certificate carries the SAN `name` and may only
    /// authenticate as client.
    pub fn issue_with_validity(
        &self,
        role: Role,
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, PkiError> {
        check_name(name)?;
        let signer = self
            .signer()
            .map_err(|d| PkiError::UnusableCa { reason: d.reason() })?;

        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let mut sans = Vec::new();
        if role == Role::Node {
            sans.push(SERVER_NAME);
        }
        if !sans.contains(&name) {
            sans.push(name);
        }
        params.subject_alt_names = sans
            .into_iter()
            .map(|s| Ok(SanType::DnsName(s.try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            Role::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;

        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &signer.issuer)?;
        // The verifier matches the leaf's issuer to the CA's subject byte for byte; a
        // rebuilt subject that differs would give a certificate no peer accepts.
        match x509_parser::parse_x509_certificate(cert.der()) {
            Ok((_, leaf)) if leaf.issuer().as_raw() == signer.subject.as_slice() => {}
            _ => {
                return Err(PkiError::UnusableCa {
                    reason: "its subject cannot be reproduced exactly in issued certificates",
                })
            }
        }
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads `DIR/ca.pem` and `DIR/ca.key`, and checks that they can issue certificates.
    pub fn load(cluster_dir: &Path) -> Result<ClusterCa, PkiError> {
        let cert_path = cluster_dir.join(CA_CERT);
        let key_path = cluster_dir.join(CA_KEY);
        let ca = ClusterCa {
            cert_pem: read_text(&cert_path)?,
            key_pem: read_text(&key_path)?,
        };
        match ca.signer() {
            Ok(_) => Ok(ca),
            Err(CaDefect::Certificate) => Err(PkiError::Pem {
                path: cert_path,
                what: "CA certificate",
            }),
            Err(CaDefect::Key) => Err(PkiError::Pem {
                path: key_path,
                what: "private key",
            }),
            Err(CaDefect::KeyMismatch) => Err(PkiError::Pem {
                path: key_path,
                what: "private key for the CA certificate beside it",
            }),
        }
    }

    /// Rebuilds what rcgen needs to sign as this CA: its subject and key identifier (from
    /// the certificate) and its key.
    fn signer(&self) -> Result<Signer, CaDefect> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|_| CaDefect::Certificate)?;
        let (rest, parsed) =
            x509_parser::parse_x509_certificate(&cert).map_err(|_| CaDefect::Certificate)?;
        if !rest.is_empty() || !rebuildable(parsed.subject()) {
            return Err(CaDefect::Certificate);
        }
        let key = KeyPair::from_pem(&self.key_pem).map_err(|_| CaDefect::Key)?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(CaDefect::KeyMismatch);
        }
        // rcgen takes the subject, the subject key identifier (which issued certificates
        // must name as their authority key identifier) and the key usages from the
        // certificate.
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|_| CaDefect::Certificate)?;
        Ok(Signer {
            subject: parsed.subject().as_raw().to_vec(),
            issuer,
        })
    }

    /// Writes `ca.pem` and `ca.key` into `cluster_dir`, refusing to replace an existing CA
    /// (that would orphan every certificate it issued).
    fn write_new(&self, cluster_dir: &Path) -> Result<(), PkiError> {
        for file in [CA_CERT, CA_KEY] {
            let path = cluster_dir.join(file);
            if path.exists() {
                return Err(PkiError::Write {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a cluster CA already exists here; refusing to replace it",
                    ),
                });
            }
        }
        write_file(&cluster_dir.join(CA_KEY), &self.key_pem, true)?;
        write_file(&cluster_dir.join(CA_CERT), &self.cert_pem, false)
    }
}

impl Issued {
    /// Writes the certificate to `cert` and the key to `key` (mode 0600), each atomically,
    /// creating their directories.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), PkiError> {
        write_file(key, &self.key_pem, true)?;
        write_file(cert, &self.cert_pem, false)
    }
}

impl Credentials {
    /// Loads PEM files: the CA certificate (the first one in `ca`), the peer's chain (every
    /// certificate in `cert`) and its private key. Errors name the file at fault.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, PkiError> {
        let ca_der = read_certs(ca)?.swap_remove(0);
        let chain = read_certs(cert)?;
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, "private key", e))?;
        // Catch a key that belongs to another certificate here, where the files are
        // known, rather than as an opaque TLS configuration error later. Keys rcgen cannot
        // read (e.g. PKCS#1 RSA) are left to rustls.
        if let (Ok(pair), Ok((_, leaf))) = (
            KeyPair::try_from(&key_der),
            x509_parser::parse_x509_certificate(&chain[0]),
        ) {
            if pair.subject_public_key_info() != leaf.public_key().raw {
                return Err(PkiError::Pem {
                    path: key.to_path_buf(),
                    what: "private key for the certificate beside it",
                });
            }
        }
        Ok(Credentials {
            ca: ca_der,
            chain,
            key: key_der,
        })
    }

    /// A node's credentials from a cluster dir: `ca.pem`, `certs/<node>.pem`,
    /// `certs/<node>.key`.
    pub fn for_node(cluster_dir: &Path, node: &str) -> Result<Credentials, PkiError> {
        check_name(node)?;
        let (cert, key) = leaf_paths(cluster_dir, node);
        Credentials::load(&cluster_dir.join(CA_CERT), &cert, &key)
    }

    /// The client credentials from a cluster dir: `ca.pem`, `certs/client.pem`,
    /// `certs/client.key`.
    pub fn for_client(cluster_dir: &Path) -> Result<Credentials, PkiError> {
        let (cert, key) = leaf_paths(cluster_dir, CLIENT_NAME);
        Credentials::load(&cluster_dir.join(CA_CERT), &cert, &key)
    }
}

/// Writes a new CA and certificates for `nodes` and one client into `cluster_dir`.
///
/// Everything is generated before anything is written, and an existing CA is never
/// replaced (the error names its file).
pub fn write_cluster_pki(cluster_dir: &Path, name: &str, nodes: &[&str]) -> Result<(), PkiError> {
    for node in nodes {
        check_name(node)?;
        if *node == CLIENT_NAME {
            return Err(PkiError::InvalidName {
                name: CLIENT_NAME.to_owned(),
                reason: "this name is reserved for the client certificate",
            });
        }
    }
    let ca = ClusterCa::generate(name)?;
    let mut issued = Vec::with_capacity(nodes.len() + 1);
    for node in nodes {
        issued.push((*node, ca.issue(Role::Node, node, CERT_VALIDITY_DAYS)?));
    }
    issued.push((
        CLIENT_NAME,
        ca.issue(Role::Client, CLIENT_NAME, CERT_VALIDITY_DAYS)?,
    ));

    std::fs::create_dir_all(cluster_dir).map_err(|source| PkiError::Write {
        path: cluster_dir.to_path_buf(),
        source,
    })?;
    ca.write_new(cluster_dir)?;
    for (name, cert) in issued {
        let (cert_path, key_path) = leaf_paths(cluster_dir, name);
        cert.write(&cert_path, &key_path)?;
    }
    Ok(())
}

/// Issues a node certificate from the CA in `cluster_dir` and writes
/// `certs/<node>.pem` and `certs/<node>.key` (replacing any there: re-issuing is how a
/// node's certificate is renewed).
pub fn issue_node_cert(cluster_dir: &Path, node: &str) -> Result<(), PkiError> {
    check_name(node)?;
    if node == CLIENT_NAME {
        return Err(PkiError::InvalidName {
            name: CLIENT_NAME.to_owned(),
            reason: "this name is reserved for the client certificate",
        });
    }
    let ca = ClusterCa::load(cluster_dir)?;
    let issued = ca.issue(Role::Node, node, CERT_VALIDITY_DAYS)?;
    let (cert, key) = leaf_paths(cluster_dir, node);
    issued.write(&cert, &key)
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const CERTS_DIR: &str = "certs";

/// `certs/<name>.pem` and `certs/<name>.key`.
fn leaf_paths(cluster_dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = cluster_dir.join(CERTS_DIR);
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// Names become DNS SANs and file names: keep them to letters, digits, `-`, `_`, `.`, not
/// starting with a dot or dash (so no path can escape `certs/`).
pub fn check_name(name: &str) -> Result<(), PkiError> {
    let reason = if name.is_empty() {
        Some("a name must not be empty")
    } else if name.len() > 63 {
        Some("a name has at most 63 characters")
    } else if name.starts_with(['.', '-']) {
        Some("a name must not start with '.' or '-'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("use only letters, digits, '-', '_' and '.'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PkiError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn pem_error(path: &Path, what: &'static str, e: pem::Error) -> PkiError {
    match e {
        pem::Error::Io(source) => PkiError::Read {
            path: path.to_path_buf(),
            source,
        },
        _ => PkiError::Pem {
            path: path.to_path_buf(),
            what,
        },
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a crash leaves
/// the old file or the new one; `private` files are created with mode 0600.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Whether rcgen can rebuild `name` as it is: single-valued RDNs, each attribute type at
/// most once (rcgen keeps one value per type, so a repeated type would change the name).
fn rebuildable(name: &x509_parser::x509::X509Name<'_>) -> bool {
    let mut types = Vec::new();
    name.iter().all(|rdn| {
        let [atv] = rdn.iter().collect::<Vec<_>>()[..] else {
            return false;
        };
        let fresh = !types.contains(&atv.attr_type());
        types.push(atv.attr_type());
        fresh
    })
}

#[cfg(test)]
mod tests {
    use x509_parser::extensions::ParsedExtension;

    use super::*;

    fn leaf_issuer_matches(ca: &ClusterCa, issued: &Issued) -> bool {
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        let leaf_der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        let ca_key_id = ca
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0),
                _ => None,
            });
        let leaf_authority_key_id =
            leaf.iter_extensions()
                .find_map(|ext| match ext.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
                    _ => None,
                });
        ca.subject().as_raw() == leaf.issuer().as_raw()
            && ca_key_id.is_some()
            && leaf_authority_key_id.map(|id| id.0) == ca_key_id
            && leaf.issuer().as_raw() != leaf.subject().as_raw()
    }

    #[test]
    fn a_loaded_ca_issues_certificates_that_chain_to_it() {
        let dir = tempfile::tempdir().unwrap();
        write_cluster_pki(dir.path(), "test", &["n1", "n2"]).unwrap();
        let ca = ClusterCa::load(dir.path()).unwrap();
        let issued = ca.issue(Role::Node, "n3", 1).unwrap();
        assert!(leaf_issuer_matches(&ca, &issued));
        issue_node_cert(dir.path(), "n3").unwrap();
        let creds = Credentials::for_node(dir.path(), "n3").unwrap();
        assert_eq!(creds.chain.len(), 1);
        Credentials::for_node(dir.path(), "n1").unwrap();
        Credentials::for_client(dir.path()).unwrap();
    }

    #[test]
    fn subjects_are_taken_apart_and_rebuilt() {
        let ca = ClusterCa::generate("weird name: ü, \"quoted\"").unwrap();
        let issued = ca.issue(Role::Client, "client", 1).unwrap();
        assert!(leaf_issuer_matches(&ca, &issued));
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        write_cluster_pki(dir.path(), "test", &["n1"]).unwrap();
        for key in ["ca.key", "certs/n1.key", "certs/client.key"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let mode = std::fs::metadata(dir.path().join("ca.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0o044);
    }

    #[test]
    fn an_existing_ca_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        write_cluster_pki(dir.path(), "test", &["n1"]).unwrap();
        let before = std::fs::read(dir.path().join("ca.key")).unwrap();
        let err = write_cluster_pki(dir.path(), "test", &["n1"]).unwrap_err();
        assert!(
            matches!(&err, PkiError::Write { path, .. } if path.ends_with("ca.pem")),
            "{err}"
        );
        assert_eq!(std::fs::read(dir.path().join("ca.key")).unwrap(), before);
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Credentials::for_node(dir.path(), "n1").unwrap_err();
        assert!(
            matches!(&err, PkiError::Read { path, .. } if path.ends_with("ca.pem")),
            "{err}"
        );
        assert!(err.to_string().contains("ca.pem"), "{err}");

        write_cluster_pki(dir.path(), "test", &["n1"]).unwrap();
        let err = Credentials::for_node(dir.path(), "n9").unwrap_err();
        assert!(
            matches!(&err, PkiError::Read { path, .. } if path.ends_with("certs/n9.pem")),
            "{err}"
        );

        std::fs::remove_file(dir.path().join("certs/n1.key")).unwrap();
        let err = Credentials::for_node(dir.path(), "n1").unwrap_err();
        assert!(
            matches!(&err, PkiError::Read { path, .. } if path.ends_with("certs/n1.key")),
            "{err}"
        );

        let err = ClusterCa::load(&dir.path().join("nowhere")).unwrap_err();
        assert!(
            matches!(&err, PkiError::Read { path, .. } if path.ends_with("nowhere/ca.pem")),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_cluster_pki(dir.path(), "test", &["n1"]).unwrap();
        let garbage = "this is not PEM\n";

        std::fs::write(dir.path().join("certs/n1.pem"), garbage).unwrap();
        let err = Credentials::for_node(dir.path(), "n1").unwrap_err();
        assert!(
            matches!(&err, PkiError::Pem { path, what: "certificate" } if path.ends_with("certs/n1.pem")),
            "{err}"
        );
        assert!(err.to_string().contains("n1.pem"), "{err}");

        std::fs::write(dir.path().join("certs/client.key"), garbage).unwrap();
        let err = Credentials::for_client(dir.path()).unwrap_err();
        assert!(
            matches!(&err, PkiError::Pem { path, what: "private key" } if path.ends_with("certs/client.key")),
            "{err}"
        );

        // A PEM block with a broken body.
        std::fs::write(
            dir.path().join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = ClusterCa::load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, PkiError::Pem { path, .. } if path.ends_with("ca.pem")),
            "{err}"
        );

        // Valid PEM, but a certificate where the key belongs: the key file is named.
        let dir = tempfile::tempdir().unwrap();
        write_cluster_pki(dir.path(), "test", &["n1"]).unwrap();
        let cert = std::fs::read(dir.path().join("certs/n1.pem")).unwrap();
        std::fs::write(dir.path().join("ca.key"), &cert).unwrap();
        let err = ClusterCa::load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, PkiError::Pem { path, .. } if path.ends_with("ca.key")),
            "{err}"
        );
    }

    #[test]
    fn a_key_from_another_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_cluster_pki(dir.path(), "test", &["n1", "n2"]).unwrap();
        std::fs::copy(
            dir.path().join("certs/n2.key"),
            dir.path().join("certs/n1.key"),
        )
        .unwrap();
        let err = Credentials::for_node(dir.path(), "n1").unwrap_err();
        assert!(
            matches!(&err, PkiError::Pem { path, .. } if path.ends_with("certs/n1.key")),
            "{err}"
        );

        std::fs::copy(dir.path().join("certs/n2.key"), dir.path().join("ca.key")).unwrap();
        let err = issue_node_cert(dir.path(), "n3").unwrap_err();
        assert!(
            matches!(&err, PkiError::Pem { path, .. } if path.ends_with("ca.key")),
            "{err}"
        );
    }

    #[test]
    fn names_that_could_escape_the_certs_dir_are_refused() {
        let ca = ClusterCa::generate("test").unwrap();
        for name in ["", "../n1", "a/b", ".hidden", "-x", "a b", "client\n"] {
            assert!(
                matches!(
                    ca.issue(Role::Node, name, 1),
                    Err(PkiError::InvalidName { .. })
                ),
                "{name:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            write_cluster_pki(dir.path(), "test", &["client"]),
            Err(PkiError::InvalidName { .. })
        ));
        assert!(!dir.path().join("ca.pem").exists());
    }
}
