//! The storage node: one QUIC endpoint, one store, one group. Serves wire requests from its
//! store; every request on its own stream, handled concurrently up to a bound.
//!
//! What it must not do: trust a peer without a cluster certificate (the transport refuses
//! those), allocate more than [`crate::wire::MAX_FRAME`] per request frame, or let one bad
//! stream take down the connection or the node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

use crate::pki::Credentials;
use crate::reconcile::AnswerError;
use crate::route::{parse_addr, RouteError, RouteList, CLUSTER_FILE};
use crate::store::{PutItem, Store, StoreError, CHUNK_SIZE};
use crate::transport::{self, TransportError};
use crate::wire::{self, ErrorKind, RemoteError, Request, Response, WireError};
use crate::{Fingerprint, Id, IdRange};

/// Requests a node handles at once, across all connections; more wait for a permit
/// before a byte of them is read. With [`wire::MAX_FRAME`] this bounds the memory request
/// frames can make it hold (`tests/alloc_limits.rs` measures it).
pub const MAX_IN_FLIGHT: usize = 64;

/// Records per [`Response::Iterated`] batch.
pub const ITERATE_BATCH: usize = 1024;

/// Errors of starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The cluster file is missing, malformed or does not name this node.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The node's certificates are missing or unusable.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The endpoint could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Group commit: concurrent write batches are coalesced by one writer thread into a single
/// store call (one transaction per shard, up to these bounds), which amortizes redb's commit
/// and page writes.
/// Random ids make nearly every object dirty its own page of the version index until a
/// commit holds about as many objects as the index has leaf pages (some 34,000 at a million
/// keys), so large commits write far fewer pages per object: the store alone wrote 49k
/// objects/s in commits of 16,384 and 61k in commits of 65,536 (`write_throughput`), and
/// `mend load` went from 86k to 104k objects/s when these bounds went from 64 Ki objects /
/// 64 MiB to 128 Ki / 128 MiB. The price is up to this many bytes of values held by the
/// writer while it commits.
const COALESCE_ITEMS: usize = 128 * 1024;
const COALESCE_BYTES: usize = 128 << 20;

/// A write batch waiting for the writer thread, with where to send its outcomes.
type PendingBatch = (
    Vec<crate::wire::BatchItem>,
    tokio::sync::oneshot::Sender<Result<Vec<crate::store::PutOutcome>, String>>,
);

/// Starts the writer thread of `store`; it ends when every sender is gone.
fn start_writer(store: Arc<dyn Store>, node: &str) -> std::sync::mpsc::SyncSender<PendingBatch> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<PendingBatch>(MAX_IN_FLIGHT);
    let name = format!("mend-writer-{node}");
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                let (mut items, mut bytes) = (
                    group[0].0.len(),
                    group[0].0.iter().map(|i| i.value.len()).sum::<usize>(),
                );
                while items < COALESCE_ITEMS && bytes < COALESCE_BYTES {
                    match rx.try_recv() {
                        Ok(next) => {
                            items += next.0.len();
                            bytes += next.0.iter().map(|i| i.value.len()).sum::<usize>();
                            group.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let all: Vec<PutItem<'_>> = group
                    .iter()
                    .flat_map(|(batch, _)| {
                        batch.iter().map(|i| PutItem {
                            id: i.id,
                            version: i.version,
                            value: &i.value,
                        })
                    })
                    .collect();
                let result = store.put_batch(&all).map_err(|e| e.to_string());
                drop(all);
                let mut outcomes = result.map(Vec::into_iter);
                for (batch, reply) in group {
                    let mine = match &mut outcomes {
                        Ok(it) => Ok(it.by_ref().take(batch.len()).collect()),
                        Err(e) => Err(e.clone()),
                    };
                    let _ = reply.send(mine);
                }
            }
        })
        .expect("spawn the writer thread");
    tx
}

/// Hands `items` to the writer thread and waits for their outcomes.
async fn group_commit(
    writer: &std::sync::mpsc::SyncSender<PendingBatch>,
    items: Vec<crate::wire::BatchItem>,
) -> Result<Vec<crate::store::PutOutcome>, Failure> {
    let (reply, outcome) = tokio::sync::oneshot::channel();
    let writer = writer.clone();
    // The writer's queue is bounded; waiting for room happens off the async threads.
    let queued = tokio::task::spawn_blocking(move || writer.send((items, reply)).is_ok())
        .await
        .unwrap_or(false);
    match (queued, outcome.await) {
        (true, Ok(r)) => r.map_err(|e| Failure(ErrorKind::Storage, e)),
        _ => Err(Failure(
            ErrorKind::Storage,
            "the node's writer stopped".into(),
        )),
    }
}

