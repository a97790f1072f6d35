//! The client: bootstraps the route list from a node (or a cluster file) and reads and
//! writes objects in groups, through each id's owner.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::pki::Credentials;
use crate::route::{parse_addr, NodeEntry, RouteError, RouteList};
use crate::store::PutOutcome;
use crate::transport::{self, Peer, Pool, TransportError};
use crate::wire::{BatchItem, Request, Response};
use crate::{Id, Record, Version};

/// Errors of client operations.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Talking to a node failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The route list is unusable or lacks what was asked for.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A node answered something the request does not expect.
    #[error("node {node} answered {what} to a {request} request")]
    Unexpected {
        /// The node.
        node: String,
        /// The request.
        request: &'static str,
        /// The answer.
        what: String,
    },
    /// A value read does not match its version's checksum.
    #[error("value of {id} from node {node} fails its checksum: the copy is corrupt")]
    Corrupt {
        /// The object.
        id: Id,
        /// The node it came from.
        node: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The source of a copy no longer holds the version to copy (a newer write arrived).
    #[error("node {node} no longer holds the version of {id} to copy")]
    SourceChanged {
        /// The object.
        id: Id,
        /// The source node.
        node: String,
    },
    /// A node found unreachable earlier in this run.
    #[error("node {node} is unreachable ({why})")]
    NodeDown {
        /// The node.
        node: String,
        /// What happened when it was last tried.
        why: String,
    },
    /// The value stream from a node broke off.
    #[error("reading the value of {id} from node {node} failed: {message}")]
    ReadFailed {
        /// The object.
        id: Id,
        /// The node.
        node: String,
        /// What went wrong.
        message: String,
    },
}

/// Where a value to write comes from.
#[derive(Debug, Clone, Copy)]
pub enum ValueSource<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// A file, streamed (its version must already be computed, see [`version_of_file`]).
    File(&'a Path),
}

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A value was written to the sink; its checksum matched.
    Value(Version),
    /// The object is deleted.
    Tombstone(Version),
    /// The node has no record.
    Absent,
}

/// A connected client: the route list and a pool of connections to its nodes.
#[derive(Debug)]
pub struct Client {
    pool: Pool,
    route: RouteList,
}

/// Where a client learns the route list.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// Ask this node (`-r host:port`).
    Remote(SocketAddr),
    /// Use this route list (a local `cluster.toml`).
    Route(RouteList),
}

impl Client {
    /// Connects with `creds` and learns the route list.
    pub async fn connect(creds: &Credentials, bootstrap: Bootstrap) -> Result<Client, ClientError> {
        let pool = Pool::new(transport::client_endpoint(creds)?);
        let route = match bootstrap {
            Bootstrap::Route(route) => route,
            Bootstrap::Remote(addr) => {
                let peer = pool.get(addr).await?;
                match peer.call(&Request::RouteList).await? {
                    Response::RouteList(route) => {
                        route.validate(&format!("route list from {addr} ({})", peer.node))?;
                        route
                    }
                    other => return Err(unexpected(&peer, "route-list", &other)),
                }
            }
        };
        Ok(Client { pool, route })
    }

    /// The route list in use.
    pub fn route(&self) -> &RouteList {
        &self.route
    }

    /// The connection pool (shared by the engine's runs).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A connection to `node`.
    pub async fn peer(&self, node: &NodeEntry) -> Result<Peer, ClientError> {
        Ok(self.pool.get(parse_addr(&node.addr)?).await?)
    }

    /// The owner of `id` in `group`.
    pub fn owner(&self, group: u32, id: &Id) -> Result<&NodeEntry, ClientError> {
        self.route.check_groups(&[group])?;
        Ok(self
            .route
            .owner_of(group, id)
            .expect("a validated route list covers every partition"))
    }

    /// The records of `ids` on `node`, in order.
    pub async fn lookup_on(
        &self,
        node: &NodeEntry,
        ids: &[Id],
    ) -> Result<Vec<Option<Record>>, ClientError> {
        let peer = self.peer(node).await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(crate::wire::MAX_LOOKUP) {
            match peer
                .call(&Request::Lookup {
                    ids: chunk.to_vec(),
                })
                .await?
            {
                Response::Records(r) if r.len() == chunk.len() => out.extend(r),
                other => return Err(unexpected(&peer, "lookup", &other)),
            }
        }
        Ok(out)
    }

