//! The client: bootstraps the route list from a node (or a cluster file) and reads and
//! writes objects in groups, through each id's owner.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// A copy pushed node to node failed as a whole.
    #[error("copy from node {from} to node {to} failed: {why}")]
    Push {
        /// The source node.
        from: String,
        /// The destination node.
        to: String,
        /// What went wrong.
        why: String,
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
    /// No node of a group could be reached for a write (owner and every hand-off node).
    #[error("group {group}: no node reachable: {tried}")]
    GroupUnreachable {
        /// The group.
        group: u32,
        /// Each node tried and why it failed.
        tried: String,
    },
    /// The owner of an id could not be reached and no other node of its group holds the
    /// id: whether it exists is unknown.
    #[error("group {group}: owner {owner} unreachable ({why}) and no other node of the group has the key")]
    OwnerUnreachable {
        /// The group.
        group: u32,
        /// The owner.
        owner: String,
        /// Why it could not be reached.
        why: String,
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
    /// Nodes a hand-off-aware operation found unreachable, with when and why: later ones
    /// skip them for [`DOWN_FOR`] instead of each waiting out a connect timeout.
    down: Mutex<HashMap<String, (Instant, String)>>,
}

/// How long a node found unreachable is skipped by hand-off-aware operations before it is
/// tried again.
pub const DOWN_FOR: Duration = Duration::from_secs(10);

/// Which node of a group served a hand-off-aware operation, and why it was not the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The group.
    pub group: u32,
    /// The owner of the id in the group.
    pub owner: String,
    /// The node that took the write or answered the read.
    pub node: String,
    /// Nodes tried first that could not be reached, each with why, in the order tried.
    pub unreachable: Vec<(String, String)>,
    /// A write (a hand-off when not the owner) rather than a read (a fallback).
    pub write: bool,
}

impl Served {
    /// Whether a node other than the owner served it.
    pub fn handed_off(&self) -> bool {
        self.node != self.owner
    }

    /// Whether the owner was tried and could not be reached.
    pub fn owner_unreachable(&self) -> bool {
        self.unreachable.iter().any(|(n, _)| *n == self.owner)
    }

    /// One line for the user when a node other than the owner served it, e.g. "group 1:
    /// owner g1n2 unreachable, handed off to g1n3".
    pub fn note(&self) -> Option<String> {
        if !self.handed_off() {
            return None;
        }
        let others: Vec<&str> = self
            .unreachable
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != self.owner)
            .collect();
        let also = if others.is_empty() {
            String::new()
        } else {
            format!(" ({} unreachable too)", others.join(", "))
        };
        let (g, owner, node) = (self.group, &self.owner, &self.node);
        Some(match (self.write, self.owner_unreachable()) {
            (true, _) => format!("group {g}: owner {owner} unreachable{also}, handed off to {node}"),
            (false, true) => format!("group {g}: owner {owner} unreachable{also}, read from {node}"),
            (false, false) => format!(
                "group {g}: owner {owner} has no copy{also}, read from {node} (a misplaced copy: `mend merge` moves it to its owner)"
            ),
        })
    }
}