/// What a node shares between its connections.
#[derive(Debug)]
struct NodeState {
    id: String,
    group: u32,
    store: Arc<dyn Store>,
    writer: std::sync::mpsc::SyncSender<PendingBatch>,
    cluster_dir: PathBuf,
    route: Mutex<(RouteList, Option<SystemTime>)>,
    in_flight: Arc<Semaphore>,
    /// Connections to other nodes, for pushes (with this node's own certificate).
    peers: transport::Pool,
    /// Pushes handled at once: each holds up to [`wire::MAX_PUSH_BYTES`] of values.
    pushing: Semaphore,
    options: NodeOptions,
    /// Connections past their handshake, and request streams accepted, since the start.
    connections: AtomicU64,
    streams: AtomicU64,
}

/// How a node treats its peers, beyond what the cluster dir says.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// How long a stream may take to deliver its whole request frame once it holds one of
    /// the [`MAX_IN_FLIGHT`] request slots. A peer that opens streams and stalls would
    /// otherwise hold every slot and leave every other client unserved; after this the
    /// stream is reset and its slot freed. Values streamed after the request (uploads) are
    /// not covered: they are read as the request's own work.
    pub request_read_timeout: std::time::Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            // An 8 MiB frame (the most a request can be) at 300 KB/s.
            request_read_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Pushes a node carries out at once.
const PUSHES_AT_ONCE: usize = 4;

/// A node serving on its endpoint until [`RunningNode::shutdown`].
#[derive(Debug)]
pub struct RunningNode {
    /// The node's id.
    pub id: String,
    /// The address it listens on (with the real port when configured with port 0).
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
    state: Arc<NodeState>,
}

/// What a node has taken in so far: for a caller (a test) that must know the node has
/// seen what a peer sent before it looks at what that cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Connections that completed the QUIC handshake, since the node started (each then
    /// waits for its Hello).
    pub connections: u64,
    /// Request streams accepted after a Hello, since the node started.
    pub streams: u64,
    /// Requests holding one of the [`MAX_IN_FLIGHT`] slots now.
    pub requests: usize,
}

impl RunningNode {
    /// What the node has taken in so far.
    pub fn activity(&self) -> Activity {
        Activity {
            connections: self.state.connections.load(Ordering::Relaxed),
            streams: self.state.streams.load(Ordering::Relaxed),
            requests: MAX_IN_FLIGHT - self.state.in_flight.available_permits(),
        }
    }

