//! Mutual TLS and the Hello handshake over real QUIC endpoints on loopback, port 0.
//!
//! Only members get in: every refusal is checked on both sides — the client gets an error
//! and the server saw its TLS handshake fail — so a test cannot pass because of a
//! timeout or a client that simply gave up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mend_engine::pki::{self, ClusterCa, Credentials, Role};
use mend_engine::transport::{self, accept_hello, Peer, Pool, TransportError};
use mend_engine::wire::{self, ErrorKind, RemoteError, Request, Response, PROTOCOL_VERSION};
use mend_engine::Id;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::mpsc;

/// A bound on every wait, so a broken test fails instead of hanging. Not a sleep.
const WAIT: Duration = Duration::from_secs(10);

/// What the test node saw of one incoming connection.
#[derive(Debug)]
enum Seen {
    /// TLS and Hello succeeded.
    Accepted,
    /// The QUIC/TLS handshake failed (the peer was refused).
    Refused(String),
    /// TLS succeeded, the Hello exchange did not.
    HelloFailed(TransportError),
}

/// A tiny node: mutual TLS, [`accept_hello`], then Lookup answered with "nothing here" and
/// every other request with an error.
struct TestNode {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    _endpoint: quinn::Endpoint,
}

impl TestNode {
    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("the node saw no connection")
            .expect("the node stopped")
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn cluster(nodes: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    pki::write_cluster_pki(dir.path(), "test", nodes).unwrap();
    dir
}

fn start_node(creds: &Credentials, node: &'static str) -> TestNode {
    let endpoint = transport::server_endpoint(loopback(), creds).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        let _ = tx.send(Seen::Refused(e.to_string()));
                        return;
                    }
                };
                if let Err(e) = accept_hello(&conn, node, 1, 7).await {
                    let _ = tx.send(Seen::HelloFailed(e));
                    conn.close(1u32.into(), b"handshake failed");
                    return;
                }
                let _ = tx.send(Seen::Accepted);
                serve(conn).await;
            });
        }
    });
    TestNode {
        addr,
        seen,
        _endpoint: endpoint,
    }
}

async fn serve(conn: quinn::Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            let Ok(Some(req)) = wire::read_frame::<_, Request>(&mut recv).await else {
                return;
            };
            let answer = match req {
                Request::Lookup { ids } => Response::Records(vec![None; ids.len()]),
                other => Response::Error(RemoteError {
                    kind: ErrorKind::BadRequest,
                    message: format!("the test node does not serve {}", other.kind()),
                }),
            };
            wire::write_frame(&mut send, &answer).await.unwrap();
            let _ = send.finish();
        });
    }
}

/// A node of another build: answers Hello with another protocol version.
fn start_node_speaking(creds: &Credentials, protocol: u32) -> SocketAddr {
    let endpoint = transport::server_endpoint(loopback(), creds).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let hello: Option<Request> = wire::read_frame(&mut recv).await.unwrap();
            assert!(matches!(hello, Some(Request::Hello { .. })), "{hello:?}");
            let answer = Response::Hello {
                protocol,
                node: "future".into(),
                group: 1,
                epoch: 1,
            };
            wire::write_frame(&mut send, &answer).await.unwrap();
            send.finish().unwrap();
            // Keep the connection until the client closes it.
            conn.closed().await;
        }
    });
    addr
}

/// Writes `issued` into `dir` and loads it with the cluster's CA as the trust anchor.
fn credentials(cluster: &Path, dir: &Path, issued: &pki::Issued) -> Credentials {
    let (cert, key): (PathBuf, PathBuf) = (dir.join("peer.pem"), dir.join("peer.key"));
    issued.write(&cert, &key).unwrap();
    Credentials::load(&cluster.join("ca.pem"), &cert, &key).unwrap()
}

