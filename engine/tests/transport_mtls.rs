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

    let client = endpoint_without_certificate(dir.path());
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

/// A node that answers the Hello of the first connection it accepts and leaves every
/// later one unanswered: a link on which one handshake got through and the others did not.
fn start_node_answering_once(creds: &Credentials) -> SocketAddr {
    let endpoint = transport::server_endpoint(loopback(), creds).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Some(incoming) = endpoint.accept().await {
            let answer = std::mem::take(&mut first);
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                if answer && accept_hello(&conn, "n1", 1, 7).await.is_ok() {
                    serve(conn).await;
                } else {
                    conn.closed().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_connect_that_times_out_uses_the_connection_a_concurrent_caller_made() {
    let dir = cluster(&["n1"]);
    let addr = start_node_answering_once(&Credentials::for_node(dir.path(), "n1").unwrap());
    let pool = Pool::with_connect_timeout(
        transport::client_endpoint(&Credentials::for_client(dir.path()).unwrap()).unwrap(),
        Duration::from_secs(1),
    );

    // Both callers find no connection and each makes one; only one is answered.
    let (a, b) = tokio::join!(pool.get(addr), pool.get(addr));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.conn.stable_id(), b.conn.stable_id());
    a.call(&Request::Lookup { ids: vec![] }).await.unwrap();

    // With no open connection to fall back on, the timeout is the answer.
    pool.forget(addr);
    let alone = pool.get(addr).await.unwrap_err();
    assert!(alone.to_string().contains("timed out after 1s"), "{alone}");
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

// ---------------------------------------------------------------------------------------
// Every node of a real cluster (in-process `mend` nodes, two groups of two) refuses every
// kind of bad client, and no application data reaches one.

/// A cluster of `groups` × `per_group` in-process nodes, each holding one value.
async fn real_cluster(
    groups: u32,
    per_group: u32,
) -> (tempfile::TempDir, Vec<mend_engine::node::RunningNode>) {
    use mend_engine::route::{split_evenly, NodeEntry, RouteList};
    let names: Vec<String> = (1..=groups)
        .flat_map(|g| (1..=per_group).map(move |n| format!("g{g}n{n}")))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let dir = cluster(&refs);
    let nodes = (1..=groups)
        .flat_map(|g| {
            split_evenly(per_group)
                .into_iter()
                .enumerate()
                .map(move |(i, r)| NodeEntry {
                    id: format!("g{g}n{}", i + 1),
                    group: g,
                    addr: "127.0.0.1:0".into(),
                    data_dir: PathBuf::from(format!("data/g{g}n{}", i + 1)),
                    partitions: vec![r],
                })
        })
        .collect();
    RouteList {
        name: "test".into(),
        epoch: 1,
        nodes,
    }
    .save(dir.path())
    .unwrap();
    let mut running = Vec::new();
    for name in &names {
        let store = Arc::new(mend_engine::store::MemoryStore::new());
        running.push(
            mend_engine::node::start(dir.path(), name, store)
                .await
                .unwrap(),
        );
    }
    // Every node holds a value, so there is something to leak.
    let member = transport::client_endpoint(&Credentials::for_client(dir.path()).unwrap()).unwrap();
    for n in &running {
        let peer = Peer::connect(&member, n.addr).await.unwrap();
        write_secret(&peer).await;
    }
    (dir, running)
}

const SECRET: &[u8] = b"a value only members may read";

fn secret_id() -> Id {
    Id::from_key(b"secret")
}

async fn write_secret(peer: &Peer) {
    let version = mend_engine::Version::of_value(SECRET, 1, 0);
    let (mut send, mut recv) = peer
        .open(&Request::Write {
            id: secret_id(),
            version,
        })
        .await
        .unwrap();
    send.write_all(SECRET).await.unwrap();
    let _ = send.finish();
    assert!(matches!(
        peer.next(&mut recv).await.unwrap(),
        Some(Response::Written(_))
    ));
}

/// A client endpoint presenting no certificate at all (it trusts the cluster CA).
fn endpoint_without_certificate(cluster: &Path) -> quinn::Endpoint {
    let ca = Credentials::for_client(cluster).unwrap().ca;
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
    client
}

/// The three kinds of bad client, by name: a certificate of another CA, an expired one of
/// the cluster's own CA, and none.
fn bad_clients(cluster: &Path, scratch: &Path) -> Vec<(&'static str, quinn::Endpoint)> {
    let other = ClusterCa::generate("other")
        .unwrap()
        .issue(Role::Client, "client", 1)
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = ClusterCa::load(cluster)
        .unwrap()
        .issue_with_validity(
            Role::Client,
            "client",
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
    let dir_a = scratch.join("other");
    let dir_b = scratch.join("expired");
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    vec![
        (
            "another CA",
            transport::client_endpoint(&credentials(cluster, &dir_a, &other)).unwrap(),
        ),
        (
            "expired",
            transport::client_endpoint(&credentials(cluster, &dir_b, &expired)).unwrap(),
        ),
        ("no certificate", endpoint_without_certificate(cluster)),
    ]
}

/// Tries everything a client would do on a raw QUIC connection: Hello, then asks for the
/// route list and the value. Returns what came back on any stream (nothing, if refused)
/// and the stream frames the connection received in all.
async fn raw_attempt(ep: &quinn::Endpoint, addr: SocketAddr) -> (Vec<String>, u64) {
    let conn = match ep.connect(addr, transport::SERVER_NAME).unwrap().await {
        Ok(conn) => conn,
        // Refused during the handshake, before a connection existed.
        Err(_) => return (Vec::new(), 0),
    };
    let mut answers = Vec::new();
    for req in [
        Request::Hello {
            protocol: PROTOCOL_VERSION,
        },
        Request::RouteList,
        Request::Read { id: secret_id() },
    ] {
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            break;
        };
        let _ = wire::write_frame(&mut send, &req).await;
        let _ = send.finish();
        match tokio::time::timeout(WAIT, wire::read_frame::<_, Response>(&mut recv)).await {
            Ok(Ok(Some(answer))) => answers.push(format!("{answer:?}")),
            Ok(_) => {}
            Err(_) => panic!("neither an answer nor a refusal within {WAIT:?}"),
        }
        let mut rest = Vec::new();
        if let Ok(Ok(n)) = tokio::time::timeout(
            WAIT,
            tokio::io::AsyncReadExt::read_to_end(&mut recv, &mut rest),
        )
        .await
        {
            if n > 0 {
                answers.push(format!("{n} raw bytes"));
            }
        }
    }
    let _ = tokio::time::timeout(WAIT, conn.closed()).await;
    (answers, conn.stats().frame_rx.stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_of_a_cluster_refuses_every_bad_client_and_sends_it_nothing() {
    let (dir, nodes) = real_cluster(2, 2).await;
    let scratch = tempfile::tempdir().unwrap();
    for (kind, ep) in bad_clients(dir.path(), scratch.path()) {
        for node in &nodes {
            assert_refused(Peer::connect(&ep, node.addr).await);
            let (answers, stream_frames) = raw_attempt(&ep, node.addr).await;
            assert!(
                answers.is_empty() && stream_frames == 0,
                "{kind} client got {answers:?} ({stream_frames} stream frames) from {}",
                node.id
            );
        }
    }
    // Members are still served by every node, and it was not for lack of data.
    let member = transport::client_endpoint(&Credentials::for_client(dir.path()).unwrap()).unwrap();
    for node in &nodes {
        let peer = Peer::connect(&member, node.addr).await.unwrap();
        match peer
            .call(&Request::Lookup {
                ids: vec![secret_id()],
            })
            .await
            .unwrap()
        {
            Response::Records(r) => assert!(r[0].is_some(), "{}", node.id),
            other => panic!("{other:?}"),
        }
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn stray_datagrams_get_no_more_back_than_they_sent() {
    let (_dir, nodes) = real_cluster(1, 2).await;
    let socket = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    // Garbage, a short-header packet for a connection that does not exist, and a long
    // header with an unknown QUIC version: none opens anything; whatever comes back
    // (a version negotiation, a stateless reset) is smaller than what was sent.
    let mut unknown_version = vec![0xc0, 0x0a, 0x0a, 0x0a, 0x0a, 8];
    unknown_version.extend_from_slice(&[1; 8]);
    unknown_version.push(8);
    unknown_version.extend_from_slice(&[2; 8]);
    unknown_version.resize(1200, 0);
    let probes: Vec<Vec<u8>> = vec![
        vec![0xff; 1200],
        {
            let mut p = vec![0x40];
            p.extend_from_slice(&[9; 1199]);
            p
        },
        unknown_version,
    ];
    for node in &nodes {
        for probe in &probes {
            socket.send_to(probe, node.addr).await.unwrap();
            let mut buf = vec![0u8; 65_536];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await
            {
                assert!(
                    n < probe.len(),
                    "{} answered {n} bytes to {}",
                    node.id,
                    probe.len()
                );
            }
        }
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_pushes_to_a_peer_without_a_cluster_certificate() {
    use mend_engine::route::{NodeEntry, PartitionRange, RouteList};
    // g1n2 in the route list is an impostor: a node certificate of another cluster.
    let dir = cluster(&["g1n1", "g1n2"]);
    let impostor_cluster = cluster(&["g1n2"]);
    let mut impostor = start_node(
        &Credentials::for_node(impostor_cluster.path(), "g1n2").unwrap(),
        "g1n2",
    );
    let half = |first, last| vec![PartitionRange { first, last }];
    RouteList {
        name: "test".into(),
        epoch: 1,
        nodes: vec![
            NodeEntry {
                id: "g1n1".into(),
                group: 1,
                addr: "127.0.0.1:0".into(),
                data_dir: PathBuf::from("data/g1n1"),
                partitions: half(0, 0x7fff),
            },
            NodeEntry {
                id: "g1n2".into(),
                group: 1,
                addr: impostor.addr.to_string(),
                data_dir: PathBuf::from("data/g1n2"),
                partitions: half(0x8000, 0xffff),
            },
        ],
    }
    .save(dir.path())
    .unwrap();
    let node = mend_engine::node::start(
        dir.path(),
        "g1n1",
        Arc::new(mend_engine::store::MemoryStore::new()),
    )
    .await
    .unwrap();
    let member = transport::client_endpoint(&Credentials::for_client(dir.path()).unwrap()).unwrap();
    let peer = Peer::connect(&member, node.addr).await.unwrap();
    write_secret(&peer).await;

    let version = mend_engine::Version::of_value(SECRET, 1, 0);
    let pushed = peer
        .call(&Request::Push {
            to: "g1n2".into(),
            items: vec![(secret_id(), wire::version_digest(&secret_id(), &version))],
        })
        .await;
    match pushed {
        Err(TransportError::Remote { source, .. }) => {
            assert_eq!(source.kind, ErrorKind::Unreachable, "{source}")
        }
        other => panic!("expected the push to be refused, got {other:?}"),
    }
    // The impostor's handshake failed: it never had a connection to read a value from.
    match impostor.next_seen().await {
        Seen::Refused(_) => {}
        other => panic!("the impostor saw {other:?}"),
    }
    node.shutdown().await;
}