    /// Stops accepting, closes connections, and waits until the accept loop is done.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"node shutting down");
        self.endpoint.wait_idle().await;
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Opens the store of node `id` of the cluster in `cluster_dir` (redb in its data dir).
pub fn open_store(
    cluster_dir: &Path,
    route: &RouteList,
    id: &str,
) -> Result<Arc<dyn Store>, NodeError> {
    let entry = route.node(id)?;
    let dir = route.data_dir(cluster_dir, entry);
    std::fs::create_dir_all(&dir).map_err(|source| NodeError::DataDir {
        path: dir.clone(),
        source,
    })?;
    Ok(Arc::new(crate::store::RedbStore::open(
        &dir.join("store.redb"),
    )?))
}

/// Starts node `id` of the cluster in `cluster_dir` with `store`. When the route list gives
/// the node port 0, it binds a free port and records it in `cluster.toml` (under a lock, so
/// nodes started together do not lose each other's updates).
pub async fn start(
    cluster_dir: &Path,
    id: &str,
    store: Arc<dyn Store>,
) -> Result<RunningNode, NodeError> {
    start_with(cluster_dir, id, store, NodeOptions::default()).await
}

/// [`start`] with other [`NodeOptions`] than the defaults.
pub async fn start_with(
    cluster_dir: &Path,
    id: &str,
    store: Arc<dyn Store>,
    options: NodeOptions,
) -> Result<RunningNode, NodeError> {
    let route = RouteList::load(cluster_dir)?;
    let entry = route.node(id)?.clone();
    let creds = Credentials::for_node(cluster_dir, id)?;
    let bind = parse_addr(&entry.addr)?;
    let endpoint = transport::server_endpoint(bind, &creds)?;
    let addr = endpoint
        .local_addr()
        .map_err(|source| TransportError::Bind { addr: bind, source })?;
    let route = if bind.port() == 0 {
        record_address(cluster_dir, id, addr)?
    } else {
        route
    };
    let mtime = cluster_mtime(cluster_dir);
    let writer = start_writer(store.clone(), id);
    let state = Arc::new(NodeState {
        id: id.to_string(),
        group: entry.group,
        writer,
        store,
        cluster_dir: cluster_dir.to_path_buf(),
        route: Mutex::new((route, mtime)),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        peers: transport::Pool::new(transport::client_endpoint(&creds)?),
        pushing: Semaphore::new(PUSHES_AT_ONCE),
        options,
        connections: AtomicU64::new(0),
        streams: AtomicU64::new(0),
    });
    let task = tokio::spawn(accept_loop(endpoint.clone(), state.clone()));
    info!(node = id, %addr, "node serving");
    Ok(RunningNode {
        id: id.to_string(),
        addr,
        endpoint,
        task,
        state,
    })
}

/// How old `cluster.toml`'s mtime must be before a node trusts it to change with the next
/// save.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

/// The mtime of `cluster.toml` when it can be trusted to tell this version of the file from
/// the next, else `None` (which matches nothing, so the file is read again).
///
/// File systems stamp files from a coarse clock (a few ms; seconds on some), so two saves
/// in quick succession — nodes started together recording their ports one after the
/// other — can leave the same mtime, and a node comparing mtimes alone kept the first
/// file's route list for good, with port 0 for the nodes started after it (and so could
/// not push to them). As git does with "racily clean" files, a stamp younger than
/// [`RACY`] is not trusted.
fn cluster_mtime(dir: &Path) -> Option<SystemTime> {
    let mtime = std::fs::metadata(dir.join(CLUSTER_FILE))
        .and_then(|m| m.modified())
        .ok()?;
    let age = SystemTime::now().duration_since(mtime).unwrap_or_default();
    (age >= RACY).then_some(mtime)
}

/// Writes the port a node actually bound into `cluster.toml`, under an exclusive lock.
fn record_address(cluster_dir: &Path, id: &str, addr: SocketAddr) -> Result<RouteList, NodeError> {
    let lock_path = cluster_dir.join(".cluster.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|source| RouteError::Write {
        path: lock_path.clone(),
        source,
    })?;
    lock.lock().map_err(|source| RouteError::Write {
        path: lock_path,
        source,
    })?;
    let mut route = RouteList::load(cluster_dir)?;
    if let Some(n) = route.nodes.iter_mut().find(|n| n.id == id) {
        n.addr = addr.to_string();
    }
    route.save(cluster_dir)?;
    Ok(route)
}

async fn accept_loop(endpoint: quinn::Endpoint, state: Arc<NodeState>) {
    while let Some(incoming) = endpoint.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, state).await,
                // Refused handshakes (no cluster certificate, wrong CA) end here.
                Err(e) => debug!(%remote, "handshake refused: {e}"),
            }
        });
    }
}

async fn serve_connection(conn: quinn::Connection, state: Arc<NodeState>) {
    let remote = conn.remote_address();
    state.connections.fetch_add(1, Ordering::Relaxed);
    let epoch = state.route.lock().expect("route lock").0.epoch;
    if let Err(e) = transport::accept_hello(&conn, &state.id, state.group, epoch).await {
        warn!(%remote, "handshake failed: {e}");
        conn.close(1u32.into(), b"handshake failed");
        return;
    }
    loop {
        // The permit is taken by the stream, not by the loop waiting for one: a connection
        // idle between requests must not hold one, or as many idle connections as
        // MAX_IN_FLIGHT (pooled clients, peers that pushed once) left every other
        // connection unserved. Streams waiting for a permit are bounded by QUIC's limit of
        // concurrent streams per connection, and hold nothing read from them.
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(%remote, "connection ended: {e}");
                return;
            }
        };
        state.streams.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(_permit) = state.in_flight.clone().acquire_owned().await else {
                return;
            };
            serve_stream(send, recv, &state, remote).await;
        });
    }
}