    /// The records of `ids` in `group`, each asked of its owner, in the order of `ids`.
    pub async fn lookup(&self, group: u32, ids: &[Id]) -> Result<Vec<Option<Record>>, ClientError> {
        let mut by_owner: BTreeMap<&str, (&NodeEntry, Vec<usize>)> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            let owner = self.owner(group, id)?;
            by_owner
                .entry(owner.id.as_str())
                .or_insert((owner, Vec::new()))
                .1
                .push(i);
        }
        let mut out = vec![None; ids.len()];
        for (owner, positions) in by_owner.values() {
            let asked: Vec<Id> = positions.iter().map(|&i| ids[i]).collect();
            for (i, record) in positions.iter().zip(self.lookup_on(owner, &asked).await?) {
                out[*i] = record;
            }
        }
        Ok(out)
    }

    /// Writes `value` with `version` to the owner of `id` in `group`.
    pub async fn write(
        &self,
        group: u32,
        id: &Id,
        version: Version,
        value: ValueSource<'_>,
    ) -> Result<(String, PutOutcome), ClientError> {
        let node = self.owner(group, id)?.clone();
        let outcome = self.write_to(&node, id, version, value).await?;
        Ok((node.id, outcome))
    }

    /// Writes `value` with `version` to `node`, streaming it.
    pub async fn write_to(
        &self,
        node: &NodeEntry,
        id: &Id,
        version: Version,
        value: ValueSource<'_>,
    ) -> Result<PutOutcome, ClientError> {
        let peer = self.peer(node).await?;
        let (mut send, mut recv) = peer.open(&Request::Write { id: *id, version }).await?;
        let sent = match value {
            ValueSource::Bytes(bytes) => send.write_all(bytes).await.map_err(|e| e.to_string()),
            ValueSource::File(path) => stream_file(path, &mut send).await?,
        };
        write_outcome(&peer, send, &mut recv, sent).await
    }

    /// Copies `version` of `id` from node `from` to node `to`: the value streams through
    /// in chunks of at most `chunk` bytes (bounded memory at any size), its checksum is
    /// verified on the way, and the write carries the version, so `to` refuses it if it
    /// holds a newer one.
    pub async fn copy(
        &self,
        from: &NodeEntry,
        to: &NodeEntry,
        id: &Id,
        version: Version,
        chunk: usize,
    ) -> Result<PutOutcome, ClientError> {
        let dst = self.peer(to).await?;
        if version.is_tombstone() || version.size == 0 {
            let (send, mut recv) = dst.open(&Request::Write { id: *id, version }).await?;
            return write_outcome(&dst, send, &mut recv, Ok(())).await;
        }
        let src = self.peer(from).await?;
        let (mut rsend, mut rrecv) = src.open(&Request::Read { id: *id }).await?;
        let _ = rsend.finish();
        match src.next(&mut rrecv).await? {
            Some(Response::Value { version: held }) if held == version => {}
            Some(Response::Value { .. }) | Some(Response::NoValue { .. }) => {
                return Err(ClientError::SourceChanged {
                    id: *id,
                    node: from.id.clone(),
                })
            }
            Some(other) => return Err(unexpected(&src, "read", &other)),
            None => return Err(unexpected_end(&src, "read")),
        }
        let (mut wsend, mut wrecv) = dst.open(&Request::Write { id: *id, version }).await?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![
            0u8;
            chunk
                .clamp(4096, crate::store::CHUNK_SIZE)
                .min(version.size as usize)
        ];
        let mut left = version.size;
        let mut sent = Ok(());
        while left > 0 {
            let want = buf.len().min(left as usize);
            rrecv
                .read_exact(&mut buf[..want])
                .await
                .map_err(|e| ClientError::ReadFailed {
                    id: *id,
                    node: from.id.clone(),
                    message: format!("after {} bytes: {e}", version.size - left),
                })?;
            hasher.update(&buf[..want]);
            left -= want as u64;
            if left == 0 && hasher.finalize().as_bytes() != &version.checksum {
                // Never let a corrupt value reach another replica.
                let _ = wsend.reset(3u32.into());
                return Err(ClientError::Corrupt {
                    id: *id,
                    node: from.id.clone(),
                });
            }
            if let Err(e) = wsend.write_all(&buf[..want]).await {
                sent = Err(e.to_string());
                break;
            }
        }
        write_outcome(&dst, wsend, &mut wrecv, sent).await
    }

    /// Writes small values (and tombstones) to `node` in one request.
    pub async fn write_batch(
        &self,
        node: &NodeEntry,
        items: Vec<BatchItem>,
    ) -> Result<Vec<PutOutcome>, ClientError> {
        let peer = self.peer(node).await?;
        let n = items.len();
        match peer.call(&Request::WriteBatch { items }).await? {
            Response::BatchWritten(outcomes) if outcomes.len() == n => Ok(outcomes),
            other => Err(unexpected(&peer, "write-batch", &other)),
        }
    }

    /// Reads the value of `id` from the owner in `group` into `sink`, checking its checksum.
    pub async fn read(
        &self,
        group: u32,
        id: &Id,
        sink: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(String, ReadOutcome), ClientError> {
        let node = self.owner(group, id)?.clone();
        let outcome = self.read_from(&node, id, sink).await?;
        Ok((node.id, outcome))
    }

    /// Reads the value of `id` from `node` into `sink`, checking its checksum.
    pub async fn read_from(
        &self,
        node: &NodeEntry,
        id: &Id,
        sink: &mut (impl AsyncWrite + Unpin),
    ) -> Result<ReadOutcome, ClientError> {
        let peer = self.peer(node).await?;
        let (mut send, mut recv) = peer.open(&Request::Read { id: *id }).await?;
        let _ = send.finish();
        let version = match peer.next(&mut recv).await? {
            Some(Response::Value { version }) => version,
            Some(Response::NoValue { version: Some(v) }) => return Ok(ReadOutcome::Tombstone(v)),
            Some(Response::NoValue { version: None }) => return Ok(ReadOutcome::Absent),
            Some(other) => return Err(unexpected(&peer, "read", &other)),
            None => return Err(unexpected_end(&peer, "read")),
        };
        let failed = |message: String| ClientError::ReadFailed {
            id: *id,
            node: peer.node.clone(),
            message,
        };
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; crate::store::CHUNK_SIZE.min(version.size as usize).max(1)];
        let mut left = version.size;
        while left > 0 {
            let want = buf.len().min(left as usize);
            recv.read_exact(&mut buf[..want])
                .await
                .map_err(|e| failed(format!("after {} bytes: {e}", version.size - left)))?;
            hasher.update(&buf[..want]);
            sink.write_all(&buf[..want])
                .await
                .map_err(|e| failed(format!("writing the value out: {e}")))?;
            left -= want as u64;
        }
        sink.flush()
            .await
            .map_err(|e| failed(format!("writing the value out: {e}")))?;
        if hasher.finalize().as_bytes() != &version.checksum {
            return Err(ClientError::Corrupt {
                id: *id,
                node: peer.node.clone(),
            });
        }
        Ok(ReadOutcome::Value(version))
    }
}