/// Whether `e` says the node could not be connected to (as opposed to answering with an
/// error, or failing in the middle of a request).
fn is_connect_failure(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Transport(TransportError::Connect { .. }) | ClientError::NodeDown { .. }
    )
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
        Client::connect_with_timeout(creds, bootstrap, transport::CONNECT_TIMEOUT).await
    }

    /// Connects with `creds` and learns the route list; a node that does not answer a new
    /// connection within `timeout` is unreachable (and hand-offs move on to the next node).
    pub async fn connect_with_timeout(
        creds: &Credentials,
        bootstrap: Bootstrap,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let pool = Pool::with_connect_timeout(transport::client_endpoint(creds)?, timeout);
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
        Ok(Client {
            pool,
            route,
            down: Mutex::new(HashMap::new()),
        })
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

    /// Has `from` copy the exact versions `items` to `to`, node to node, in one write
    /// batch (see [`Request::Push`]): one outcome per item, and the bytes `from` sent.
    pub async fn push(
        &self,
        from: &NodeEntry,
        to: &NodeEntry,
        items: Vec<(Id, Version)>,
    ) -> Result<(Vec<crate::wire::PushOutcome>, u64), ClientError> {
        let src = self.peer(from).await?;
        let n = items.len();
        let request = Request::Push {
            to: to.id.clone(),
            items: items
                .iter()
                .map(|(id, v)| (*id, crate::wire::version_digest(id, v)))
                .collect(),
        };
        match src.call(&request).await? {
            Response::Pushed { outcomes, bytes } if outcomes.len() == n => Ok((outcomes, bytes)),
            other => Err(unexpected(&src, "push", &other)),
        }
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

/// Hand-offs: when the owner of an id cannot be reached, writes go to the next reachable
/// node of its group in route-list order ([`RouteList::candidates`]), and reads fall back
/// the same way. Such copies are misplaced; `mend merge` moves them to their owner.
impl Client {
    /// Writes `value` with `version` to the owner of `id` in `group`, or, when the owner
    /// cannot be reached, to the next reachable node of the group (a hand-off). Returns
    /// which node took it.
    pub async fn write_with_handoff(
        &self,
        group: u32,
        id: &Id,
        version: Version,
        value: ValueSource<'_>,
    ) -> Result<(Served, PutOutcome), ClientError> {
        let candidates = self.candidates(group, id)?;
        let mut unreachable = Vec::new();
        for node in &candidates {
            if let Some(why) = self.known_down(&node.id) {
                unreachable.push((node.id.clone(), why));
                continue;
            }
            match self.write_to(node, id, version, value).await {
                Ok(outcome) => {
                    let served = Served {
                        group,
                        owner: candidates[0].id.clone(),
                        node: node.id.clone(),
                        unreachable,
                        write: true,
                    };
                    return Ok((served, outcome));
                }
                Err(e) => self.count_unreachable(node, e, &mut unreachable).await?,
            }
        }
        Err(ClientError::GroupUnreachable {
            group,
            tried: unreachable
                .iter()
                .map(|(n, why)| format!("{n} ({why})"))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// Reads the value of `id` in `group` into `sink`, checking its checksum: from the
    /// owner; when the owner cannot be reached or has no record of the id, from the node of
    /// the group holding the newest healthy version of it (a hand-off copy). A tombstone on
    /// the owner answers (a delete is never undone by an older misplaced copy).
    ///
    /// Nothing is written to `sink` unless a value is being returned; a value that fails its
    /// checksum is an error (the sink then holds part of it).
    pub async fn read_with_fallback(
        &self,
        group: u32,
        id: &Id,
        sink: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(Served, ReadOutcome), ClientError> {
        let candidates = self.candidates(group, id)?;
        let owner = &candidates[0];
        let mut unreachable = Vec::new();
        match self.known_down(&owner.id) {
            Some(why) => unreachable.push((owner.id.clone(), why)),
            None => match self.read_from(owner, id, sink).await {
                Ok(ReadOutcome::Absent) => {}
                Ok(outcome) => {
                    return Ok((
                        self.served(group, owner, owner, unreachable, false),
                        outcome,
                    ))
                }
                Err(e) => self.count_unreachable(owner, e, &mut unreachable).await?,
            },
        }
        let found = self
            .fallback_records(&candidates[1..], id, &mut unreachable)
            .await;
        match newest(&found, false) {
            Some((node, record)) if record.version.is_tombstone() => {
                let outcome = ReadOutcome::Tombstone(record.version);
                Ok((self.served(group, owner, node, unreachable, false), outcome))
            }
            Some((node, _)) => {
                let outcome = self.read_from(node, id, sink).await?;
                Ok((self.served(group, owner, node, unreachable, false), outcome))
            }
            None => self
                .not_found(group, owner, unreachable)
                .map(|served| (served, ReadOutcome::Absent)),
        }
    }

    /// The record of `id` in `group`: the owner's; when the owner cannot be reached or has
    /// none, the newest (healthy first) held by another node of the group.
    pub async fn lookup_with_fallback(
        &self,
        group: u32,
        id: &Id,
    ) -> Result<(Served, Option<Record>), ClientError> {
        let candidates = self.candidates(group, id)?;
        let owner = &candidates[0];
        let mut unreachable = Vec::new();
        match self.known_down(&owner.id) {
            Some(why) => unreachable.push((owner.id.clone(), why)),
            None => match self.lookup_on(owner, &[*id]).await {
                Ok(records) => {
                    if let Some(record) = records.into_iter().next().flatten() {
                        let served = self.served(group, owner, owner, unreachable, false);
                        return Ok((served, Some(record)));
                    }
                }
                Err(e) => self.count_unreachable(owner, e, &mut unreachable).await?,
            },
        }
        let found = self
            .fallback_records(&candidates[1..], id, &mut unreachable)
            .await;
        match newest(&found, false).or_else(|| newest(&found, true)) {
            Some((node, record)) => Ok((
                self.served(group, owner, node, unreachable, false),
                Some(*record),
            )),
            None => self
                .not_found(group, owner, unreachable)
                .map(|served| (served, None)),
        }
    }

    /// The nodes to try for `id` in `group`, owner first.
    fn candidates(&self, group: u32, id: &Id) -> Result<Vec<NodeEntry>, ClientError> {
        self.route.check_groups(&[group])?;
        Ok(self
            .route
            .candidates(group, id)
            .into_iter()
            .cloned()
            .collect())
    }

    fn served(
        &self,
        group: u32,
        owner: &NodeEntry,
        node: &NodeEntry,
        unreachable: Vec<(String, String)>,
        write: bool,
    ) -> Served {
        Served {
            group,
            owner: owner.id.clone(),
            node: node.id.clone(),
            unreachable,
            write,
        }
    }

    /// Nothing found anywhere: absent if the owner said so, unknown if it was unreachable.
    fn not_found(
        &self,
        group: u32,
        owner: &NodeEntry,
        unreachable: Vec<(String, String)>,
    ) -> Result<Served, ClientError> {
        match unreachable.iter().find(|(n, _)| *n == owner.id) {
            Some((_, why)) => Err(ClientError::OwnerUnreachable {
                group,
                owner: owner.id.clone(),
                why: why.clone(),
            }),
            None => Ok(self.served(group, owner, owner, unreachable, false)),
        }
    }

    /// The records of `id` on `nodes`, asked at once; unreachable nodes are noted (and
    /// skipped), as are nodes that fail otherwise (their error is the reason).
    async fn fallback_records<'n>(
        &self,
        nodes: &'n [NodeEntry],
        id: &Id,
        unreachable: &mut Vec<(String, String)>,
    ) -> Vec<(&'n NodeEntry, Record)> {
        let asks = nodes.iter().map(|node| async move {
            if let Some(why) = self.known_down(&node.id) {
                return (node, Err(why));
            }
            match self.lookup_on(node, &[*id]).await {
                Ok(records) => (node, Ok(records.into_iter().next().flatten())),
                Err(e) => {
                    let why = e.to_string();
                    if self.confirm_unreachable(node, &e).await {
                        self.mark_down(&node.id, &why);
                    }
                    (node, Err(why))
                }
            }
        });
        let mut found = Vec::new();
        for (node, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(Some(record)) => found.push((node, record)),
                Ok(None) => {}
                Err(why) => unreachable.push((node.id.clone(), why)),
            }
        }
        found
    }

    /// Why `node` is being skipped, if a hand-off-aware operation found it unreachable in
    /// the last [`DOWN_FOR`].
    fn known_down(&self, node: &str) -> Option<String> {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        match down.get(node) {
            Some((since, why)) if since.elapsed() < DOWN_FOR => Some(why.clone()),
            Some(_) => {
                down.remove(node);
                None
            }
            None => None,
        }
    }

    fn mark_down(&self, node: &str, why: &str) {
        self.down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.to_string(), (Instant::now(), why.to_string()));
    }

    /// Whether `e` from `node` means the node cannot be reached: a failed connect, or a
    /// pooled connection that broke and cannot be made again.
    /// After a request to `node` failed with `e`: if the node really is unreachable, marks
    /// it down and adds it to `unreachable` (the caller falls back to the next node);
    /// otherwise the error stands.
    async fn count_unreachable(
        &self,
        node: &NodeEntry,
        e: ClientError,
        unreachable: &mut Vec<(String, String)>,
    ) -> Result<(), ClientError> {
        if !self.confirm_unreachable(node, &e).await {
            return Err(e);
        }
        let why = e.to_string();
        self.mark_down(&node.id, &why);
        unreachable.push((node.id.clone(), why));
        Ok(())
    }

    async fn confirm_unreachable(&self, node: &NodeEntry, e: &ClientError) -> bool {
        match e {
            _ if is_connect_failure(e) => true,
            ClientError::Transport(TransportError::Wire { addr, .. }) => {
                self.pool.forget(*addr);
                matches!(self.peer(node).await, Err(e) if is_connect_failure(&e))
            }
            _ => false,
        }
    }
}

/// The newest of `found` that is healthy (or, with `corrupt`, that is corrupt); the first
/// in route-list order on a tie.
fn newest<'a>(
    found: &'a [(&'a NodeEntry, Record)],
    corrupt: bool,
) -> Option<(&'a NodeEntry, &'a Record)> {
    let mut best: Option<(&NodeEntry, &Record)> = None;
    for (node, record) in found.iter().filter(|(_, r)| r.corrupt == corrupt) {
        if best.is_none_or(|(_, b)| record.version.is_newer_than(&b.version)) {
            best = Some((node, record));
        }
    }
    best
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
    /// Items a node other than their owner answered for, because the owner could not be
    /// reached (only with [`BatchWriter::with_handoff`]; counted in the above too).
    pub handed_off: u64,
}