/// A request failed: what to tell the peer.
struct Failure(ErrorKind, String);

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure(ErrorKind::Storage, e.to_string())
    }
}

impl From<AnswerError<StoreError>> for Failure {
    fn from(e: AnswerError<StoreError>) -> Self {
        match e {
            AnswerError::BadAsk { .. } => Failure(ErrorKind::BadRequest, e.to_string()),
            AnswerError::Source(e) => e.into(),
        }
    }
}

impl From<WireError> for Failure {
    fn from(e: WireError) -> Self {
        Failure(ErrorKind::Protocol, e.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure(ErrorKind::Protocol, e.to_string())
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    state: &NodeState,
    remote: SocketAddr,
) {
    let timeout = state.options.request_read_timeout;
    let read = tokio::time::timeout(timeout, wire::read_frame::<_, Request>(&mut recv)).await;
    let Ok(read) = read else {
        warn!(%remote, "no whole request frame within {timeout:?}; stream reset");
        let _ = recv.stop(1u32.into());
        let _ = send.reset(1u32.into());
        return;
    };
    let request = match read {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            // A malformed or oversized frame ends this stream, never the connection.
            warn!(%remote, "bad request frame: {e}");
            let _ = recv.stop(1u32.into());
            let _ = reply_error(&mut send, Failure(ErrorKind::Protocol, e.to_string())).await;
            return;
        }
    };
    let what = request.kind();
    if let Err(failure) = handle(request, &mut send, &mut recv, state).await {
        warn!(%remote, request = what, "request failed: {}", failure.1);
        let _ = recv.stop(1u32.into());
        let _ = reply_error(&mut send, failure).await;
        return;
    }
    let _ = send.finish();
}

async fn reply_error(send: &mut quinn::SendStream, failure: Failure) -> Result<(), WireError> {
    wire::write_frame(
        send,
        &Response::Error(RemoteError {
            kind: failure.0,
            message: failure.1,
        }),
    )
    .await?;
    let _ = send.finish();
    Ok(())
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static, E: Into<Failure> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(Failure(
            ErrorKind::Storage,
            format!("store task failed: {e}"),
        )),
    }
}

async fn handle(
    request: Request,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    state: &NodeState,
) -> Result<(), Failure> {
    let store = state.store.clone();
    let response = match request {
        Request::Hello { .. } => {
            return Err(Failure(
                ErrorKind::Protocol,
                "hello twice on one connection".into(),
            ))
        }
        Request::RouteList => Response::RouteList(current_route(state)),
        Request::Lookup { ids } => {
            if ids.len() > wire::MAX_LOOKUP {
                return Err(Failure(
                    ErrorKind::BadRequest,
                    format!(
                        "{} ids in one lookup, at most {}",
                        ids.len(),
                        wire::MAX_LOOKUP
                    ),
                ));
            }
            Response::Records(
                blocking(move || ids.iter().map(|id| store.lookup(id)).collect()).await?,
            )
        }
        Request::Iterate {
            range,
            since,
            user_flags,
        } => return iterate(send, store, range, since, user_flags).await,
        Request::Fingerprints { ranges, split } => {
            if split == 0 || ranges.len() * usize::from(split) > wire::MAX_FINGERPRINT_PARTS {
                return Err(Failure(
                    ErrorKind::BadRequest,
                    format!(
                        "{} ranges split {split} ways is out of bounds",
                        ranges.len()
                    ),
                ));
            }
            crate::reconcile::check_spanned(ranges.iter().map(IdRange::width).sum())
                .map_err(|why| Failure(ErrorKind::BadRequest, why))?;
            Response::Fingerprints(blocking(move || fingerprints(&*store, &ranges, split)).await?)
        }
        Request::Compare { tops, split, asks } => {
            let cost: usize = asks.iter().map(|a| wire::ask_cost(a, split)).sum();
            if cost > wire::COMPARE_BUDGET || tops.len() > wire::MAX_COMPARE_TOPS {
                return Err(Failure(
                    ErrorKind::BadRequest,
                    format!(
                        "{} asks costing {cost} over {} ranges, at most {} and {}",
                        asks.len(),
                        tops.len(),
                        wire::COMPARE_BUDGET,
                        wire::MAX_COMPARE_TOPS
                    ),
                ));
            }
            let round = crate::reconcile::Round { tops, split, asks };
            Response::Compared(blocking(move || compare(&*store, &round)).await?)
        }
        Request::Read { id } => return read_value(send, store, id).await,
        Request::Write { id, version } => {
            return write_value(send, recv, store, &state.writer, id, version).await
        }
        Request::WriteBatch { items } => {
            Response::BatchWritten(group_commit(&state.writer, items).await?)
        }
        Request::Remove { id, version } => {
            Response::Removed(blocking(move || store.remove_exact(&id, &version)).await?)
        }
        Request::Scrub {
            range,
            after,
            limit,
        } => {
            let limit = limit.clamp(1, wire::MAX_SCRUB_PAGE) as usize;
            Response::Scrubbed(
                blocking(move || crate::scrub::scrub_page(&*store, &range, after.as_ref(), limit))
                    .await?,
            )
        }
        Request::PushRoute { route } => push_route(state, route)?,
        Request::Push { to, items } => push(state, to, items).await?,
    };
    wire::write_frame(send, &response).await?;
    Ok(())
}

