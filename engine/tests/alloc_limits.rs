//! Hostile frames cannot make a node allocate beyond its limits.
//!
//! The node runs in this process under a counting global allocator ([`PeakAlloc`]: current
//! and peak bytes over the system allocator); the attacker runs in a child process (this
//! same test binary, running [`attacker`]), so the attacker's own buffers are not counted
//! and what is measured is the node. Each test starts a node, connects an honest client,
//! takes the allocator's current bytes as the baseline, lets the attacker do its worst,
//! and asserts that the peak growth stays under a bound derived from the node's limits;
//! then the honest client must still be served, and the memory must come back.
//!
//! The limits the bounds come from: a frame is at most [`wire::MAX_FRAME`] bytes; a node
//! handles at most [`node::MAX_IN_FLIGHT`] requests at once; decoding a frame claims at
//! most `MAX_FRAME` bytes of containers (bincode's limit); and the payload buffer of a
//! frame grows with the bytes that actually arrived, never with the length a peer
//! announced. So:
//! - stalled length prefixes (any number of streams, and connections stalled before their
//!   Hello) cost nothing per stream beyond the connection's own state;
//! - a small frame whose bincode lengths claim huge containers is refused before anything
//!   is allocated for them (the claim cannot exceed a budget proportional to the frame);
//! - whole frames of `MAX_FRAME` bytes cost at most their payload plus what they decode
//!   to, per stream, plus QUIC's receive window of the connection.
//!
//! Tests take a lock: they share one allocator counter.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::join_all;
use mend_engine::node::{Activity, RunningNode, MAX_IN_FLIGHT};
use mend_engine::pki::Credentials;
use mend_engine::reconcile::{CompareAsk, ItemHashes, Located};
use mend_engine::route::RouteList;
use mend_engine::transport::{self, client_endpoint, Peer};
use mend_engine::wire::{self, BatchItem, ErrorKind, Request, Response, MAX_FRAME};
use mend_engine::{Id, Version};
use peak_alloc::PeakAlloc;
use tokio::io::{AsyncBufReadExt, BufReader};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// One measurement at a time: the counter is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;

/// The environment the child reads: which attack, the cluster dir, the node's address.
const ATTACK: &str = "MEND_ALLOC_ATTACK";
const CLUSTER: &str = "MEND_ALLOC_CLUSTER";
const ADDR: &str = "MEND_ALLOC_ADDR";

/// QUIC's per-connection receive window (see `transport_config`): data the node's QUIC
/// stack may buffer for one connection before the node reads it.
const RECEIVE_WINDOW: usize = 64 * MIB;

/// What a QUIC connection and its tasks may cost the node, handshake state included.
const PER_CONNECTION: usize = 512 << 10;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The honest client writes and reads back a value.
async fn served(peer: &Peer, key: &[u8]) {
    let id = Id::from_key(key);
    let version = Version::of_value(key, 1, 0);
    let (mut send, mut recv) = peer.open(&Request::Write { id, version }).await.unwrap();
    send.write_all(key).await.unwrap();
    let _ = send.finish();
    assert!(matches!(
        peer.next(&mut recv).await.unwrap(),
        Some(Response::Written(_))
    ));
    match peer.call(&Request::Lookup { ids: vec![id] }).await.unwrap() {
        Response::Records(r) => assert_eq!(r[0].unwrap().version, version),
        other => panic!("{other:?}"),
    }
}

/// Whether the node has taken in the whole attack: its activity at the start and now.
type Seen = fn(&Activity, &Activity) -> bool;

/// For attacks whose every frame the node answers: the attacker's "done" comes after the
/// answers, so the node has seen it all.
fn answered(_: &Activity, _: &Activity) -> bool {
    true
}