/// Asserts that connecting failed because the peer refused (not because of a timeout).
fn assert_refused(result: Result<Peer, TransportError>) {
    match result {
        Err(TransportError::Connect { message, .. }) => {
            assert!(!message.contains("timed out"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_member_connects_and_calls() {
    let dir = cluster(&["n1", "n2"]);
    let mut node = start_node(&Credentials::for_node(dir.path(), "n1").unwrap(), "n1");

    let client = transport::client_endpoint(&Credentials::for_client(dir.path()).unwrap()).unwrap();
    let peer = Peer::connect(&client, node.addr).await.unwrap();
    assert_eq!((peer.node.as_str(), peer.group), ("n1", 1));
    assert!(matches!(node.next_seen().await, Seen::Accepted));

    let ids = vec![Id::from_key(b"a"), Id::from_key(b"b")];
    let answer = peer.call(&Request::Lookup { ids }).await.unwrap();
    assert_eq!(answer, Response::Records(vec![None, None]));

    match peer.call(&Request::RouteList).await {
        Err(TransportError::Remote { node, source, addr }) => {
            assert_eq!((node.as_str(), addr), ("n1", peer.addr));
            assert_eq!(source.kind, ErrorKind::BadRequest);
        }
        other => panic!("expected the node's error, got {other:?}"),
    }

    // Nodes talk to each other with their node certificates.
    let other_node =
        transport::client_endpoint(&Credentials::for_node(dir.path(), "n2").unwrap()).unwrap();
    let peer = Peer::connect(&other_node, node.addr).await.unwrap();
    assert_eq!(peer.node, "n1");
    assert!(matches!(node.next_seen().await, Seen::Accepted));
}

#[tokio::test]
async fn a_certificate_of_another_ca_is_refused() {
    let dir = cluster(&["n1"]);
    let mut node = start_node(&Credentials::for_node(dir.path(), "n1").unwrap(), "n1");

    let other_ca = ClusterCa::generate("other").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    for role in [Role::Client, Role::Node] {
        let issued = other_ca.issue(role, "client", 1).unwrap();
        let client =
            transport::client_endpoint(&credentials(dir.path(), scratch.path(), &issued)).unwrap();
        assert_refused(Peer::connect(&client, node.addr).await);
        assert!(
            matches!(node.next_seen().await, Seen::Refused(_)),
            "{role:?}"
        );
    }
}

#[tokio::test]
async fn a_node_of_another_cluster_is_not_trusted() {
    let dir = cluster(&["n1"]);
    let impostor_cluster = cluster(&["n1"]);
    let mut impostor = start_node(
        &Credentials::for_node(impostor_cluster.path(), "n1").unwrap(),
        "n1",
    );

    let client = transport::client_endpoint(&Credentials::for_client(dir.path()).unwrap()).unwrap();
    let err = Peer::connect(&client, impostor.addr).await.unwrap_err();
    match &err {
        TransportError::Connect { message, .. } => {
            assert!(message.contains("handshake failed"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(impostor.next_seen().await, Seen::Refused(_)));
}

#[tokio::test]
async fn a_client_certificate_cannot_serve() {
    let dir = cluster(&["n1"]);
    // The client certificate has neither the SAN `mend-node` nor server auth.
    let mut fake = start_node(&Credentials::for_client(dir.path()).unwrap(), "n1");
    let client =
        transport::client_endpoint(&Credentials::for_node(dir.path(), "n1").unwrap()).unwrap();
    assert!(matches!(
        Peer::connect(&client, fake.addr).await,
        Err(TransportError::Connect { .. })
    ));
    assert!(matches!(fake.next_seen().await, Seen::Refused(_)));
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let dir = cluster(&["n1"]);
    let mut node = start_node(&Credentials::for_node(dir.path(), "n1").unwrap(), "n1");

    let ca = ClusterCa::load(dir.path()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue_with_validity(
            Role::Client,
            "client",
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let client =
        transport::client_endpoint(&credentials(dir.path(), scratch.path(), &expired)).unwrap();
    assert_refused(Peer::connect(&client, node.addr).await);
    match node.next_seen().await {
        Seen::Refused(reason) => assert!(reason.to_lowercase().contains("expired"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The same CA's valid certificate gets in: it was the date that was refused.
    let valid = ca.issue(Role::Client, "client", 1).unwrap();
    let client =
        transport::client_endpoint(&credentials(dir.path(), scratch.path(), &valid)).unwrap();
    Peer::connect(&client, node.addr).await.unwrap();
    assert!(matches!(node.next_seen().await, Seen::Accepted));
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let dir = cluster(&["n1"]);
    let mut node = start_node(&Credentials::for_node(dir.path(), "n1").unwrap(), "n1");

    // Trusts the cluster CA, presents nothing.
    let ca = Credentials::for_client(dir.path()).unwrap().ca;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![transport::ALPN.to_vec()];
    let mut client = quinn::Endpoint::client(loopback()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).unwrap(),
    )));

    assert_refused(Peer::connect(&client, node.addr).await);
    assert!(matches!(node.next_seen().await, Seen::Refused(_)));
}

#[tokio::test]
async fn a_node_speaking_another_protocol_is_refused() {
    let dir = cluster(&["n1"]);
    let addr = start_node_speaking(
        &Credentials::for_node(dir.path(), "n1").unwrap(),
        PROTOCOL_VERSION + 1,
    );
    let client = transport::client_endpoint(&Credentials::for_client(dir.path()).unwrap()).unwrap();
    match Peer::connect(&client, addr).await {
        Err(TransportError::Protocol { theirs, ours, .. }) => {
            assert_eq!((theirs, ours), (PROTOCOL_VERSION + 1, PROTOCOL_VERSION));
        }
        other => panic!("expected a protocol mismatch, got {other:?}"),
    }
}

/// Sends `first` as the first request of a new connection and returns the node's answer.
async fn raw_first_request(
    client: &quinn::Endpoint,
    addr: SocketAddr,
    first: &Request,
) -> Response {
    let conn = client
        .connect(addr, transport::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::write_frame(&mut send, first).await.unwrap();
    send.finish().unwrap();
    wire::read_frame(&mut recv).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_client_speaking_another_protocol_is_refused() {
    let dir = cluster(&["n1"]);
    let mut node = start_node(&Credentials::for_node(dir.path(), "n1").unwrap(), "n1");
    let client = transport::client_endpoint(&Credentials::for_client(dir.path()).unwrap()).unwrap();

    let hello = Request::Hello {
        protocol: PROTOCOL_VERSION + 1,
    };
    let answer = raw_first_request(&client, node.addr, &hello).await;
    assert!(
        matches!(
            &answer,
            Response::Error(RemoteError {
                kind: ErrorKind::Protocol,
                ..
            })
        ),
        "{answer:?}"
    );
    match node.next_seen().await {
        Seen::HelloFailed(TransportError::Protocol { theirs, ours, .. }) => {
            assert_eq!((theirs, ours), (PROTOCOL_VERSION + 1, PROTOCOL_VERSION));
        }
        other => panic!("expected a protocol mismatch, got {other:?}"),
    }

    // A connection must start with Hello.
    let answer = raw_first_request(&client, node.addr, &Request::RouteList).await;
    assert!(
        matches!(
            &answer,
            Response::Error(RemoteError {
                kind: ErrorKind::Protocol,
                ..
            })
        ),
        "{answer:?}"
    );
    assert!(matches!(
        node.next_seen().await,
        Seen::HelloFailed(TransportError::Unexpected { .. })
    ));
}

#[tokio::test]
async fn an_unreachable_node_is_an_error_not_a_hang() {
    let dir = cluster(&["n1"]);
    // A bound socket that never answers: nothing is refused, packets just vanish.
    let silent = std::net::UdpSocket::bind(loopback()).unwrap();
    let addr = silent.local_addr().unwrap();
    let client = transport::client_endpoint(&Credentials::for_client(dir.path()).unwrap()).unwrap();
    match Peer::connect_with_timeout(&client, addr, Duration::from_millis(300)).await {
        Err(TransportError::Connect { addr: a, message }) => {
            assert_eq!(a, addr);
            assert!(message.contains("timed out"), "{message}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn the_pool_reuses_open_connections_and_replaces_closed_ones() {
    let dir = cluster(&["n1", "n2"]);
    let mut n1 = start_node(&Credentials::for_node(dir.path(), "n1").unwrap(), "n1");
    let mut n2 = start_node(&Credentials::for_node(dir.path(), "n2").unwrap(), "n2");
    let pool = Pool::new(
        transport::client_endpoint(&Credentials::for_client(dir.path()).unwrap()).unwrap(),
    );

    let (a, b) = tokio::join!(pool.get(n1.addr), pool.get(n2.addr));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.node.as_str(), b.node.as_str()), ("n1", "n2"));
    assert!(matches!(n1.next_seen().await, Seen::Accepted));
    assert!(matches!(n2.next_seen().await, Seen::Accepted));

    let again = pool.get(n1.addr).await.unwrap();
    assert_eq!(again.conn.stable_id(), a.conn.stable_id());

    a.conn.close(0u32.into(), b"test");
    let fresh = pool.get(n1.addr).await.unwrap();
    assert_ne!(fresh.conn.stable_id(), a.conn.stable_id());
    assert!(matches!(n1.next_seen().await, Seen::Accepted));
    fresh.call(&Request::Lookup { ids: vec![] }).await.unwrap();

    pool.forget(n1.addr);
    let after_forget = pool.get(n1.addr).await.unwrap();
    assert_ne!(after_forget.conn.stable_id(), fresh.conn.stable_id());
    assert!(matches!(n1.next_seen().await, Seen::Accepted));
}

#[tokio::test]
async fn a_node_added_later_gets_a_working_certificate() {
    let dir = cluster(&["n1"]);
    pki::issue_node_cert(dir.path(), "n3").unwrap();
    assert!(dir.path().join("certs/n3.pem").is_file());
    assert!(dir.path().join("certs/n3.key").is_file());
    let mut node = start_node(&Credentials::for_node(dir.path(), "n3").unwrap(), "n3");
    let client = transport::client_endpoint(&Credentials::for_client(dir.path()).unwrap()).unwrap();
    let peer = Peer::connect(&client, node.addr).await.unwrap();
    assert_eq!(peer.node, "n3");
    assert!(matches!(node.next_seen().await, Seen::Accepted));
}