/// Copies `items` to node `to` as one write batch: each value read here, checked against
/// its checksum, and sent only if this node still holds exactly that version.
async fn push(
    state: &NodeState,
    to: String,
    items: Vec<(Id, wire::VersionDigest)>,
) -> Result<Response, Failure> {
    let bad = |why: String| Failure(ErrorKind::BadRequest, why);
    if items.len() > wire::MAX_PUSH_ITEMS {
        return Err(bad(format!(
            "{} items in one push, at most {}",
            items.len(),
            wire::MAX_PUSH_ITEMS
        )));
    }
    let dest = current_route(state)
        .node(&to)
        .map_err(|e| Failure(ErrorKind::Route, e.to_string()))?
        .clone();
    if dest.id == state.id {
        return Err(bad(format!("node {to} cannot push to itself")));
    }
    let _permit = state.pushing.acquire().await;
    let store = state.store.clone();
    let (mut outcomes, frame) = blocking(move || read_for_push(&*store, &items)).await?;
    if frame.is_empty() {
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.expect("no item in the batch"))
            .collect();
        return Ok(Response::Pushed { outcomes, bytes: 0 });
    }
    let unreachable = |why: String| {
        Failure(
            ErrorKind::Unreachable,
            format!("node {} cannot push to node {}: {why}", state.id, dest.id),
        )
    };
    let addr = parse_addr(&dest.addr).map_err(|e| unreachable(e.to_string()))?;
    let peer = state
        .peers
        .get(addr)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    // Its size is what this push reports as sent.
    let frame = frame.finish()?;
    let bytes = frame.len() as u64;
    let slots: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i].is_none())
        .collect();
    let written = match peer.call_frame(frame).await {
        Ok(Response::BatchWritten(w)) if w.len() == slots.len() => w,
        Ok(other) => {
            return Err(unreachable(format!(
                "it answered {} to a write batch",
                other.kind()
            )))
        }
        Err(e) => {
            state.peers.forget(addr);
            return Err(unreachable(e.to_string()));
        }
    };
    for (slot, outcome) in slots.into_iter().zip(written) {
        outcomes[slot] = Some(wire::PushOutcome::Put(outcome));
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.expect("every slot answered"))
        .collect();
    Ok(Response::Pushed { outcomes, bytes })
}