/// What a [`BatchWriter`] did: counts, the first errors, and one line per hand-off route
/// ("group 1: owner g1n2 unreachable, handed off 120 items to g1n3").
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    /// The counts.
    pub stats: BatchStats,
    /// The first errors met.
    pub errors: Vec<String>,
    /// The hand-offs, by group, owner and the node that took the items.
    pub handoffs: Vec<String>,
}

/// A batch request under way: its node, items and what they were handed off from.
type BatchDone = (
    String,
    u64,
    BTreeMap<String, u64>,
    Result<Vec<(u64, PutOutcome)>, (ClientError, Vec<BatchItem>)>,
);

/// Writes many small values, batched per node and pipelined: up to `in_flight` requests
/// per node at once, each up to `batch_items` items and [`crate::wire::MAX_BATCH_BYTES`].
///
/// With [`BatchWriter::with_handoff`], a batch whose node cannot be reached is re-routed:
/// each item goes to the next reachable node of its group in route-list order (as
/// [`Client::write_with_handoff`] does), so a bulk load goes on with a node down.
pub struct BatchWriter<'c> {
    client: &'c Client,
    batch_items: usize,
    in_flight: usize,
    pending: BTreeMap<String, (Vec<BatchItem>, usize)>,
    running: tokio::task::JoinSet<BatchDone>,
    running_per_node: BTreeMap<String, usize>,
    stats: BatchStats,
    errors: Vec<String>,
    on_done: Box<dyn Fn(u64) + Send + Sync>,
    handoff: bool,
    /// Nodes this writer found unreachable, with why (hand-off only; never retried).
    down: BTreeMap<String, String>,
    /// Items of failed batches waiting for their next candidate, with their group.
    reroute: Vec<(u32, BatchItem)>,
    /// Items written away from their owner: (group, owner, node) → count.
    handoffs: BTreeMap<(u32, String, String), u64>,
}