async fn stream_file(
    path: &Path,
    send: &mut quinn::SendStream,
) -> Result<Result<(), String>, ClientError> {
    let io = |source| ClientError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut buf = vec![0u8; crate::store::CHUNK_SIZE];
    loop {
        let n = file.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Ok(Ok(()));
        }
        if let Err(e) = send.write_all(&buf[..n]).await {
            return Ok(Err(e.to_string()));
        }
    }
}

/// The version of a file's contents at `timestamp`, reading it once with bounded memory.
pub fn version_of_file(
    path: &Path,
    timestamp: u64,
    user_flags: u64,
) -> Result<Version, ClientError> {
    let io = |source| ClientError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::open(path).map_err(io)?;
    let size = std::io::copy(
        &mut std::io::BufReader::with_capacity(1 << 20, file),
        &mut hasher,
    )
    .map_err(io)?;
    Ok(Version {
        timestamp,
        size,
        checksum: *hasher.finalize().as_bytes(),
        user_flags,
        flags: 0,
    })
}

/// Ends a write: finishes the send side (if all was sent) and reads the node's outcome. A
/// node may refuse a stale write before reading its bytes; its answer then explains a
/// failed send.
async fn write_outcome(
    peer: &Peer,
    mut send: quinn::SendStream,
    recv: &mut quinn::RecvStream,
    sent: Result<(), String>,
) -> Result<PutOutcome, ClientError> {
    if sent.is_ok() {
        let _ = send.finish();
    }
    match peer.next(recv).await {
        Ok(Some(Response::Written(outcome))) => Ok(outcome),
        Ok(Some(other)) => Err(unexpected(peer, "write", &other)),
        Ok(None) => Err(ClientError::Unexpected {
            node: peer.node.clone(),
            request: "write",
            what: format!("nothing ({})", sent.err().unwrap_or_default()),
        }),
        Err(e) => Err(e.into()),
    }
}

fn unexpected(peer: &Peer, request: &'static str, answer: &Response) -> ClientError {
    let what = format!("{answer:?}");
    ClientError::Unexpected {
        node: peer.node.clone(),
        request,
        what: what.chars().take(120).collect(),
    }
}

fn unexpected_end(peer: &Peer, request: &'static str) -> ClientError {
    ClientError::Unexpected {
        node: peer.node.clone(),
        request,
        what: "an empty stream".into(),
    }
}

/// Counts of a batched write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Items stored.
    pub written: u64,
    /// Items refused because the node holds a version at least as new.
    pub stale: u64,
    /// Items refused because the value did not match its checksum.
    pub mismatched: u64,
    /// Items whose request failed (node unreachable, stream broken).
    pub failed: u64,
    /// Value bytes sent in items that were stored.
    pub bytes: u64,
}