/// Runs the attack `name` from a child process against a fresh node and returns the peak
/// growth of the node's allocations while it ran; checks the honest client is served
/// afterwards and the memory comes back.
///
/// No timing is assumed: once the attacker says it is done, the node's [`Activity`] must
/// show it took in the whole attack (`seen`); the attacker then leaves, and the peak is
/// read once the honest client has been served again, when whatever the attack could make
/// the node allocate has been allocated (the peak only grows).
fn measure(name: &str, seen: Seen) -> usize {
    let _serial = serial();
    runtime().block_on(async {
        let (dir, node) = support::one_node("alloc").await;
        let peer = support::connect(dir.path(), node.addr).await;
        served(&peer, b"before").await;
        // The honest request's stream has let go of its slot.
        wait_for(&node, "the honest request to end", |a| a.requests == 0).await;
        let start = node.activity();

        ALLOC.reset_peak_usage();
        let base = ALLOC.current_usage();
        let exe = std::env::current_exe().unwrap();
        let mut child = tokio::process::Command::new(exe)
            .args(["--exact", "attacker", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(ATTACK, name)
            .env(CLUSTER, dir.path())
            .env(ADDR, node.addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // libtest's "test attacker ... " may precede it on the line.
                if let Some(at) = line.find("ATTACK ") {
                    return line[at + "ATTACK ".len()..].to_string();
                }
            }
            "the attacker ended without a word".to_string()
        })
        .await
        .expect("the attacker did not finish in time");
        assert_eq!(ready, "done", "attack {name}");
        wait_for(&node, "the node to take in the attack", |now| {
            seen(&start, now)
        })
        .await;

        // The attacker leaves: its connections close.
        drop(child.stdin.take());
        let status = child.wait().await.unwrap();
        assert!(status.success(), "attacker {name}: {status}");

        // The honest client is served, and the memory comes back.
        served(&peer, b"after").await;
        let growth = ALLOC.peak_usage().saturating_sub(base);
        let mut left = ALLOC.current_usage().saturating_sub(base);
        for _ in 0..50 {
            if left < 8 * MIB {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = ALLOC.current_usage().saturating_sub(base);
        }
        eprintln!(
            "{name}: peak growth {:.1} MiB, {:.1} MiB left after the attack",
            growth as f64 / MIB as f64,
            left as f64 / MIB as f64
        );
        assert!(
            left < 8 * MIB,
            "{name}: {left} bytes still held after the attack"
        );
        node.shutdown().await;
        growth
    })
}

/// Waits until the node's activity satisfies `done` (it changes as the node takes in what
/// peers send; there is nothing to be notified of).
async fn wait_for(node: &RunningNode, what: &str, done: impl Fn(&Activity) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = node.activity();
        if done(&now) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited a minute for {what}; the node's activity: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn assert_within(name: &str, growth: usize, bound: usize) {
    assert!(
        growth <= bound,
        "{name}: the node allocated {:.1} MiB at peak, its bound is {:.1} MiB",
        growth as f64 / MIB as f64,
        bound as f64 / MIB as f64
    );
}

/// Streams that announce the largest frame and send nothing more: twice the node's
/// request limit on one connection (`MAX_IN_FLIGHT` hold a request permit, the others wait
/// for one), and connections that stall on their first stream, before Hello. Before the
/// fix each announced frame was allocated up front: (64 + 16) × 8 MiB.
///
/// While the stalled streams hold every permit the node serves no one else (there is no
/// timeout on a request frame that has begun): the honest client is checked once the
/// attacker has gone. A member can stall a node that way; it cannot make it allocate.
#[test]
fn stalled_length_prefixes_cost_nothing_per_stream() {
    // Every stream and connection of the attack accepted, and the slots all taken.
    let growth = measure("stalled", |start, now| {
        now.streams - start.streams >= STALLED_STREAMS as u64
            && now.connections - start.connections >= (1 + HELLO_STALLS) as u64
            && now.requests == MAX_IN_FLIGHT
    });
    // The connections themselves (the attacker's 17, the honest one) and nothing per stream.
    assert_within(
        "stalled",
        growth,
        STALLED_CONNECTIONS * PER_CONNECTION + 4 * MIB,
    );
}

const STALLED_CONNECTIONS: usize = 1 + HELLO_STALLS + 1;
/// Streams stalled on the attacker's one request connection.
const STALLED_STREAMS: usize = 2 * MAX_IN_FLIGHT - 1;
const HELLO_STALLS: usize = 16;

/// Small frames whose bincode length fields claim containers of up to a whole frame (a
/// value, a list of items, of ids, a string, nested lists) or far more, each sent on many
/// streams at once, and as the first frame of new connections (before Hello). Each is
/// refused; the claims cannot make the node allocate for them.
#[test]
fn lying_length_fields_are_refused_without_allocating_what_they_claim() {
    let growth = measure("lying", answered);
    // Without the per-frame claim budget each of these allocated up to MAX_FRAME while it
    // was decoded: with two runtime threads decoding, 2 × 8 MiB and more at once.
    assert_within(
        "lying",
        growth,
        (1 + LYING_HELLOS) * PER_CONNECTION + 4 * MIB,
    );
}

const LYING_COPIES: usize = 24;
const LYING_HELLOS: usize = 8;

/// Whole frames of exactly `MAX_FRAME` bytes on several streams at once (each decodes to a
/// list of ids over the lookup limit, and is refused), and one announcing a byte more
/// (refused before a byte of it is read).
#[test]
fn whole_frames_at_the_limit_cost_at_most_their_size_per_stream() {
    let growth = measure("full", answered);
    // Per stream: the payload, grown as it arrives (the last doubling holds the old and
    // the new buffer: 1.5 × MAX_FRAME), then the ids it decodes to (MAX_FRAME) while the
    // payload is still held; plus QUIC's buffer of the connection.
    let bound = FULL_STREAMS * 5 * MAX_FRAME / 2 + RECEIVE_WINDOW + PER_CONNECTION + 4 * MIB;
    assert_within("full", growth, bound);
}

const FULL_STREAMS: usize = 8;

/// Many idle connections (twice the node's request limit) do not starve a new one: a
/// connection waiting for its next stream holds no request permit.
#[test]
fn idle_connections_do_not_starve_new_ones() {
    let growth = measure("idle", answered);
    assert_within(
        "idle",
        growth,
        (IDLE_CONNECTIONS + 1) * PER_CONNECTION + 4 * MIB,
    );
}

const IDLE_CONNECTIONS: usize = 2 * MAX_IN_FLIGHT;

// ---------------------------------------------------------------------------------------
// The attacker: a child process.

/// Not a test of its own: the attacker's half of the tests above, run by them in a child
/// process with the attack named in `MEND_ALLOC_ATTACK`. Says `ATTACK done` on stdout when
/// the attack is in place (or `ATTACK <what went wrong>`), then holds its connections open
/// until its stdin closes.
#[test]
#[ignore = "the attacker's half of the tests above, run by them in a child process"]
fn attacker() {
    let Ok(name) = std::env::var(ATTACK) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(CLUSTER).unwrap());
    let addr: SocketAddr = std::env::var(ADDR).unwrap().parse().unwrap();
    runtime().block_on(async {
        let ep = client_endpoint(&Credentials::for_client(&dir).unwrap()).unwrap();
        let held = match name.as_str() {
            "stalled" => stalled(&ep, addr).await,
            "lying" => lying(&ep, addr).await,
            "full" => full(&ep, addr).await,
            "idle" => idle(&ep, addr).await,
            other => Err(format!("no attack {other}")),
        };
        match &held {
            Ok(_) => println!("ATTACK done"),
            Err(why) => println!("ATTACK {why}"),
        }
        // Hold everything open until the parent has measured, then close the connections
        // (so the node frees them now, not after its idle timeout).
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await
        .unwrap();
        ep.close(0u32.into(), b"attack over");
        drop(held);
        let _ = tokio::time::timeout(Duration::from_secs(5), ep.wait_idle()).await;
    });
}

