//! QUIC transport (quinn + rustls/ring) with mutual TLS against the cluster CA.

use std::net::SocketAddr;

use crate::pki::Credentials;
use crate::wire::{RemoteError, Request, Response, WireError};

/// The name every node certificate carries and every client checks.
pub const SERVER_NAME: &str = "mend-node";

/// Errors of connecting and talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TLS or endpoint configuration failed.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The endpoint could not bind.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The peer could not be reached or refused the connection.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The peer speaks another protocol version.
    #[error("{addr} speaks protocol {theirs}, this build speaks {ours}")]
    Protocol {
        /// The peer.
        addr: SocketAddr,
        /// Their version.
        theirs: u32,
        /// Ours.
        ours: u32,
    },
    /// A stream to the peer failed.
    #[error("{addr}: {source}")]
    Wire {
        /// The peer.
        addr: SocketAddr,
        /// The framing or stream error.
        #[source]
        source: WireError,
    },
    /// The peer answered with an error.
    #[error("{addr} ({node}): {source}")]
    Remote {
        /// The peer.
        addr: SocketAddr,
        /// Its node id.
        node: String,
        /// What it said.
        #[source]
        source: RemoteError,
    },
    /// The peer answered something the request does not expect.
    #[error("{addr}: unexpected answer {what}")]
    Unexpected {
        /// The peer.
        addr: SocketAddr,
        /// A short description of the answer.
        what: String,
    },
}

/// A QUIC endpoint that accepts cluster members only.
pub fn server_endpoint(
    _bind: SocketAddr,
    _creds: &Credentials,
) -> Result<quinn::Endpoint, TransportError> {
    unimplemented!("placeholder")
}

/// A QUIC endpoint for connecting to nodes with a client certificate.
pub fn client_endpoint(_creds: &Credentials) -> Result<quinn::Endpoint, TransportError> {
    unimplemented!("placeholder")
}

/// A connection to a node, after the handshake.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// The node's address.
    pub addr: SocketAddr,
    /// The node's id, from its Hello.
    pub node: String,
    /// The node's group, from its Hello.
    pub group: u32,
}

impl Peer {
    /// Connects to `addr` and performs the Hello handshake.
    pub async fn connect(
        _endpoint: &quinn::Endpoint,
        _addr: SocketAddr,
    ) -> Result<Peer, TransportError> {
        unimplemented!("placeholder")
    }
    /// Opens a stream and sends `req`; the caller continues on the stream.
    pub async fn open(
        &self,
        _req: &Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        unimplemented!("placeholder")
    }
    /// One request, one response; a [`Response::Error`] becomes [`TransportError::Remote`].
    pub async fn call(&self, _req: &Request) -> Result<Response, TransportError> {
        unimplemented!("placeholder")
    }
    /// Reads the next frame of a response stream, mapping errors to this peer.
    pub async fn next(
        &self,
        _recv: &mut quinn::RecvStream,
    ) -> Result<Option<Response>, TransportError> {
        unimplemented!("placeholder")
    }
}
