//! QUIC transport (quinn + rustls/ring) with mutual TLS against the cluster CA.
//!
//! Only members get in: a server endpoint requires a client certificate signed by the
//! cluster CA and refuses anything else during the TLS handshake; a client accepts only a
//! server certificate signed by the cluster CA for [`SERVER_NAME`] (which only node
//! certificates carry). TLS 1.3 only, ring only, ALPN [`ALPN`].
//!
//! After the QUIC handshake the client opens the first stream with [`Request::Hello`];
//! [`Peer::connect`] and [`accept_hello`] are the two halves of that exchange, both bounded
//! in time so an unreachable or silent peer gives an error, never a hang.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, IdleTimeout, TransportConfig, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;

use crate::pki::Credentials;
use crate::wire::{self, ErrorKind, RemoteError, Request, Response, WireError, PROTOCOL_VERSION};

/// The name every node certificate carries and every client checks.
pub const SERVER_NAME: &str = "mend-node";

/// The ALPN protocol both sides require.
pub const ALPN: &[u8] = b"mend/1";

/// How long [`Peer::connect`] waits for the QUIC handshake and the Hello answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`accept_hello`] waits for a new connection's Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest first frame of a connection a node reads (Hello is a few bytes).
pub const MAX_HELLO_FRAME: usize = 1024;

/// The application error code a connection is closed with when its handshake fails.
const CLOSE_HANDSHAKE_FAILED: u32 = 1;

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

/// The one crypto provider: ring.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(creds: &Credentials) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    roots.add(creds.ca.clone()).map_err(|e| {
        TransportError::Config(format!(
            "the cluster CA certificate is not a usable trust anchor: {e}"
        ))
    })?;
    Ok(roots)
}

/// Flow control sized for bulk transfer between nodes (loopback and LAN): many
/// concurrent request streams, a connection window large enough to fill a fast link. The
/// per-stream window is how far one streamed value can run ahead of the receiver's store,
/// so it is memory on each end: at 8 MiB a 256 MiB put or get peaked 8-16 MiB higher,
/// and 2 MiB copied a 2 GiB bulk `mend dc` on loopback as fast (224-276 MB/s against
/// 220-252). It caps one stream at 2 MiB per round trip (40 MB/s at 50 ms); a run keeps
/// many streams open, each with its own window. Dead peers are detected by the idle
/// timeout (QUIC ignores ICMP, so a killed peer looks alive until then: 15 s bounds how
/// long a run waits on one); keep-alives every 3 s stop an idle but healthy pooled
/// connection from timing out.
fn transport_config() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1024))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(2 << 20))
        .receive_window(VarInt::from_u32(64 << 20))
        .send_window(64 << 20)
        .keep_alive_interval(Some(Duration::from_secs(3)))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(15_000))));
    Arc::new(t)
}

/// The server side of mutual TLS: a node's certificate, and a client certificate signed by
/// the cluster CA required of every peer.
pub fn server_config(creds: &Credentials) -> Result<quinn::ServerConfig, TransportError> {
    let config =
        |what: &str, e: &dyn std::fmt::Display| TransportError::Config(format!("{what}: {e}"));
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(creds)?),
        provider(),
    )
    .build()
    .map_err(|e| config("client certificate verifier", &e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config("TLS versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|e| config("node certificate and key", &e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| config("QUIC server", &e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport_config());
    Ok(server)
}

/// The client side of mutual TLS: trusts the cluster CA only, presents `creds`.
pub fn client_config(creds: &Credentials) -> Result<quinn::ClientConfig, TransportError> {
    let config =
        |what: &str, e: &dyn std::fmt::Display| TransportError::Config(format!("{what}: {e}"));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config("TLS versions", &e))?
        .with_root_certificates(roots(creds)?)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|e| config("client certificate and key", &e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| config("QUIC client", &e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport_config());
    Ok(client)
}

/// A QUIC endpoint that accepts cluster members only.
pub fn server_endpoint(
    bind: SocketAddr,
    creds: &Credentials,
) -> Result<quinn::Endpoint, TransportError> {
    let config = server_config(creds)?;
    let bind_error = |source| TransportError::Bind { addr: bind, source };
    let socket = udp_socket(bind).map_err(bind_error)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_error(std::io::Error::other("no async runtime")))?;
    // Both keys are derived from the node's private key, so that a restarted node still
    // recognises the connection ids it issued before and can reset those connections.
    let secret = |context| blake3::derive_key(context, creds.key.secret_der());
    let cid_key = secret("mend 2026-11 QUIC connection id key");
    let cid_key = u64::from_le_bytes(cid_key[..8].try_into().expect("8 bytes"));
    let mut endpoint = quinn::EndpointConfig::new(Arc::new(ResetKey(secret(
        "mend 2026-11 QUIC stateless reset key",
    ))));
    endpoint.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            as Box<dyn quinn::ConnectionIdGenerator>
    });
    quinn::Endpoint::new(endpoint, Some(config), socket, runtime).map_err(bind_error)
}