/// What an attack keeps open while the parent measures.
type Held = Vec<Box<dyn std::any::Any + Send>>;

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn payload_of(req: &Request) -> Vec<u8> {
    wire::encode_frame(req).unwrap()[4..].to_vec()
}

/// bincode's standard varint.
fn varint(n: u64) -> Vec<u8> {
    if n < 251 {
        vec![n as u8]
    } else if n <= u64::from(u16::MAX) {
        let mut v = vec![251];
        v.extend_from_slice(&(n as u16).to_le_bytes());
        v
    } else if n <= u64::from(u32::MAX) {
        let mut v = vec![252];
        v.extend_from_slice(&(n as u32).to_le_bytes());
        v
    } else {
        let mut v = vec![253];
        v.extend_from_slice(&n.to_le_bytes());
        v
    }
}

/// The variant byte of `req`'s encoding.
fn variant(req: &Request) -> u8 {
    payload_of(req)[0]
}

/// A probe: a fresh connection's lookup must be answered.
async fn probe(ep: &quinn::Endpoint, addr: SocketAddr) -> Result<Peer, String> {
    let attempt = async {
        let peer = Peer::connect(ep, addr).await.map_err(|e| e.to_string())?;
        match peer.call(&Request::Lookup { ids: vec![] }).await {
            Ok(Response::Records(_)) => Ok(peer),
            other => Err(format!("probe answered {other:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "the node did not answer a new connection".to_string())?
}

async fn stalled(ep: &quinn::Endpoint, addr: SocketAddr) -> Result<Held, String> {
    let mut held: Held = Vec::new();
    let prefix = (MAX_FRAME as u32).to_be_bytes();
    let hostile = Peer::connect(ep, addr).await.map_err(|e| e.to_string())?;
    for _ in 0..STALLED_STREAMS {
        let (mut send, recv) = hostile.conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&prefix).await.map_err(|e| e.to_string())?;
        held.push(Box::new((send, recv)));
    }
    for _ in 0..HELLO_STALLS {
        let conn = ep
            .connect(addr, transport::SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&prefix).await.map_err(|e| e.to_string())?;
        held.push(Box::new((conn, send, recv)));
    }
    held.push(Box::new(hostile));
    // No probe here: every request permit is held by a stalled stream (see the test).
    Ok(held)
}

/// Small frames claiming big containers: (what, payload).
fn lying_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let big = (MAX_FRAME - 1024) as u64;
    let mut out = Vec::new();

    // A write batch item whose value claims almost a whole frame.
    let mut p = payload_of(&Request::WriteBatch {
        items: vec![BatchItem {
            id: Id::MIN,
            version: Version::tombstone(1),
            value: vec![],
        }],
    });
    assert_eq!(p.pop(), Some(0), "the value's length is the last byte");
    p.extend(varint(big));
    out.push(("value", p));

    // A write batch claiming as many items as fit a frame's budget.
    let wb = variant(&Request::WriteBatch { items: vec![] });
    let mut p = vec![wb];
    p.extend(varint(
        (MAX_FRAME / std::mem::size_of::<BatchItem>() - 1) as u64,
    ));
    out.push(("items", p));

    // A lookup claiming a frame's worth of ids, and one claiming 2^60.
    let lookup = variant(&Request::Lookup { ids: vec![] });
    let mut p = vec![lookup];
    p.extend(varint((MAX_FRAME / std::mem::size_of::<Id>() - 1) as u64));
    out.push(("ids", p));
    let mut p = vec![lookup];
    p.extend(varint(1 << 60));
    out.push(("2^60 ids", p));

    // A route list whose name claims almost a whole frame.
    let pr = variant(&Request::PushRoute {
        route: RouteList {
            name: String::new(),
            epoch: 1,
            nodes: vec![],
        },
    });
    let mut p = vec![pr];
    p.extend(varint(big));
    out.push(("string", p));

    // Nested: half a frame of asks, the first of which claims the other half in hashes.
    let p = payload_of(&Request::Compare {
        tops: vec![],
        split: 8,
        asks: vec![CompareAsk::Records(
            Located {
                top: 0,
                path: vec![],
            },
            ItemHashes::Full(vec![]),
        )],
    });
    // variant, no tops, split 8, 1 ask: Records at top 0 with an empty (packed) path, 0
    // full hashes.
    assert_eq!(
        p[1..],
        [0, 8, 1, 4, 0, 0x80, 1, 0],
        "the layout patched below"
    );
    let outer = (MAX_FRAME / 2 / std::mem::size_of::<CompareAsk>()) as u64;
    let mut q = p[..3].to_vec();
    q.extend(varint(outer));
    q.extend_from_slice(&p[4..p.len() - 1]);
    q.extend(varint((MAX_FRAME / 2 / 8) as u64));
    out.push(("nested", q));

    // A push whose destination name claims almost a whole frame.
    let push = variant(&Request::Push {
        to: String::new(),
        items: vec![],
    });
    let mut p = vec![push];
    p.extend(varint(big));
    out.push(("push", p));
    out
}

/// Sends `frame` on a new stream of `conn` and expects a protocol error back.
async fn refused(conn: &quinn::Connection, frame: &[u8], what: &str) -> Result<(), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(frame).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    match wire::read_frame::<_, Response>(&mut recv).await {
        Ok(Some(Response::Error(e))) if e.kind == ErrorKind::Protocol => Ok(()),
        other => Err(format!("{what}: answered {other:?}")),
    }
}

/// Sends `frame` as the first frame of `conn`: the node answers with a protocol error or
/// closes the connection, and serves nothing on it.
async fn refused_before_hello(
    conn: &quinn::Connection,
    frame: &[u8],
    what: &str,
) -> Result<(), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(frame).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    match wire::read_frame::<_, Response>(&mut recv).await {
        Ok(Some(Response::Error(e))) if e.kind == ErrorKind::Protocol => Ok(()),
        Err(_) if conn.close_reason().is_some() => Ok(()),
        other => Err(format!("{what} before Hello: answered {other:?}")),
    }
}