/// The write batch of `items` whose values can be pushed, read from the store straight
/// into the frame, and why each other item cannot be (`None`: in the batch, in order).
/// Values are read only while they keep the push within [`wire::MAX_PUSH_VALUE`] and
/// [`wire::MAX_PUSH_BYTES`].
fn read_for_push(
    store: &dyn Store,
    items: &[(Id, wire::VersionDigest)],
) -> Result<(Vec<Option<wire::PushOutcome>>, wire::BatchFrame), Failure> {
    // The records first, so that the frame is allocated once for the values it will hold.
    let mut out = Vec::with_capacity(items.len());
    let mut chosen = Vec::with_capacity(items.len());
    let mut total = 0u64;
    for (id, digest) in items {
        let held = store.lookup(id)?;
        let Some(record) = held.filter(|r| wire::version_digest(id, &r.version) == *digest) else {
            out.push(Some(wire::PushOutcome::SourceChanged));
            continue;
        };
        if record.corrupt {
            out.push(Some(wire::PushOutcome::Corrupt));
            continue;
        }
        let version = record.version;
        if version.size > wire::MAX_PUSH_VALUE || total + version.size > wire::MAX_PUSH_BYTES {
            out.push(Some(wire::PushOutcome::TooLarge));
            continue;
        }
        total += version.size;
        chosen.push((out.len(), *id, version));
        out.push(None);
    }
    /// Room for an item's id, version and value length in the frame.
    const ITEM_HEADER: usize = 160;
    let capacity = usize::try_from(total).unwrap_or(0) + chosen.len() * ITEM_HEADER;
    let mut frame = wire::BatchFrame::with_capacity(capacity);
    for (slot, id, version) in chosen {
        let len = if version.is_tombstone() {
            0
        } else {
            version.size
        };
        let mut refused = None;
        frame.push(&id, &version, len, |buf, start| {
            if len == 0 {
                return Ok(true);
            }
            let Some(mut reader) = store.open_value(&id)? else {
                refused = Some(wire::PushOutcome::SourceChanged);
                return Ok(false);
            };
            if reader.version() != version {
                refused = Some(wire::PushOutcome::SourceChanged);
                return Ok(false);
            }
            reader.read_to_end(buf)?;
            let value = &buf[start..];
            if value.len() as u64 != len || blake3::hash(value).as_bytes() != &version.checksum {
                refused = Some(wire::PushOutcome::Corrupt);
                return Ok(false);
            }
            Ok::<_, Failure>(true)
        })?;
        out[slot] = refused;
    }
    Ok((out, frame))
}

/// The route list in force, re-read from `cluster.toml` when the file changed (a pushed or
/// hand-edited list, or a peer that recorded its port).
fn current_route(state: &NodeState) -> RouteList {
    let mut guard = state.route.lock().expect("route lock");
    let mtime = cluster_mtime(&state.cluster_dir);
    if mtime.is_none() || mtime != guard.1 {
        match RouteList::load(&state.cluster_dir) {
            Ok(fresh) if fresh.epoch >= guard.0.epoch => *guard = (fresh, mtime),
            Ok(fresh) => warn!(
                "ignoring {CLUSTER_FILE}: epoch {} is older than {}",
                fresh.epoch, guard.0.epoch
            ),
            Err(e) => warn!("ignoring changed {CLUSTER_FILE}: {e}"),
        }
    }
    guard.0.clone()
}

fn push_route(state: &NodeState, route: RouteList) -> Result<Response, Failure> {
    let current = current_route(state);
    route
        .validate("pushed route list")
        .map_err(|e| Failure(ErrorKind::Route, e.to_string()))?;
    if route.epoch < current.epoch || (route.epoch == current.epoch && route != current) {
        return Err(Failure(
            ErrorKind::Route,
            format!(
                "pushed route list has epoch {}, this node is at epoch {}",
                route.epoch, current.epoch
            ),
        ));
    }
    route
        .save(&state.cluster_dir)
        .map_err(|e| Failure(ErrorKind::Storage, e.to_string()))?;
    let epoch = route.epoch;
    *state.route.lock().expect("route lock") = (route, cluster_mtime(&state.cluster_dir));
    info!(node = state.id, epoch, "route list updated");
    Ok(Response::RouteAccepted { epoch })
}

async fn iterate(
    send: &mut quinn::SendStream,
    store: Arc<dyn Store>,
    range: IdRange,
    since: Option<u64>,
    user_flags: Vec<u64>,
) -> Result<(), Failure> {
    let mut after: Option<Id> = None;
    let mut count = 0u64;
    loop {
        let page = {
            let store = store.clone();
            blocking(move || store.scan(&range, after.as_ref(), ITERATE_BATCH)).await?
        };
        let done = page.len() < ITERATE_BATCH;
        after = page.last().map(|(id, _)| *id);
        let batch: Vec<_> = page
            .into_iter()
            .filter(|(_, r)| since.is_none_or(|t| r.version.timestamp >= t))
            .filter(|(_, r)| {
                user_flags.is_empty() || user_flags.iter().any(|f| r.version.user_flags & f != 0)
            })
            .collect();
        count += batch.len() as u64;
        if !batch.is_empty() {
            wire::write_frame(send, &Response::Iterated(batch)).await?;
        }
        if done {
            break;
        }
    }
    wire::write_frame(send, &Response::End { count }).await?;
    Ok(())
}