/// Socket buffer bytes asked of the kernel for each endpoint's UDP socket, each way.
///
/// The kernel's default (208 KiB on Linux) holds about a millisecond of a bulk copy on
/// loopback: a node busy committing let thousands of datagrams per 2 GiB copy overflow it,
/// and QUIC took each loss as congestion. The kernel caps the request at its maximum
/// (`net.core.rmem_max` / `wmem_max`), silently.
const SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `bind`, with [`SOCKET_BUFFER`] bytes of buffers asked for.
fn udp_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        // As std binds: an IPv6 socket takes IPv6 only.
        socket.set_only_v6(true)?;
    }
    // Best effort: a kernel that refuses leaves its default, which works, more slowly.
    for (what, set) in [
        (
            "receive",
            Socket::set_recv_buffer_size as fn(&Socket, usize) -> std::io::Result<()>,
        ),
        ("send", Socket::set_send_buffer_size),
    ] {
        if let Err(e) = set(&socket, SOCKET_BUFFER) {
            tracing::debug!(error = %e, "cannot set the UDP {what} buffer of {bind}");
        }
    }
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

/// The key a node signs its stateless resets with, derived from its private key rather
/// than drawn at random per process (as are the keys of its connection ids): a node
/// restarted on the same address (after a crash) resets the connections peers still hold
/// to its previous process, and they see that at once instead of waiting out the idle
/// timeout.
struct ResetKey([u8; 32]);

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        signature_out.copy_from_slice(&mac.as_bytes()[..signature_out.len()]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let expected: [u8; 32] = signature
            .try_into()
            .map_err(|_| quinn::crypto::CryptoError)?;
        // blake3::Hash compares in constant time.
        if blake3::keyed_hash(&self.0, data) == blake3::Hash::from(expected) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

/// A QUIC endpoint for connecting to nodes with a client certificate, bound to
/// `0.0.0.0:0`.
pub fn client_endpoint(creds: &Credentials) -> Result<quinn::Endpoint, TransportError> {
    client_endpoint_at(SocketAddr::from(([0, 0, 0, 0], 0)), creds)
}

/// Like [`client_endpoint`], bound to `bind` (e.g. `[::]:0` to reach IPv6 nodes).
pub fn client_endpoint_at(
    bind: SocketAddr,
    creds: &Credentials,
) -> Result<quinn::Endpoint, TransportError> {
    let config = client_config(creds)?;
    let bind_error = |source| TransportError::Bind { addr: bind, source };
    let socket = udp_socket(bind).map_err(bind_error)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_error(std::io::Error::other("no async runtime")))?;
    let mut endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
            .map_err(bind_error)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
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
    /// Connects to `addr` and performs the Hello handshake, within [`CONNECT_TIMEOUT`].
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> Result<Peer, TransportError> {
        Peer::connect_with_timeout(endpoint, addr, CONNECT_TIMEOUT).await
    }

    /// Connects to `addr` and performs the Hello handshake, giving up after `timeout`.
    pub async fn connect_with_timeout(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Peer, TransportError> {
        let connect_error = |message: String| TransportError::Connect { addr, message };
        let attempt = async {
            let connecting = endpoint
                .connect(addr, SERVER_NAME)
                .map_err(|e| connect_error(e.to_string()))?;
            let conn = connecting.await.map_err(|e| connect_error(describe(&e)))?;
            match exchange_hello(&conn).await {
                Ok(answer) => Ok((conn, answer)),
                // A refusal (bad certificate, wrong ALPN…) shows up here, as the loss of
                // the connection: its close reason says why, the stream error does not.
                Err(e) => Err(connect_error(match conn.close_reason() {
                    Some(reason) => describe(&reason),
                    None => format!("handshake failed: {e}"),
                })),
            }
        };
        let (conn, answer) = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(connect_error(format!(
                    "timed out after {timeout:?} (is a node listening there?)"
                )))
            }
        };
        let refuse = |conn: &quinn::Connection, error: TransportError| {
            conn.close(
                VarInt::from_u32(CLOSE_HANDSHAKE_FAILED),
                b"handshake failed",
            );
            Err(error)
        };
        match answer {
            Some(Response::Hello {
                protocol,
                node,
                group,
                epoch: _,
            }) => {
                if protocol != PROTOCOL_VERSION {
                    return refuse(
                        &conn,
                        TransportError::Protocol {
                            addr,
                            theirs: protocol,
                            ours: PROTOCOL_VERSION,
                        },
                    );
                }
                Ok(Peer {
                    conn,
                    addr,
                    node,
                    group,
                })
            }
            Some(Response::Error(source)) => refuse(
                &conn,
                TransportError::Remote {
                    addr,
                    node: "unknown node, before Hello".into(),
                    source,
                },
            ),
            Some(other) => refuse(
                &conn,
                TransportError::Unexpected {
                    addr,
                    what: format!("{} to Hello", other.kind()),
                },
            ),
            None => refuse(
                &conn,
                connect_error("the node ended the handshake stream without answering".into()),
            ),
        }
    }

    /// Opens a stream and sends `req`; the caller continues on the stream.
    pub async fn open(
        &self,
        req: &Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let (mut send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| connection_lost(self.addr, &e))?;
        wire::write_frame(&mut send, req)
            .await
            .map_err(|e| self.stream_error(e))?;
        Ok((send, recv))
    }

    /// One request, one response; a [`Response::Error`] becomes [`TransportError::Remote`].
    pub async fn call(&self, req: &Request) -> Result<Response, TransportError> {
        let frame = wire::encode_frame(req).map_err(|e| self.stream_error(e))?;
        self.call_frame(frame.into()).await
    }

    /// Like [`Peer::call`] with a request already encoded by [`wire::encode_frame`] (a
    /// caller that needs the frame's size does not encode it twice). The frame is handed
    /// to the stream as it is: megabytes of values are not copied again.
    pub async fn call_frame(&self, frame: bytes::Bytes) -> Result<Response, TransportError> {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| connection_lost(self.addr, &e))?;
        send.write_chunk(frame)
            .await
            .map_err(|e| self.stream_error(WireError::Io(e.into())))?;
        send.finish().map_err(|e| {
            self.stream_error(WireError::Io(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                e,
            )))
        })?;
        match self.next(&mut recv).await? {
            Some(response) => Ok(response),
            None => Err(TransportError::Wire {
                addr: self.addr,
                source: WireError::Truncated,
            }),
        }
    }

    /// Reads the next frame of a response stream, mapping errors to this peer.
    pub async fn next(
        &self,
        recv: &mut quinn::RecvStream,
    ) -> Result<Option<Response>, TransportError> {
        match wire::read_frame(recv).await {
            Ok(Some(Response::Error(source))) => Err(TransportError::Remote {
                addr: self.addr,
                node: self.node.clone(),
                source,
            }),
            Ok(frame) => Ok(frame),
            Err(e) => Err(self.stream_error(e)),
        }
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// A stream error of this peer; when the whole connection is gone, its close reason
    /// replaces the stream's bare "connection lost".
    fn stream_error(&self, e: WireError) -> TransportError {
        match (&e, self.conn.close_reason()) {
            (WireError::Io(_), Some(reason)) => connection_lost(self.addr, &reason),
            _ => TransportError::Wire {
                addr: self.addr,
                source: e,
            },
        }
    }
}