async fn lying(ep: &quinn::Endpoint, addr: SocketAddr) -> Result<Held, String> {
    let payloads = lying_payloads();
    let hostile = Peer::connect(ep, addr).await.map_err(|e| e.to_string())?;
    let attempts = payloads.iter().flat_map(|(what, p)| {
        let frame = framed(p);
        let conn = hostile.conn.clone();
        (0..LYING_COPIES).map(move |_| {
            let (frame, conn) = (frame.clone(), conn.clone());
            async move { refused(&conn, &frame, what).await }
        })
    });
    join_all(attempts)
        .await
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;
    // As the first frame of a connection, where Hello is expected.
    let mut held: Held = Vec::new();
    for (what, p) in payloads.iter().cycle().take(LYING_HELLOS) {
        let conn = ep
            .connect(addr, transport::SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        refused_before_hello(&conn, &framed(p), what).await?;
        held.push(Box::new(conn));
    }
    held.push(Box::new(hostile));
    held.push(Box::new(probe(ep, addr).await?));
    Ok(held)
}

async fn full(ep: &quinn::Endpoint, addr: SocketAddr) -> Result<Held, String> {
    let hostile = Peer::connect(ep, addr).await.map_err(|e| e.to_string())?;
    // A lookup of exactly MAX_FRAME bytes: variant, a 5-byte length, 64 bytes per id.
    let n = (MAX_FRAME - 6) / std::mem::size_of::<Id>();
    let mut payload = vec![variant(&Request::Lookup { ids: vec![] })];
    payload.extend(varint(n as u64));
    payload.resize(MAX_FRAME - (MAX_FRAME - 6) % 64, 7);
    assert!(payload.len() <= MAX_FRAME);
    let frame = framed(&payload);
    let whole = (0..FULL_STREAMS).map(|_| {
        let (conn, frame) = (hostile.conn.clone(), frame.clone());
        async move {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            match wire::read_frame::<_, Response>(&mut recv).await {
                Ok(Some(Response::Error(e))) if e.kind == ErrorKind::BadRequest => Ok(()),
                other => Err(format!("a whole frame: answered {other:?}")),
            }
        }
    });
    join_all(whole)
        .await
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;
    // One byte over the limit: refused on its length alone.
    refused(
        &hostile.conn,
        &((MAX_FRAME + 1) as u32).to_be_bytes(),
        "over the limit",
    )
    .await?;
    Ok(vec![Box::new(hostile), Box::new(probe(ep, addr).await?)])
}

async fn idle(ep: &quinn::Endpoint, addr: SocketAddr) -> Result<Held, String> {
    let mut held: Held = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        held.push(Box::new(
            Peer::connect(ep, addr).await.map_err(|e| e.to_string())?,
        ));
    }
    held.push(Box::new(probe(ep, addr).await?));
    Ok(held)
}
