//! Cluster PKI: the cluster CA, node and client certificates (rcgen), and loading them.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

impl ClusterCa {
    /// Generates a new CA for the cluster `name`.
    pub fn generate(_name: &str) -> Result<ClusterCa, PkiError> {
        unimplemented!("placeholder")
    }
    /// Issues a certificate for `role` named `name`, valid for `days` from now.
    pub fn issue(&self, _role: Role, _name: &str, _days: u32) -> Result<Issued, PkiError> {
        unimplemented!("placeholder")
    }
    /// Reads `DIR/ca.pem` and `DIR/ca.key`.
    pub fn load(_cluster_dir: &Path) -> Result<ClusterCa, PkiError> {
        unimplemented!("placeholder")
    }
}

impl Credentials {
    /// Loads PEM files.
    pub fn load(_ca: &Path, _cert: &Path, _key: &Path) -> Result<Credentials, PkiError> {
        unimplemented!("placeholder")
    }
    /// A node's credentials from a cluster dir.
    pub fn for_node(_cluster_dir: &Path, _node: &str) -> Result<Credentials, PkiError> {
        unimplemented!("placeholder")
    }
    /// The client credentials from a cluster dir.
    pub fn for_client(_cluster_dir: &Path) -> Result<Credentials, PkiError> {
        unimplemented!("placeholder")
    }
}

/// Writes a new CA and certificates for `nodes` and one client into `cluster_dir`.
pub fn write_cluster_pki(
    _cluster_dir: &Path,
    _name: &str,
    _nodes: &[&str],
) -> Result<(), PkiError> {
    unimplemented!("placeholder")
}