/// Sends Hello on the first stream and reads the answer.
async fn exchange_hello(conn: &quinn::Connection) -> Result<Option<Response>, WireError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| WireError::Io(std::io::Error::other(e)))?;
    wire::write_frame(
        &mut send,
        &Request::Hello {
            protocol: PROTOCOL_VERSION,
        },
    )
    .await?;
    send.finish()
        .map_err(|e| WireError::Io(std::io::Error::other(e)))?;
    wire::read_frame(&mut recv).await
}

/// The server half of the handshake: accepts the first stream of `conn`, requires
/// [`Request::Hello`] with this build's protocol and answers with this node's identity,
/// within [`HELLO_TIMEOUT`].
///
/// A wrong protocol or another first request is answered with
/// [`Response::Error`] (kind [`ErrorKind::Protocol`]) and returned as an error; the caller
/// should then close the connection.
pub async fn accept_hello(
    conn: &quinn::Connection,
    node: &str,
    group: u32,
    epoch: u64,
) -> Result<(), TransportError> {
    let addr = conn.remote_address();
    let handshake = async {
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| connection_lost(addr, &e))?;
        let wire_error = |source| TransportError::Wire { addr, source };
        // Hello is a few bytes; a connection's first stream is not under the node's bound
        // on requests in flight, so it gets a frame limit of its own.
        let first: Option<Request> =
            match wire::read_frame_limited(&mut recv, MAX_HELLO_FRAME).await {
                Ok(first) => first,
                Err(e) => {
                    // Say why before the caller closes the connection: a stream dropped here
                    // would end cleanly, and the client could see that end before the close.
                    let refusal = Response::Error(RemoteError {
                        kind: ErrorKind::Protocol,
                        message: format!("bad first frame: {e}"),
                    });
                    let _ = wire::write_frame(&mut send, &refusal).await;
                    let _ = send.finish();
                    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                    return Err(wire_error(e));
                }
            };
        let (answer, outcome) = match first {
            Some(Request::Hello { protocol }) if protocol == PROTOCOL_VERSION => (
                Response::Hello {
                    protocol: PROTOCOL_VERSION,
                    node: node.to_owned(),
                    group,
                    epoch,
                },
                Ok(()),
            ),
            Some(Request::Hello { protocol }) => (
                Response::Error(RemoteError {
                    kind: ErrorKind::Protocol,
                    message: format!(
                        "node {node} speaks protocol {PROTOCOL_VERSION}, the client speaks {protocol}"
                    ),
                }),
                Err(TransportError::Protocol {
                    addr,
                    theirs: protocol,
                    ours: PROTOCOL_VERSION,
                }),
            ),
            Some(other) => (
                Response::Error(RemoteError {
                    kind: ErrorKind::Protocol,
                    message: format!(
                        "the first request of a connection must be Hello, not {}",
                        other.kind()
                    ),
                }),
                Err(TransportError::Unexpected {
                    addr,
                    what: format!("{} before Hello", other.kind()),
                }),
            ),
            None => return Err(wire_error(WireError::Truncated)),
        };
        wire::write_frame(&mut send, &answer)
            .await
            .map_err(wire_error)?;
        let _ = send.finish();
        if outcome.is_err() {
            // Let the refusal reach the client before the caller closes the connection.
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        }
        outcome
    };
    match tokio::time::timeout(HELLO_TIMEOUT, handshake).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::Connect {
            addr,
            message: format!("no Hello within {HELLO_TIMEOUT:?}"),
        }),
    }
}