/// Fingerprints of `ranges`, each cut into `split` equal parts of the id space, all but
/// the last part when `split` > 1 ([`crate::reconcile::parts_sent`]). Whole
/// partitions come from the maintained per-partition fingerprints; parts inside a
/// partition are computed from the versions (a partition holds few keys).
pub fn fingerprints(
    store: &dyn Store,
    ranges: &[IdRange],
    split: u16,
) -> Result<Vec<Fingerprint>, StoreError> {
    let sent = crate::reconcile::parts_sent(split);
    let mut out = Vec::with_capacity(ranges.len() * sent);
    for range in ranges {
        for part in crate::id::split_range(range, split).into_iter().take(sent) {
            out.push(range_fingerprint(store, &part)?);
        }
    }
    Ok(out)
}

/// The fingerprint of one range: whole partitions from the table, edges by scanning.
pub fn range_fingerprint(store: &dyn Store, range: &IdRange) -> Result<Fingerprint, StoreError> {
    let mut fp = Fingerprint::EMPTY;
    if range.is_empty() {
        return Ok(fp);
    }
    match crate::id::whole_partitions(range) {
        Some((first, last, edges)) => {
            for p in store.partition_fingerprints(first, last)? {
                fp.add(&p);
            }
            for edge in edges {
                fp.add(&scan_fingerprint(store, &edge)?);
            }
        }
        None => fp = scan_fingerprint(store, range)?,
    }
    Ok(fp)
}

/// Calls `f` on every record of `range`, in id order, a page at a time; fails once more
/// than `budget` records were visited in all.
fn for_each_record(
    store: &dyn Store,
    range: &IdRange,
    budget: &mut usize,
    mut f: impl FnMut(&Id, &crate::Record),
) -> Result<(), StoreError> {
    let mut after = None;
    loop {
        let page = store.scan(range, after.as_ref(), ITERATE_BATCH)?;
        *budget = budget
            .checked_sub(page.len())
            .ok_or(StoreError::LimitExceeded {
                what: "records listed in one request",
                limit: wire::MAX_LIST_ITEMS,
            })?;
        for (id, r) in &page {
            f(id, r);
        }
        if page.len() < ITERATE_BATCH {
            return Ok(());
        }
        after = page.last().map(|(id, _)| *id);
    }
}

/// A node's store as the source of a comparison's answers, visiting at most
/// [`wire::MAX_LIST_ITEMS`] items per request.
struct CompareSource<'a> {
    store: &'a dyn Store,
    budget: std::cell::Cell<usize>,
}

impl crate::reconcile::ItemSource for CompareSource<'_> {
    type Error = StoreError;

    fn fingerprint(&self, range: &IdRange) -> Result<Fingerprint, StoreError> {
        range_fingerprint(self.store, range)
    }

    fn for_each(
        &self,
        range: &IdRange,
        f: &mut dyn FnMut(&Id, &crate::Record),
    ) -> Result<(), StoreError> {
        let mut budget = self.budget.get();
        let visited = for_each_record(self.store, range, &mut budget, f);
        self.budget.set(budget);
        visited
    }
}

/// Answers one [`wire::Request::Compare`] from the store.
pub fn compare(
    store: &dyn Store,
    round: &crate::reconcile::Round,
) -> Result<Vec<crate::reconcile::CompareAnswer>, AnswerError<StoreError>> {
    let source = CompareSource {
        store,
        budget: std::cell::Cell::new(wire::MAX_LIST_ITEMS),
    };
    crate::reconcile::answer_round(&source, round)
}

fn scan_fingerprint(store: &dyn Store, range: &IdRange) -> Result<Fingerprint, StoreError> {
    let mut fp = Fingerprint::EMPTY;
    let mut unbounded = usize::MAX;
    for_each_record(store, range, &mut unbounded, |id, r| {
        fp.insert_record(id, r)
    })?;
    Ok(fp)
}