/// Writes many small values, batched per node and pipelined: up to `in_flight` requests
/// per node at once, each up to `batch_items` items and [`crate::wire::MAX_BATCH_BYTES`].
pub struct BatchWriter<'c> {
    client: &'c Client,
    batch_items: usize,
    in_flight: usize,
    pending: BTreeMap<String, (Vec<BatchItem>, usize)>,
    running: tokio::task::JoinSet<(String, u64, Result<Vec<(u64, PutOutcome)>, ClientError>)>,
    running_per_node: BTreeMap<String, usize>,
    stats: BatchStats,
    errors: Vec<String>,
    on_done: Box<dyn Fn(u64) + Send + Sync>,
}

impl std::fmt::Debug for BatchWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'c> BatchWriter<'c> {
    /// A writer through `client`; `on_done(n)` is called as each batch of n items completes.
    pub fn new(
        client: &'c Client,
        batch_items: usize,
        in_flight: usize,
        on_done: Box<dyn Fn(u64) + Send + Sync>,
    ) -> Self {
        BatchWriter {
            client,
            batch_items: batch_items.max(1),
            in_flight: in_flight.max(1),
            pending: BTreeMap::new(),
            running: tokio::task::JoinSet::new(),
            running_per_node: BTreeMap::new(),
            stats: BatchStats::default(),
            errors: Vec::new(),
            on_done,
        }
    }

    /// Queues `item` for `node`, sending a batch when one is full.
    pub async fn push(&mut self, node: &NodeEntry, item: BatchItem) -> Result<(), ClientError> {
        let entry = self.pending.entry(node.id.clone()).or_default();
        entry.1 += item.value.len() + 160;
        entry.0.push(item);
        if entry.0.len() >= self.batch_items || entry.1 >= crate::wire::MAX_BATCH_BYTES {
            let (items, _) = self.pending.remove(&node.id).unwrap_or_default();
            self.send(node, items).await?;
        }
        Ok(())
    }

    async fn send(&mut self, node: &NodeEntry, items: Vec<BatchItem>) -> Result<(), ClientError> {
        while self.running_per_node.get(&node.id).copied().unwrap_or(0) >= self.in_flight {
            self.reap_one().await;
        }
        let peer = match self.client.peer(node).await {
            Ok(p) => p,
            Err(e) => {
                self.stats.failed += items.len() as u64;
                (self.on_done)(items.len() as u64);
                self.errors.push(format!("node {}: {e}", node.id));
                return Ok(());
            }
        };
        *self.running_per_node.entry(node.id.clone()).or_default() += 1;
        let sizes: Vec<u64> = items.iter().map(|i| i.value.len() as u64).collect();
        let n = items.len() as u64;
        let node_id = node.id.clone();
        self.running.spawn(async move {
            let result = match peer.call(&Request::WriteBatch { items }).await {
                Ok(Response::BatchWritten(o)) if o.len() == sizes.len() => {
                    Ok(sizes.into_iter().zip(o).collect())
                }
                Ok(other) => Err(unexpected(&peer, "write-batch", &other)),
                Err(e) => Err(e.into()),
            };
            (node_id, n, result)
        });
        Ok(())
    }

    async fn reap_one(&mut self) {
        let Some(joined) = self.running.join_next().await else {
            return;
        };
        let (node, n, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                self.errors.push(format!("a batch task failed: {e}"));
                return;
            }
        };
        if let Some(c) = self.running_per_node.get_mut(&node) {
            *c -= 1;
        }
        match result {
            Ok(outcomes) => {
                for (size, o) in outcomes {
                    match o {
                        PutOutcome::Written => {
                            self.stats.written += 1;
                            self.stats.bytes += size;
                        }
                        PutOutcome::Stale { .. } => self.stats.stale += 1,
                        PutOutcome::ChecksumMismatch => self.stats.mismatched += 1,
                    }
                }
            }
            Err(e) => {
                self.stats.failed += n;
                if self.errors.len() < 20 {
                    self.errors.push(format!("node {node}: {e}"));
                }
            }
        }
        (self.on_done)(n);
    }

    /// Sends what is queued and waits for everything; returns the counts and the first
    /// errors met.
    pub async fn finish(mut self) -> Result<(BatchStats, Vec<String>), ClientError> {
        let pending = std::mem::take(&mut self.pending);
        for (node_id, (items, _)) in pending {
            if items.is_empty() {
                continue;
            }
            let node = self.client.route().node(&node_id)?.clone();
            self.send(&node, items).await?;
        }
        while !self.running.is_empty() {
            self.reap_one().await;
        }
        Ok((self.stats, self.errors))
    }
}