/// Connections to nodes, one per address, reused while they are open.
#[derive(Debug)]
pub struct Pool {
    endpoint: quinn::Endpoint,
    timeout: Duration,
    // A std mutex: it is held only to look up or insert, never across an await, so
    // connecting to one node never blocks getting another.
    peers: Mutex<HashMap<SocketAddr, Peer>>,
}

impl Pool {
    /// A pool that connects through `endpoint` within [`CONNECT_TIMEOUT`].
    pub fn new(endpoint: quinn::Endpoint) -> Pool {
        Pool::with_connect_timeout(endpoint, CONNECT_TIMEOUT)
    }

    /// A pool that connects through `endpoint` within `timeout`.
    pub fn with_connect_timeout(endpoint: quinn::Endpoint, timeout: Duration) -> Pool {
        Pool {
            endpoint,
            timeout,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Bytes sent and received over UDP (QUIC overhead, handshakes and retransmissions
    /// included) by the pool's open connections: the honest wire cost of what they did.
    pub fn traffic(&self) -> (u64, u64) {
        self.peers().values().fold((0, 0), |(tx, rx), p| {
            let s = p.conn.stats();
            (tx + s.udp_tx.bytes, rx + s.udp_rx.bytes)
        })
    }

    /// The open connection to `addr`, or a new one.
    pub async fn get(&self, addr: SocketAddr) -> Result<Peer, TransportError> {
        if let Some(peer) = open_peer(&self.peers(), addr) {
            return Ok(peer);
        }
        let connected = Peer::connect_with_timeout(&self.endpoint, addr, self.timeout).await;
        let mut peers = self.peers();
        // Concurrent callers each connect. If another got there meanwhile, its connection
        // serves: one is kept (ours, if made, closes when dropped), and over a lossy link,
        // where one handshake can lose its first flight again and again while another gets
        // through, the node is reachable and this caller gets that connection, not the error.
        if let Some(existing) = open_peer(&peers, addr) {
            return Ok(existing);
        }
        let peer = connected?;
        peers.insert(addr, peer.clone());
        Ok(peer)
    }

    /// Drops the pooled connection to `addr` (it closes once no one uses it); the next
    /// [`Pool::get`] connects again.
    pub fn forget(&self, addr: SocketAddr) {
        self.peers().remove(&addr);
    }

    /// The endpoint the pool connects through.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Peer>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The pooled connection to `addr`, if it is still open.
fn open_peer(peers: &HashMap<SocketAddr, Peer>, addr: SocketAddr) -> Option<Peer> {
    peers.get(&addr).filter(|p| p.is_open()).cloned()
}

/// A lost connection as a stream error of `addr`, saying why it was lost.
fn connection_lost(addr: SocketAddr, e: &ConnectionError) -> TransportError {
    let kind = match e {
        ConnectionError::TimedOut => std::io::ErrorKind::TimedOut,
        ConnectionError::Reset => std::io::ErrorKind::ConnectionReset,
        _ => std::io::ErrorKind::ConnectionAborted,
    };
    TransportError::Wire {
        addr,
        source: WireError::Io(std::io::Error::new(
            kind,
            format!("connection lost: {}", describe(e)),
        )),
    }
}

/// Why a connection failed or ended, in words that point at the cause.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::TimedOut => "timed out: no answer (is a node listening there?)".into(),
        ConnectionError::ConnectionClosed(close) => {
            format!("refused by the peer: {close}")
        }
        ConnectionError::ApplicationClosed(close) => format!("closed by the peer: {close}"),
        ConnectionError::Reset => "refused: reset by the peer".into(),
        ConnectionError::TransportError(error) => format!("handshake failed: {error}"),
        ConnectionError::VersionMismatch => "refused: no QUIC version in common".into(),
        ConnectionError::LocallyClosed => "closed locally".into(),
        other => other.to_string(),
    }
}