async fn read_value(
    send: &mut quinn::SendStream,
    store: Arc<dyn Store>,
    id: Id,
) -> Result<(), Failure> {
    let reader = {
        let store = store.clone();
        blocking(move || store.open_value(&id)).await?
    };
    let Some(mut reader) = reader else {
        wire::write_frame(send, &Response::NoValue { version: None }).await?;
        return Ok(());
    };
    let version = reader.version();
    if version.is_tombstone() {
        wire::write_frame(
            send,
            &Response::NoValue {
                version: Some(version),
            },
        )
        .await?;
        return Ok(());
    }
    wire::write_frame(send, &Response::Value { version }).await?;
    // A blocking reader feeds a channel of two chunks: bounded memory at any value size.
    let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, StoreError>>(2);
    tokio::task::spawn_blocking(move || loop {
        let next = reader.next_chunk();
        let stop = !matches!(next, Ok(Some(_)));
        let item = match next {
            Ok(Some(chunk)) => Ok(chunk),
            Ok(None) => break,
            Err(e) => Err(e),
        };
        if tx.blocking_send(item).is_err() || stop {
            break;
        }
    });
    let mut sent = 0u64;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk?;
        sent += chunk.len() as u64;
        send.write_all(&chunk)
            .await
            .map_err(|e| Failure(ErrorKind::Protocol, e.to_string()))?;
    }
    if sent != version.size {
        // The peer counts bytes; resetting tells it the value did not arrive whole.
        let _ = send.reset(2u32.into());
        return Err(Failure(
            ErrorKind::Storage,
            format!(
                "value of {id} has {sent} bytes, its version says {}",
                version.size
            ),
        ));
    }
    Ok(())
}

async fn write_value(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    store: Arc<dyn Store>,
    writer: &std::sync::mpsc::SyncSender<PendingBatch>,
    id: Id,
    version: crate::Version,
) -> Result<(), Failure> {
    // Refuse a stale write before its bytes cross the network.
    let stored = {
        let store = store.clone();
        blocking(move || store.lookup(&id)).await?
    };
    if !crate::store::accepts(stored.as_ref(), &version) {
        let stored = stored
            .expect("refused only when something is stored")
            .version;
        let _ = recv.stop(0u32.into());
        wire::write_frame(
            send,
            &Response::Written(crate::store::PutOutcome::Stale { stored }),
        )
        .await?;
        return Ok(());
    }
    let outcome = if version.size <= wire::SMALL_VALUE {
        let mut value = vec![0u8; version.size as usize];
        read_exact(recv, &mut value).await?;
        // Through the writer thread: concurrent small writes (a recovery run's copies)
        // share one transaction and one fsync.
        let item = crate::wire::BatchItem { id, version, value };
        group_commit(writer, vec![item]).await?.remove(0)
    } else {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
        let writer = tokio::task::spawn_blocking(move || {
            let mut upload = store.begin_upload(id, version)?;
            while let Some(chunk) = rx.blocking_recv() {
                upload.write(&chunk)?;
            }
            upload.commit()
        });
        let mut left = version.size;
        while left > 0 {
            let mut chunk = vec![0u8; CHUNK_SIZE.min(left as usize)];
            read_exact(recv, &mut chunk).await?;
            left -= chunk.len() as u64;
            if tx.send(chunk).await.is_err() {
                break; // the writer failed; its error is reported below
            }
        }
        drop(tx);
        match writer.await {
            Ok(r) => r?,
            Err(e) => {
                return Err(Failure(
                    ErrorKind::Storage,
                    format!("store task failed: {e}"),
                ))
            }
        }
    };
    wire::write_frame(send, &Response::Written(outcome)).await?;
    Ok(())
}

async fn read_exact(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), Failure> {
    recv.read_exact(buf).await.map(|_| ()).map_err(|e| {
        Failure(
            ErrorKind::Protocol,
            format!("value ended early or the stream failed: {e}"),
        )
    })
}

/// Runs every node of the cluster in `cluster_dir` in this process.
pub async fn start_all(
    cluster_dir: &Path,
    options: NodeOptions,
) -> Result<Vec<RunningNode>, NodeError> {
    let route = RouteList::load(cluster_dir)?;
    let mut nodes = Vec::new();
    for entry in &route.nodes {
        let store = open_store(cluster_dir, &route, &entry.id)?;
        nodes.push(start_with(cluster_dir, &entry.id, store, options.clone()).await?);
    }
    Ok(nodes)
}