impl std::fmt::Debug for BatchWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter")
            .field("stats", &self.stats)
            .field("handoff", &self.handoff)
            .field("down", &self.down)
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
            handoff: false,
            down: BTreeMap::new(),
            reroute: Vec::new(),
            handoffs: BTreeMap::new(),
        }
    }

    /// Hands items off when their node cannot be reached: each goes to the next reachable
    /// node of its group in route-list order. For client writes (`mend load`), never for
    /// recovery copies, which must land on the node they were meant for.
    pub fn with_handoff(mut self) -> Self {
        self.handoff = true;
        self
    }

    /// Queues `item` for `node`, sending a batch when one is full.
    pub async fn push(&mut self, node: &NodeEntry, item: BatchItem) -> Result<(), ClientError> {
        if self.handoff && self.down.contains_key(&node.id) {
            self.reroute.push((node.group, item));
        } else {
            self.enqueue(node, item).await?;
        }
        self.drain_reroute().await
    }

    async fn enqueue(&mut self, node: &NodeEntry, item: BatchItem) -> Result<(), ClientError> {
        let entry = self.pending.entry(node.id.clone()).or_default();
        entry.1 += item.value.len() + 160;
        entry.0.push(item);
        if entry.0.len() >= self.batch_items || entry.1 >= crate::wire::MAX_BATCH_BYTES {
            let (items, _) = self.pending.remove(&node.id).unwrap_or_default();
            self.send(node, items).await?;
        }
        Ok(())
    }

    /// Sends each re-routed item towards its next candidate not known to be down.
    async fn drain_reroute(&mut self) -> Result<(), ClientError> {
        while let Some((group, item)) = self.reroute.pop() {
            let next = self
                .client
                .route()
                .candidates(group, &item.id)
                .into_iter()
                .find(|n| !self.down.contains_key(&n.id))
                .cloned();
            match next {
                Some(node) => self.enqueue(&node, item).await?,
                None => {
                    self.stats.failed += 1;
                    (self.on_done)(1);
                    if self.errors.len() < 20 {
                        let down: Vec<String> = self
                            .client
                            .route()
                            .group(group)
                            .map(|n| n.id.clone())
                            .collect();
                        self.errors.push(format!(
                            "group {group}: no node reachable for {} ({} all down)",
                            item.id,
                            down.join(", ")
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn mark_down(&mut self, node: &NodeEntry, why: String) {
        tracing::warn!(
            node = node.id,
            "node unreachable, handing its items off: {why}"
        );
        self.client.mark_down(&node.id, &why);
        self.down.insert(node.id.clone(), why);
    }

    async fn send(&mut self, node: &NodeEntry, items: Vec<BatchItem>) -> Result<(), ClientError> {
        while self.running_per_node.get(&node.id).copied().unwrap_or(0) >= self.in_flight {
            self.reap_one().await;
        }
        if self.handoff && self.down.contains_key(&node.id) {
            self.reroute
                .extend(items.into_iter().map(|i| (node.group, i)));
            return Ok(());
        }
        let peer = match self.client.peer(node).await {
            Ok(p) => p,
            Err(e) if self.handoff && is_connect_failure(&e) => {
                self.mark_down(node, e.to_string());
                self.reroute
                    .extend(items.into_iter().map(|i| (node.group, i)));
                return Ok(());
            }
            Err(e) => {
                self.stats.failed += items.len() as u64;
                (self.on_done)(items.len() as u64);
                self.errors.push(format!("node {}: {e}", node.id));
                return Ok(());
            }
        };
        // Items written here for another owner: hand-offs, counted once the batch lands.
        let mut handed: BTreeMap<String, u64> = BTreeMap::new();
        if self.handoff {
            for item in &items {
                if let Some(owner) = self.client.route().owner_of(node.group, &item.id) {
                    if owner.id != node.id {
                        *handed.entry(owner.id.clone()).or_default() += 1;
                    }
                }
            }
        }
        *self.running_per_node.entry(node.id.clone()).or_default() += 1;
        let sizes: Vec<u64> = items.iter().map(|i| i.value.len() as u64).collect();
        let n = items.len() as u64;
        let node_id = node.id.clone();
        self.running.spawn(async move {
            let request = Request::WriteBatch { items };
            let result = match peer.call(&request).await {
                Ok(Response::BatchWritten(o)) if o.len() == sizes.len() => {
                    Ok(sizes.into_iter().zip(o).collect())
                }
                Ok(other) => Err(unexpected(&peer, "write-batch", &other)),
                Err(e) => Err(e.into()),
            };
            let result = result.map_err(|e| match request {
                Request::WriteBatch { items } => (e, items),
                _ => (e, Vec::new()),
            });
            (node_id, n, handed, result)
        });
        Ok(())
    }

    async fn reap_one(&mut self) {
        let Some(joined) = self.running.join_next().await else {
            return;
        };
        let (node, n, handed, result) = match joined {
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
                let group = self.client.route().node(&node).map_or(0, |n| n.group);
                for (owner, count) in handed {
                    self.stats.handed_off += count;
                    *self
                        .handoffs
                        .entry((group, owner, node.clone()))
                        .or_default() += count;
                }
            }
            Err((e, items)) => {
                // A batch that broke off in flight may or may not have landed: writing it
                // again elsewhere is safe (same versions; `mend merge` settles copies).
                let entry = self.client.route().node(&node).ok().cloned();
                let gone = match (&entry, &e) {
                    (Some(entry), ClientError::Transport(t))
                        if self.handoff && !matches!(t, TransportError::Remote { .. }) =>
                    {
                        self.client.confirm_unreachable(entry, &e).await
                    }
                    _ => false,
                };
                match entry {
                    Some(entry) if gone => {
                        self.mark_down(&entry, e.to_string());
                        self.reroute
                            .extend(items.into_iter().map(|i| (entry.group, i)));
                        return;
                    }
                    _ => {}
                }
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
    pub async fn finish(self) -> Result<(BatchStats, Vec<String>), ClientError> {
        let report = self.finish_report().await?;
        Ok((report.stats, report.errors))
    }

    /// Sends what is queued (re-routing what cannot reach its node, with hand-off) and
    /// waits for everything; returns the counts, the first errors and the hand-offs.
    pub async fn finish_report(mut self) -> Result<BatchReport, ClientError> {
        loop {
            self.drain_reroute().await?;
            let pending = std::mem::take(&mut self.pending);
            for (node_id, (items, _)) in pending {
                if items.is_empty() {
                    continue;
                }
                let node = self.client.route().node(&node_id)?.clone();
                self.send(&node, items).await?;
            }
            if !self.reroute.is_empty() || !self.pending.is_empty() {
                continue;
            }
            if self.running.is_empty() {
                break;
            }
            self.reap_one().await;
        }
        let handoffs = self
            .handoffs
            .iter()
            .map(|((group, owner, node), count)| {
                format!(
                    "group {group}: owner {owner} unreachable, handed off {count} items to {node}"
                )
            })
            .collect();
        Ok(BatchReport {
            stats: self.stats,
            errors: self.errors,
            handoffs,
        })
    }
}
