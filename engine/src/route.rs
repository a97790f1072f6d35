//! The route list: which node of each group owns which partitions, read from and written
//! to `cluster.toml`, served by every node and bootstrapped by clients from any `-r`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::id::{Id, IdRange};

/// An inclusive range of partitions, written `"0000-7fff"` in `cluster.toml`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Encode, Decode)]
pub struct PartitionRange {
    /// First partition.
    pub first: u16,
    /// Last partition (inclusive).
    pub last: u16,
}

impl PartitionRange {
    /// The id range these partitions cover.
    pub fn ids(&self) -> IdRange {
        IdRange::partitions(self.first, self.last)
    }

    /// Number of partitions in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Always false: a range holds at least one partition.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `partition` lies in the range.
    pub fn contains(&self, partition: u16) -> bool {
        (self.first..=self.last).contains(&partition)
    }
}

impl fmt::Display for PartitionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}-{:04x}", self.first, self.last)
    }
}

impl std::str::FromStr for PartitionRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("partition range {s:?} is not FIRST-LAST in hex"))?;
        let parse = |x: &str| {
            u16::from_str_radix(x.trim(), 16)
                .map_err(|_| format!("partition {x:?} in {s:?} is not a 16-bit hex number"))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first > last {
            return Err(format!("partition range {s:?} ends before it starts"));
        }
        Ok(PartitionRange { first, last })
    }
}

impl Serialize for PartitionRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PartitionRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One node as the route list knows it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, Encode, Decode)]
pub struct NodeEntry {
    /// Unique name, e.g. `g1n2`.
    pub id: String,
    /// The replica group it belongs to (≥ 1).
    pub group: u32,
    /// Where it listens (`host:port`).
    pub addr: String,
    /// Its data directory, relative to the cluster dir unless absolute.
    pub data_dir: PathBuf,
    /// The partitions it owns.
    pub partitions: Vec<PartitionRange>,
}

/// The whole route list: every node of every group, and an epoch that orders changes.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, Encode, Decode)]
pub struct RouteList {
    /// The cluster's name.
    pub name: String,
    /// Grows with every change; nodes refuse a route list older than theirs.
    pub epoch: u64,
    /// Every node, grouped by nothing in particular (see [`RouteList::group`]).
    #[serde(rename = "node")]
    pub nodes: Vec<NodeEntry>,
}

/// Why a route list is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The cluster file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The cluster file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The cluster file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The cluster file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The cluster file is not valid TOML for a route list.
    #[error("{path} is malformed: {message}")]
    Parse {
        /// The cluster file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The route list parsed but breaks a rule (coverage, unique ids, …).
    #[error("{origin}: {message}")]
    Invalid {
        /// Where the route list came from (a file, a peer).
        origin: String,
        /// The rule broken.
        message: String,
    },
    /// A group was asked for that the route list does not have.
    #[error("unknown group {group}: the route list has groups {known}")]
    UnknownGroup {
        /// The group asked for.
        group: u32,
        /// The groups there are.
        known: String,
    },
    /// A node was asked for that the route list does not have.
    #[error("unknown node {0:?}: give a node id or its address from the route list")]
    UnknownNode(String),
    /// An address could not be parsed or resolved.
    #[error("bad address {addr:?}: {message}")]
    Address {
        /// The text given.
        addr: String,
        /// What is wrong.
        message: String,
    },
    /// A node to add has the id of a node already in the route list.
    #[error("node {0:?} is already in the route list")]
    DuplicateNode(String),
    /// A node to add (or a survivor) has the address of another node.
    #[error("address {addr} is already node {node}'s")]
    DuplicateAddress {
        /// The address.
        addr: String,
        /// The node listening there.
        node: String,
    },
    /// The change would leave a group without nodes, so without its copy of the data.
    #[error(
        "removing node {node} would leave group {group} with no nodes (every group holds a \
         full copy): add another node to group {group} first"
    )]
    LastNode {
        /// The node to remove.
        node: String,
        /// Its group.
        group: u32,
    },
    /// A group would have more nodes than there are partitions to give them.
    #[error("group {group} would have {nodes} nodes, more than the 65536 partitions")]
    TooManyNodes {
        /// The group.
        group: u32,
        /// Its node count.
        nodes: usize,
    },
    /// A recovery file (the surviving node list) is malformed or breaks a rule.
    #[error("recovery file {path}: {message}")]
    Recovery {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line and column or the entry and field.
        message: String,
    },
}

/// The name of the cluster file in a cluster dir.
pub const CLUSTER_FILE: &str = "cluster.toml";

impl RouteList {
    /// Reads and validates `DIR/cluster.toml`.
    pub fn load(cluster_dir: &Path) -> Result<RouteList, RouteError> {
        let path = cluster_dir.join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| RouteError::Read {
            path: path.clone(),
            source,
        })?;
        let route: RouteList = toml::from_str(&text).map_err(|e| RouteError::Parse {
            path: path.clone(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        route.validate(&path.display().to_string())?;
        Ok(route)
    }

    /// Writes `DIR/cluster.toml` atomically (temp file, fsync, rename).
    pub fn save(&self, cluster_dir: &Path) -> Result<(), RouteError> {
        let path = cluster_dir.join(CLUSTER_FILE);
        let text = format!(
            "# mend cluster file: the route list. Written by mend; partitions are inclusive hex ranges.\n{}",
            toml::to_string(self).expect("a route list always serializes")
        );
        // A temp file of its own: nodes sharing a cluster dir (one machine, tests) may
        // save at the same moment, and must not rename each other's temp file away.
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = tempfile::Builder::new()
                .prefix(&format!(".{CLUSTER_FILE}."))
                .suffix(".tmp")
                .tempfile_in(cluster_dir)?;
            f.write_all(text.as_bytes())?;
            f.as_file().sync_all()?;
            f.persist(&path).map(|_| ()).map_err(|e| e.error)
        };
        write().map_err(|source| RouteError::Write { path, source })
    }

    /// Checks the rules: at least one node; unique ids; groups ≥ 1; parseable addresses;
    /// in every group the nodes' partitions cover all 65,536 partitions exactly once.
    pub fn validate(&self, origin: &str) -> Result<(), RouteError> {
        let invalid = |message: String| RouteError::Invalid {
            origin: origin.to_string(),
            message,
        };
        if self.nodes.is_empty() {
            return Err(invalid("the route list has no nodes".into()));
        }
        let mut ids = BTreeSet::new();
        for node in &self.nodes {
            if node.id.is_empty() || !ids.insert(node.id.as_str()) {
                return Err(invalid(format!(
                    "node id {:?} is empty or repeated",
                    node.id
                )));
            }
            if node.group == 0 {
                return Err(invalid(format!(
                    "node {} has group 0; groups start at 1",
                    node.id
                )));
            }
            parse_addr(&node.addr).map_err(|e| invalid(format!("node {}: {e}", node.id)))?;
        }
        for group in self.groups() {
            let mut ranges: Vec<(PartitionRange, &str)> = self
                .group(group)
                .flat_map(|n| n.partitions.iter().map(move |r| (*r, n.id.as_str())))
                .collect();
            ranges.sort();
            let mut next: u32 = 0;
            for (r, node) in &ranges {
                if u32::from(r.first) < next {
                    return Err(invalid(format!(
                        "group {group}: partitions {r} of node {node} overlap another node's"
                    )));
                }
                if u32::from(r.first) > next {
                    return Err(invalid(format!(
                        "group {group}: partitions {:04x}-{:04x} have no owner",
                        next,
                        r.first - 1
                    )));
                }
                next = u32::from(r.last) + 1;
            }
            if next != crate::id::PARTITIONS {
                return Err(invalid(format!(
                    "group {group}: partitions {next:04x}-ffff have no owner"
                )));
            }
        }
        Ok(())
    }

    /// The groups, in order.
    pub fn groups(&self) -> BTreeSet<u32> {
        self.nodes.iter().map(|n| n.group).collect()
    }

    /// The nodes of `group`, in route-list order.
    pub fn group(&self, group: u32) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.iter().filter(move |n| n.group == group)
    }

    /// Checks that every group in `groups` exists.
    pub fn check_groups(&self, groups: &[u32]) -> Result<(), RouteError> {
        let known = self.groups();
        for g in groups {
            if !known.contains(g) {
                return Err(RouteError::UnknownGroup {
                    group: *g,
                    known: known
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                });
            }
        }
        Ok(())
    }

    /// The node of `group` that owns `partition`.
    pub fn owner(&self, group: u32, partition: u16) -> Option<&NodeEntry> {
        self.group(group)
            .find(|n| n.partitions.iter().any(|r| r.contains(partition)))
    }

    /// The node of `group` that owns `id`.
    pub fn owner_of(&self, group: u32, id: &Id) -> Option<&NodeEntry> {
        self.owner(group, id.partition())
    }

    /// The nodes of `group` to try for `id`: its owner first, then the others in route-list
    /// order (the hand-off order when the owner is down).
    pub fn candidates(&self, group: u32, id: &Id) -> Vec<&NodeEntry> {
        let owner = self.owner_of(group, id);
        owner
            .into_iter()
            .chain(self.group(group).filter(|n| Some(*n) != owner))
            .collect()
    }

    /// Finds a node by id or by address.
    pub fn node(&self, name: &str) -> Result<&NodeEntry, RouteError> {
        let by_addr = parse_addr(name).ok();
        self.nodes
            .iter()
            .find(|n| n.id == name || (by_addr.is_some() && parse_addr(&n.addr).ok() == by_addr))
            .ok_or_else(|| RouteError::UnknownNode(name.to_string()))
    }

    /// Cuts the id space into ranges whose owner is the same in every group of `groups`
    /// ("elementary ranges"), each with its owners in group order.
    pub fn elementary_ranges(&self, groups: &[u32]) -> Vec<(PartitionRange, Vec<&NodeEntry>)> {
        let mut cuts = BTreeSet::new();
        cuts.insert(0u32);
        for g in groups {
            for n in self.group(*g) {
                for r in &n.partitions {
                    cuts.insert(u32::from(r.first));
                    cuts.insert(u32::from(r.last) + 1);
                }
            }
        }
        cuts.insert(crate::id::PARTITIONS);
        let cuts: Vec<u32> = cuts.into_iter().collect();
        cuts.windows(2)
            .filter_map(|w| {
                let range = PartitionRange {
                    first: u16::try_from(w[0]).ok()?,
                    last: u16::try_from(w[1] - 1).ok()?,
                };
                let owners = groups
                    .iter()
                    .map(|g| self.owner(*g, range.first))
                    .collect::<Option<Vec<_>>>()?;
                Some((range, owners))
            })
            .collect()
    }

    /// Partitions each node owns, counted: a quick view of balance.
    pub fn partition_counts(&self) -> BTreeMap<&str, u32> {
        self.nodes
            .iter()
            .map(|n| {
                (
                    n.id.as_str(),
                    n.partitions.iter().map(PartitionRange::len).sum(),
                )
            })
            .collect()
    }

    /// The data directory of `node`, resolved against the cluster dir.
    pub fn data_dir(&self, cluster_dir: &Path, node: &NodeEntry) -> PathBuf {
        cluster_dir.join(&node.data_dir)
    }
}

/// One surviving node, as an operator lists it in a recovery file (after Dkron's
/// `raft/peers.json`).
///
/// The file is JSON — an array of these objects — unless its name ends in `.toml`, in which
/// case it is TOML with one `[[node]]` table per survivor:
///
/// ```json
/// [
///   {"id": "g1n1", "group": 1, "addr": "10.0.0.1:1025"},
///   {"id": "g1n3", "group": 1, "addr": "10.0.0.9:1025", "data_dir": "/srv/mend/g1n3"},
///   {"id": "g2n1", "group": 2, "address": "10.0.1.1:1025"}
/// ]
/// ```
///
/// `addr` may be spelled `address` (as in `peers.json`); `data_dir` is optional (default:
/// the node's data dir in the old route list, or `data/<id>` for a node it does not have).
/// Unknown fields are refused, so a typo is an error rather than a silently ignored field.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Survivor {
    /// The node's id.
    pub id: String,
    /// Its replica group (must be a group of the route list).
    pub group: u32,
    /// Where it listens now (`host:port`).
    #[serde(alias = "address")]
    pub addr: String,
    /// Its data directory, relative to the cluster dir unless absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// The TOML spelling of a recovery file: `[[node]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SurvivorsToml {
    node: Vec<Survivor>,
}

/// Route-list changes. Each returns a new, validated route list with the epoch one higher
/// and leaves `self` alone; nothing here touches a file except reading a recovery file.
///
/// Partitions move between nodes as whole ranges, as few as possible: every node of a group
/// ends with its fair share (65,536 / n, the remainder going to the nodes that held the
/// most), keeping what it owned up to that share (see [`balance`]).
impl RouteList {
    /// Adds node `id` to `group`, listening at `addr` with its data in `data_dir` (default
    /// `data/<id>`); it takes a fair share of partitions from the other nodes of the group.
    /// It joins the route list after the group's last node (so it comes last in hand-off
    /// order).
    pub fn add_node(
        &self,
        group: u32,
        id: &str,
        addr: &str,
        data_dir: Option<PathBuf>,
    ) -> Result<RouteList, RouteError> {
        self.check_groups(&[group])?;
        if self.nodes.iter().any(|n| n.id == id) {
            return Err(RouteError::DuplicateNode(id.to_string()));
        }
        self.check_address_free(addr, None)?;
        let mut next = self.clone();
        let at = next
            .nodes
            .iter()
            .rposition(|n| n.group == group)
            .map_or(next.nodes.len(), |i| i + 1);
        next.nodes.insert(
            at,
            NodeEntry {
                id: id.to_string(),
                group,
                addr: addr.to_string(),
                data_dir: data_dir.unwrap_or_else(|| default_data_dir(id)),
                partitions: Vec::new(),
            },
        );
        next.rebalance_group(group, &[])?;
        next.finish_change("the route list with node added")
    }

    /// Removes node `name` (an id or an address); its partitions are spread over the rest of
    /// its group. Refused if it is the group's last node.
    pub fn remove_node(&self, name: &str) -> Result<RouteList, RouteError> {
        let node = self.node(name)?;
        if self.group(node.group).count() == 1 {
            return Err(RouteError::LastNode {
                node: node.id.clone(),
                group: node.group,
            });
        }
        let (id, group, freed) = (node.id.clone(), node.group, node.partitions.clone());
        let mut next = self.clone();
        next.nodes.retain(|n| n.id != id);
        next.rebalance_group(group, &freed)?;
        next.finish_change("the route list with node removed")
    }

    /// Splits every group's partitions evenly over its nodes, keeping as much of each node's
    /// ownership as possible.
    pub fn rebalance(&self) -> Result<RouteList, RouteError> {
        let mut next = self.clone();
        for group in self.groups() {
            next.rebalance_group(group, &[])?;
        }
        next.finish_change("the rebalanced route list")
    }

    /// Rebuilds the route list from a recovery file listing the surviving nodes (format:
    /// [`Survivor`]). Nodes not listed are dropped; each group's partitions are split evenly
    /// over its survivors, which keep what they owned up to their share (a group that lost
    /// no node keeps its ranges as they are); a survivor keeps
    /// its data dir unless the file gives one. Every group must keep at least one node, and
    /// survivors may not change group. A malformed file is an error naming the file and the
    /// line, or the entry and field.
    pub fn from_recovery_file(&self, path: &Path) -> Result<RouteList, RouteError> {
        let text = std::fs::read_to_string(path).map_err(|source| RouteError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |message: String| RouteError::Recovery {
            path: path.to_path_buf(),
            message,
        };
        let survivors = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str::<SurvivorsToml>(&text)
                .map_err(|e| bad(e.to_string().trim().replace('\n', " ")))?
                .node
        } else {
            serde_json::from_str::<Vec<Survivor>>(&text).map_err(|e| {
                let hint = if e.to_string().contains("expected a sequence") {
                    " (expected a JSON array like [{\"id\": \"g1n1\", \"group\": 1, \"addr\": \"127.0.0.1:1025\"}])"
                } else {
                    ""
                };
                bad(format!("{e}{hint}"))
            })?
        };
        self.from_survivors(&survivors).map_err(|e| match e {
            RouteError::Invalid { message, .. } => bad(message),
            RouteError::Address { addr, message } => {
                bad(format!("bad address {addr:?}: {message}"))
            }
            other => bad(other.to_string()),
        })
    }

    /// Rebuilds the route list from the surviving nodes (see [`RouteList::from_recovery_file`]).
    pub fn from_survivors(&self, survivors: &[Survivor]) -> Result<RouteList, RouteError> {
        let invalid = |message: String| RouteError::Invalid {
            origin: "surviving node list".into(),
            message,
        };
        if survivors.is_empty() {
            return Err(invalid("lists no nodes".into()));
        }
        let groups = self.groups();
        let known = groups
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<NodeEntry> = Vec::with_capacity(survivors.len());
        for (i, s) in survivors.iter().enumerate() {
            let entry = |what: String| invalid(format!("entry {} ({:?}): {what}", i + 1, s.id));
            if s.id.is_empty() {
                return Err(entry("field `id` is empty".into()));
            }
            if nodes.iter().any(|n| n.id == s.id) {
                return Err(entry("the id is listed twice".into()));
            }
            if !groups.contains(&s.group) {
                return Err(entry(format!(
                    "field `group`: group {} is not in the route list (groups {known})",
                    s.group
                )));
            }
            let old = self.nodes.iter().find(|n| n.id == s.id);
            if let Some(old) = old.filter(|o| o.group != s.group) {
                return Err(entry(format!(
                    "field `group`: the node is in group {} in the route list, not {}",
                    old.group, s.group
                )));
            }
            let at = parse_addr(&s.addr).map_err(|e| entry(format!("field `addr`: {e}")))?;
            if at.port() != 0 {
                if let Some(other) = nodes.iter().find(|n| parse_addr(&n.addr).ok() == Some(at)) {
                    return Err(entry(format!(
                        "field `addr`: {} is also node {}'s",
                        s.addr, other.id
                    )));
                }
            }
            nodes.push(NodeEntry {
                id: s.id.clone(),
                group: s.group,
                addr: s.addr.clone(),
                data_dir: s
                    .data_dir
                    .clone()
                    .or_else(|| old.map(|o| o.data_dir.clone()))
                    .unwrap_or_else(|| default_data_dir(&s.id)),
                partitions: old.map(|o| o.partitions.clone()).unwrap_or_default(),
            });
        }
        for group in &groups {
            if !nodes.iter().any(|n| n.group == *group) {
                return Err(invalid(format!(
                    "group {group} has no surviving node: list at least one node of every group \
                     (the route list has groups {known}); a group without nodes would lose its copy"
                )));
            }
        }
        let mut next = RouteList {
            name: self.name.clone(),
            epoch: self.epoch,
            nodes,
        };
        for group in groups {
            // A group that lost or gained no node keeps its ranges: moving its data would
            // gain nothing for the recovery (`rebalance` evens it out if wanted).
            let before: BTreeSet<&str> = self.group(group).map(|n| n.id.as_str()).collect();
            let after: BTreeSet<&str> = next.group(group).map(|n| n.id.as_str()).collect();
            if before == after {
                continue;
            }
            let freed: Vec<PartitionRange> = self
                .group(group)
                .filter(|old| !after.contains(old.id.as_str()))
                .flat_map(|old| old.partitions.iter().copied())
                .collect();
            next.rebalance_group(group, &freed)?;
        }
        next.finish_change("the recovered route list")
    }

    /// What changed from `self` to `other`, one line each, for a before/after display:
    /// the epoch, nodes added and removed, addresses and data dirs changed, partition ranges
    /// that change owner (with counts), and each node's partition count before and after.
    pub fn diff(&self, other: &RouteList) -> Vec<String> {
        let mut out = Vec::new();
        if self.name != other.name {
            out.push(format!("cluster name {:?} -> {:?}", self.name, other.name));
        }
        out.push(format!("epoch {} -> {}", self.epoch, other.epoch));
        let find = |list: &'_ RouteList, id: &str| list.nodes.iter().position(|n| n.id == id);
        for n in &other.nodes {
            match find(self, &n.id).map(|i| &self.nodes[i]) {
                None => out.push(format!(
                    "add node {}: group {}, address {}, data dir {}",
                    n.id,
                    n.group,
                    n.addr,
                    n.data_dir.display()
                )),
                Some(old) => {
                    if old.group != n.group {
                        out.push(format!("node {}: group {} -> {}", n.id, old.group, n.group));
                    }
                    if old.addr != n.addr {
                        out.push(format!("node {}: address {} -> {}", n.id, old.addr, n.addr));
                    }
                    if old.data_dir != n.data_dir {
                        out.push(format!(
                            "node {}: data dir {} -> {}",
                            n.id,
                            old.data_dir.display(),
                            n.data_dir.display()
                        ));
                    }
                }
            }
        }
        for n in &self.nodes {
            if find(other, &n.id).is_none() {
                out.push(format!(
                    "remove node {}: group {}, address {}",
                    n.id, n.group, n.addr
                ));
            }
        }
        let before_groups = self.groups();
        let after_groups = other.groups();
        for group in before_groups.union(&after_groups) {
            match (before_groups.contains(group), after_groups.contains(group)) {
                (false, _) => out.push(format!("add group {group}")),
                (_, false) => out.push(format!("remove group {group}")),
                _ => {
                    let mut moved = 0;
                    for (range, from, to) in moves(self, other, *group) {
                        moved += range.len();
                        out.push(format!(
                            "group {group}: partitions {range} ({}) move {from} -> {to}",
                            range.len()
                        ));
                    }
                    if moved > 0 {
                        out.push(format!(
                            "group {group}: {moved} of {} partitions change owner ({:.1}%)",
                            crate::id::PARTITIONS,
                            f64::from(moved) * 100.0 / f64::from(crate::id::PARTITIONS)
                        ));
                    }
                }
            }
        }
        let before = self.partition_counts();
        let after = other.partition_counts();
        let mut seen = BTreeSet::new();
        for n in other.nodes.iter().chain(&self.nodes) {
            let (a, b) = (before.get(n.id.as_str()), after.get(n.id.as_str()));
            if a != b && seen.insert(n.id.as_str()) {
                out.push(format!(
                    "node {}: {} -> {} partitions",
                    n.id,
                    a.copied().unwrap_or(0),
                    b.copied().unwrap_or(0)
                ));
            }
        }
        out
    }

    /// Whether `other` differs from `self` in anything but the epoch.
    pub fn same_apart_from_epoch(&self, other: &RouteList) -> bool {
        self.name == other.name && self.nodes == other.nodes
    }

    /// Refuses `addr` if it is unparseable or another node (other than `except`) listens
    /// there. Port 0 (the node picks a port when it first starts) is never a clash.
    fn check_address_free(&self, addr: &str, except: Option<&str>) -> Result<(), RouteError> {
        let at = parse_addr(addr)?;
        if at.port() == 0 {
            return Ok(());
        }
        match self
            .nodes
            .iter()
            .filter(|n| Some(n.id.as_str()) != except)
            .find(|n| parse_addr(&n.addr).ok() == Some(at))
        {
            Some(n) => Err(RouteError::DuplicateAddress {
                addr: addr.to_string(),
                node: n.id.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Re-splits `group` over its nodes, handing out `free` (partitions of nodes that left)
    /// along with what nodes above their share give up.
    fn rebalance_group(&mut self, group: u32, free: &[PartitionRange]) -> Result<(), RouteError> {
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].group == group)
            .collect();
        if members.len() > crate::id::PARTITIONS as usize {
            return Err(RouteError::TooManyNodes {
                group,
                nodes: members.len(),
            });
        }
        let owned: Vec<Vec<PartitionRange>> = members
            .iter()
            .map(|&i| self.nodes[i].partitions.clone())
            .collect();
        for (i, ranges) in members.into_iter().zip(balance(&owned, free)) {
            self.nodes[i].partitions = ranges;
        }
        Ok(())
    }

    fn finish_change(mut self, origin: &str) -> Result<RouteList, RouteError> {
        self.epoch += 1;
        self.validate(origin)?;
        Ok(self)
    }
}

/// `data/<id>`: where `mend init` puts a node's data.
fn default_data_dir(id: &str) -> PathBuf {
    PathBuf::from("data").join(id)
}

/// The ranges of `group` whose owner differs between `before` and `after`, each with the
/// owner before and after, adjacent ranges with the same pair of owners joined.
fn moves<'a>(
    before: &'a RouteList,
    after: &'a RouteList,
    group: u32,
) -> Vec<(PartitionRange, &'a str, &'a str)> {
    let mut cuts = BTreeSet::from([0u32, crate::id::PARTITIONS]);
    for list in [before, after] {
        for n in list.group(group) {
            for r in &n.partitions {
                cuts.insert(u32::from(r.first));
                cuts.insert(u32::from(r.last) + 1);
            }
        }
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    let mut out: Vec<(PartitionRange, &str, &str)> = Vec::new();
    for w in cuts.windows(2) {
        let (Ok(first), Ok(last)) = (u16::try_from(w[0]), u16::try_from(w[1] - 1)) else {
            continue;
        };
        let from = before
            .owner(group, first)
            .map_or("(none)", |n| n.id.as_str());
        let to = after
            .owner(group, first)
            .map_or("(none)", |n| n.id.as_str());
        if from == to {
            continue;
        }
        match out.last_mut() {
            Some((r, f, t)) if *f == from && *t == to && u32::from(r.last) + 1 == w[0] => {
                r.last = last;
            }
            _ => out.push((PartitionRange { first, last }, from, to)),
        }
    }
    out
}

/// Sorts `ranges` and joins adjacent ones.
fn normalize(mut ranges: Vec<PartitionRange>) -> Vec<PartitionRange> {
    ranges.sort();
    let mut out: Vec<PartitionRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev) if u32::from(prev.last) + 1 == u32::from(r.first) => prev.last = r.last,
            _ => out.push(r),
        }
    }
    out
}

/// Gives each of `owned.len()` nodes a fair share of the partitions they hold together with
/// `free`, moving as few partitions as possible.
///
/// Shares are `total / n`, one more for the `total % n` nodes that hold the most (earlier
/// nodes first on a tie), so nodes keep as much as a fair split allows. A node above its
/// share gives up the partitions at the high end of its ranges; those and `free` go, lowest
/// first, to nodes below their share. The moved count is the least any fair split needs:
/// the sum of the excesses over the shares.
fn balance(owned: &[Vec<PartitionRange>], free: &[PartitionRange]) -> Vec<Vec<PartitionRange>> {
    let n = owned.len();
    if n == 0 {
        return Vec::new();
    }
    let count = |rs: &[PartitionRange]| rs.iter().map(PartitionRange::len).sum::<u32>();
    let counts: Vec<u32> = owned.iter().map(|rs| count(rs)).collect();
    let total = counts.iter().sum::<u32>() + count(free);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(counts[i]));
    let mut share = vec![total / n as u32; n];
    for &i in order.iter().take((total % n as u32) as usize) {
        share[i] += 1;
    }
    let mut pool: Vec<PartitionRange> = free.to_vec();
    let mut kept: Vec<Vec<PartitionRange>> = Vec::with_capacity(n);
    for (i, ranges) in owned.iter().enumerate() {
        let mut ranges = normalize(ranges.clone());
        let mut excess = counts[i].saturating_sub(share[i]);
        while excess > 0 {
            let last = ranges
                .last_mut()
                .expect("a node above its share owns ranges");
            if last.len() <= excess {
                excess -= last.len();
                pool.push(*last);
                ranges.pop();
            } else {
                let cut = (u32::from(last.last) + 1 - excess) as u16;
                pool.push(PartitionRange {
                    first: cut,
                    last: last.last,
                });
                last.last = cut - 1;
                excess = 0;
            }
        }
        kept.push(ranges);
    }
    let mut pool = std::collections::VecDeque::from(normalize(pool));
    for (i, ranges) in kept.iter_mut().enumerate() {
        let mut want = share[i].saturating_sub(count(ranges));
        while want > 0 {
            let Some(front) = pool.front_mut() else { break };
            if front.len() <= want {
                want -= front.len();
                ranges.push(*front);
                pool.pop_front();
            } else {
                let last = (u32::from(front.first) + want - 1) as u16;
                ranges.push(PartitionRange {
                    first: front.first,
                    last,
                });
                front.first = last + 1;
                want = 0;
            }
        }
        *ranges = normalize(std::mem::take(ranges));
    }
    kept
}

/// Splits the 65,536 partitions into `n` contiguous, near-equal ranges.
pub fn split_evenly(n: u32) -> Vec<PartitionRange> {
    assert!(n > 0 && n <= crate::id::PARTITIONS);
    (0..n)
        .map(|i| PartitionRange {
            first: (i * crate::id::PARTITIONS / n) as u16,
            last: ((i + 1) * crate::id::PARTITIONS / n - 1) as u16,
        })
        .collect()
}

/// Parses `host:port` or Elliptics' `host:port:family` (family 2 = IPv4, 10 = IPv6) and
/// resolves it to one socket address.
pub fn parse_addr(text: &str) -> Result<SocketAddr, RouteError> {
    let bad = |message: &str| RouteError::Address {
        addr: text.to_string(),
        message: message.to_string(),
    };
    // `[v6]:port[:family]` or `host:port[:family]`.
    let (host, rest) = match text.strip_prefix('[') {
        Some(after) => {
            let (v6, rest) = after
                .split_once("]:")
                .ok_or_else(|| bad("expected [v6addr]:port"))?;
            (format!("[{v6}]"), rest)
        }
        None => {
            let (host, rest) = text
                .split_once(':')
                .ok_or_else(|| bad("expected host:port"))?;
            (host.to_string(), rest)
        }
    };
    let (port, family) = match rest.split_once(':') {
        Some((port, family)) => (
            port,
            Some(
                family
                    .parse::<u32>()
                    .map_err(|_| bad("family is not a number"))?,
            ),
        ),
        None => (rest, None),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port is not a number from 0 to 65535"))?;
    let hostport = format!("{host}:{port}");
    let want_v6 = match family {
        None => None,
        Some(2) => Some(false),
        Some(10) => Some(true),
        Some(_) => return Err(bad("family must be 2 (IPv4) or 10 (IPv6)")),
    };
    let addrs = hostport
        .as_str()
        .to_socket_addrs()
        .map_err(|e| bad(&format!("expected host:port or host:port:family ({e})")))?;
    addrs
        .into_iter()
        .find(|a| want_v6.is_none_or(|v6| a.is_ipv6() == v6))
        .ok_or_else(|| bad("no address of that family"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_groups() -> RouteList {
        let node = |id: &str, group, addr: &str, parts: &[&str]| NodeEntry {
            id: id.into(),
            group,
            addr: addr.into(),
            data_dir: PathBuf::from(format!("data/{id}")),
            partitions: parts.iter().map(|p| p.parse().unwrap()).collect(),
        };
        RouteList {
            name: "t".into(),
            epoch: 1,
            nodes: vec![
                node("g1n1", 1, "127.0.0.1:1", &["0000-7fff"]),
                node("g1n2", 1, "127.0.0.1:2", &["8000-ffff"]),
                node("g2n1", 2, "127.0.0.1:3", &["0000-3fff"]),
                node("g2n2", 2, "127.0.0.1:4", &["4000-ffff"]),
            ],
        }
    }

    #[test]
    fn toml_round_trips() {
        let r = two_groups();
        let text = toml::to_string(&r).unwrap();
        assert_eq!(toml::from_str::<RouteList>(&text).unwrap(), r);
    }

    #[test]
    fn gaps_and_overlaps_are_named() {
        let mut r = two_groups();
        r.nodes[1].partitions = vec!["8000-fffe".parse().unwrap()];
        let e = r.validate("x").unwrap_err().to_string();
        assert!(e.contains("group 1") && e.contains("ffff-ffff"), "{e}");
        let mut r = two_groups();
        r.nodes[1].partitions = vec!["7000-ffff".parse().unwrap()];
        let e = r.validate("x").unwrap_err().to_string();
        assert!(e.contains("overlap"), "{e}");
    }

    #[test]
    fn elementary_ranges_follow_every_group() {
        let r = two_groups();
        let ranges = r.elementary_ranges(&[1, 2]);
        let bounds: Vec<String> = ranges.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(bounds, ["0000-3fff", "4000-7fff", "8000-ffff"]);
        let owners: Vec<&str> = ranges[1].1.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(owners, ["g1n1", "g2n2"]);
    }

    #[test]
    fn elliptics_addresses_parse() {
        assert_eq!(parse_addr("127.0.0.1:1025:2").unwrap().port(), 1025);
        assert_eq!(parse_addr("127.0.0.1:1025").unwrap().port(), 1025);
        assert!(parse_addr("[::1]:1025:10").unwrap().is_ipv6());
        assert!(parse_addr("127.0.0.1:1025:7").is_err());
        assert!(parse_addr("nonsense").is_err());
    }

    #[test]
    fn split_evenly_covers_everything() {
        let parts = split_evenly(3);
        assert_eq!(parts[0].first, 0);
        assert_eq!(parts[2].last, u16::MAX);
        assert_eq!(
            parts.iter().map(PartitionRange::len).sum::<u32>(),
            crate::id::PARTITIONS
        );
    }
    fn shares(r: &RouteList, group: u32) -> Vec<u32> {
        let counts = r.partition_counts();
        r.group(group).map(|n| counts[n.id.as_str()]).collect()
    }

    fn is_fair(r: &RouteList, group: u32) -> bool {
        let s = shares(r, group);
        s.iter().max().unwrap() - s.iter().min().unwrap() <= 1
    }

    /// Partitions of `group` whose owner differs between the two lists.
    fn moved(a: &RouteList, b: &RouteList, group: u32) -> u32 {
        moves(a, b, group).iter().map(|(r, _, _)| r.len()).sum()
    }

    /// Every node in both lists keeps as many of its partitions as its new count allows
    /// (so nothing moves that a fair split does not need to move).
    fn keeps_most(before: &RouteList, after: &RouteList) -> bool {
        let count = |rs: &[PartitionRange]| rs.iter().map(PartitionRange::len).sum::<u32>();
        let common = |a: &[PartitionRange], b: &[PartitionRange]| -> u32 {
            a.iter()
                .flat_map(|x| b.iter().map(move |y| (x, y)))
                .map(|(x, y)| {
                    let (lo, hi) = (x.first.max(y.first), x.last.min(y.last));
                    if lo <= hi {
                        u32::from(hi) - u32::from(lo) + 1
                    } else {
                        0
                    }
                })
                .sum()
        };
        after
            .nodes
            .iter()
            .all(|b| match before.nodes.iter().find(|a| a.id == b.id) {
                None => true,
                Some(a) => {
                    common(&a.partitions, &b.partitions)
                        == count(&a.partitions).min(count(&b.partitions))
                }
            })
    }

    #[test]
    fn add_node_takes_a_fair_share_and_moves_only_that() {
        let r = two_groups();
        let next = r.add_node(1, "g1n3", "127.0.0.1:9", None).unwrap();
        assert_eq!(next.epoch, 2);
        next.validate("t").unwrap();
        assert_eq!(shares(&next, 1), [21846, 21845, 21845]);
        // Only the newcomer's share moves; the other group is untouched.
        assert_eq!(moved(&r, &next, 1), 21845);
        assert_eq!(moved(&r, &next, 2), 0);
        let ids: Vec<&str> = next.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["g1n1", "g1n2", "g1n3", "g2n1", "g2n2"]);
        assert_eq!(next.nodes[2].data_dir, PathBuf::from("data/g1n3"));
        // The old nodes keep the low end of what they had.
        assert_eq!(next.nodes[0].partitions[0].first, 0);
        assert_eq!(next.nodes[1].partitions[0].first, 0x8000);
    }

    #[test]
    fn add_node_refuses_unknown_group_duplicate_id_and_address() {
        let r = two_groups();
        let e = r.add_node(7, "x", "127.0.0.1:9", None).unwrap_err();
        assert!(
            matches!(e, RouteError::UnknownGroup { group: 7, .. }),
            "{e}"
        );
        let e = r.add_node(1, "g2n1", "127.0.0.1:9", None).unwrap_err();
        assert!(matches!(e, RouteError::DuplicateNode(_)), "{e}");
        let e = r.add_node(1, "new", "127.0.0.1:3", None).unwrap_err();
        assert!(e.to_string().contains("g2n1"), "{e}");
        assert!(r.add_node(1, "new", "nonsense", None).is_err());
        // Port 0 (picked at first start) never clashes.
        let a = r.add_node(1, "a", "127.0.0.1:0", None).unwrap();
        a.add_node(1, "b", "127.0.0.1:0", None).unwrap();
    }

    #[test]
    fn remove_node_spreads_its_partitions_and_refuses_a_groups_last_node() {
        let r = two_groups()
            .add_node(1, "g1n3", "127.0.0.1:9", None)
            .unwrap();
        let next = r.remove_node("g1n2").unwrap();
        assert_eq!(next.epoch, 3);
        next.validate("t").unwrap();
        assert!(next.nodes.iter().all(|n| n.id != "g1n2"));
        assert_eq!(shares(&next, 1), [32768, 32768]);
        assert_eq!(moved(&r, &next, 1), 21845, "only g1n2's partitions move");
        // By address too.
        let by_addr = r.remove_node("127.0.0.1:2").unwrap();
        assert_eq!(by_addr, next);

        let single = next.remove_node("g1n1").unwrap();
        let e = single.remove_node("g1n3").unwrap_err();
        assert!(
            matches!(e, RouteError::LastNode { ref node, group: 1 } if node == "g1n3"),
            "{e}"
        );
        assert!(e.to_string().contains("group 1"), "{e}");
        assert!(matches!(
            r.remove_node("nope").unwrap_err(),
            RouteError::UnknownNode(_)
        ));
    }

    #[test]
    fn rebalance_evens_groups_keeping_ownership() {
        let r = two_groups();
        let next = r.rebalance().unwrap();
        assert_eq!(next.epoch, 2);
        next.validate("t").unwrap();
        assert!(is_fair(&next, 2));
        assert_eq!(moved(&r, &next, 1), 0);
        assert_eq!(
            moved(&r, &next, 2),
            0x4000,
            "the least any even split moves"
        );
        // Balanced already: nothing but the epoch changes.
        let again = next.rebalance().unwrap();
        assert!(again.same_apart_from_epoch(&next));
        assert_eq!(again.epoch, 3);
    }

    #[test]
    fn many_changes_keep_coverage_valid_and_shares_fair() {
        let mut r = two_groups();
        let mut epoch = r.epoch;
        for i in 0..12 {
            let before = r.clone();
            r = r
                .add_node(1 + i % 2, &format!("n{i}"), "127.0.0.1:0", None)
                .unwrap();
            assert!(keeps_most(&before, &r));
            epoch += 1;
            assert_eq!(r.epoch, epoch);
            assert!(is_fair(&r, 1 + i % 2));
        }
        for id in ["g1n1", "n4", "n3", "n0", "g2n2"] {
            let before = r.clone();
            let gone = before.partition_counts()[id];
            let group = before.node(id).unwrap().group;
            r = r.remove_node(id).unwrap();
            assert_eq!(moved(&before, &r, group), gone);
            epoch += 1;
            assert_eq!(r.epoch, epoch);
            assert!(is_fair(&r, 1) && is_fair(&r, 2));
        }
        r.validate("t").unwrap();
    }

    #[test]
    fn diff_names_nodes_and_moved_ranges() {
        let r = two_groups();
        let next = r.add_node(1, "g1n3", "127.0.0.1:9", None).unwrap();
        let lines = r.diff(&next);
        let text = lines.join("\n");
        assert_eq!(lines[0], "epoch 1 -> 2");
        assert!(
            text.contains("add node g1n3: group 1, address 127.0.0.1:9"),
            "{text}"
        );
        assert!(
            text.contains("partitions 5556-7fff (10922) move g1n1 -> g1n3"),
            "{text}"
        );
        assert!(
            text.contains("partitions d555-ffff (10923) move g1n2 -> g1n3"),
            "{text}"
        );
        assert!(
            text.contains("node g1n1: 32768 -> 21846 partitions"),
            "{text}"
        );
        assert!(text.contains("node g1n3: 0 -> 21845 partitions"), "{text}");
        assert!(!text.contains("group 2"), "{text}");
        let back = next.remove_node("g1n3").unwrap();
        let text = next.diff(&back).join("\n");
        assert!(text.contains("remove node g1n3"), "{text}");
    }

    fn recovery_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn recovery_file_rebuilds_from_survivors() {
        let r = two_groups()
            .add_node(1, "g1n3", "127.0.0.1:9", None)
            .unwrap();
        let (_d, path) = recovery_file(
            "peers.json",
            r#"[
                {"id": "g1n3", "group": 1, "address": "127.0.0.1:19"},
                {"id": "g2n1", "group": 2, "addr": "127.0.0.1:3"},
                {"id": "g2n2", "group": 2, "addr": "127.0.0.1:4", "data_dir": "/srv/g2n2"}
            ]"#,
        );
        let next = r.from_recovery_file(&path).unwrap();
        assert_eq!(next.epoch, r.epoch + 1);
        next.validate("t").unwrap();
        let ids: Vec<&str> = next.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["g1n3", "g2n1", "g2n2"]);
        assert_eq!(shares(&next, 1), [65536]);
        assert_eq!(next.nodes[0].addr, "127.0.0.1:19");
        assert_eq!(next.nodes[0].data_dir, PathBuf::from("data/g1n3"));
        assert_eq!(next.nodes[2].data_dir, PathBuf::from("/srv/g2n2"));
        // Group 2 lost no one: its partitions stay where they were.
        assert_eq!(moved(&r, &next, 2), 0);
        let text = r.diff(&next).join("\n");
        assert!(text.contains("remove node g1n1"), "{text}");
        assert!(
            text.contains("node g1n3: address 127.0.0.1:9 -> 127.0.0.1:19"),
            "{text}"
        );

        // The TOML spelling.
        let (_d, path) = recovery_file(
            "survivors.toml",
            "[[node]]\nid = \"g1n1\"\ngroup = 1\naddr = \"127.0.0.1:1\"\n\n[[node]]\nid = \"g2n2\"\ngroup = 2\naddr = \"127.0.0.1:4\"\n",
        );
        let next = two_groups().from_recovery_file(&path).unwrap();
        assert_eq!(shares(&next, 1), [65536]);
        assert_eq!(shares(&next, 2), [65536]);
    }

    #[test]
    fn malformed_recovery_file_is_an_error_naming_it() {
        let r = two_groups();
        let cases: &[(&str, &str, &[&str])] = &[
            ("a.json", "[{\"id\": \"g1n1\",\n \"addr\": \"127.0.0.1:1\"}]", &["missing field `group`", "line 2"]),
            ("b.json", "[{\"id\": \"g1n1\", \"group\": 1, \"addr\": \"127.0.0.1:1\",\n\"port\": 1}]", &["unknown field `port`", "line 2"]),
            ("c.json", "[{\"id\": \"g1n1\", \"group\": 1,,}]", &["line 1"]),
            ("d.json", "[{\"id\": \"g1n1\", \"group\": 1, \"addr\": \"127.0.0.1:1\"}]", &["group 2 has no surviving node"]),
            ("e.json", "[{\"id\": \"g1n1\", \"group\": 2, \"addr\": \"127.0.0.1:1\"}]", &["entry 1", "in group 1"]),
            ("f.json", "[{\"id\": \"g1n1\", \"group\": 1, \"addr\": \"nowhere\"}, {\"id\": \"g2n1\", \"group\": 2, \"addr\": \"127.0.0.1:3\"}]", &["entry 1", "field `addr`"]),
            ("g.json", "[{\"id\": \"g1n1\", \"group\": 9, \"addr\": \"127.0.0.1:1\"}]", &["group 9 is not in the route list"]),
            ("h.json", "[]", &["lists no nodes"]),
            ("i.toml", "[[node]]\nid = \"g1n1\"\ngroup = \"one\"\n", &["line 3"]),
        ];
        for (name, text, wanted) in cases {
            let (_d, path) = recovery_file(name, text);
            let e = r.from_recovery_file(&path).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, RouteError::Recovery { .. }), "{name}: {msg}");
            assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
            for w in *wanted {
                assert!(msg.contains(w), "{name}: {msg:?} lacks {w:?}");
            }
        }
        let e = r
            .from_recovery_file(Path::new("/nonexistent/peers.json"))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/peers.json"), "{e}");
    }

    proptest::proptest! {
        /// Any sequence of changes keeps every group covered exactly once, every share fair,
        /// the epoch growing by one per change, and moves no more than a fair split needs.
        #[test]
        fn changes_keep_the_route_list_valid(ops in proptest::collection::vec((0u8..3, 0u32..3, 0usize..8), 1..24)) {
            let mut r = two_groups();
            let mut next_id = 0;
            for (op, g, pick) in ops {
                let group = 1 + g % 2;
                let before = r.clone();
                let result = match op {
                    0 => {
                        next_id += 1;
                        r.add_node(group, &format!("p{next_id}"), "127.0.0.1:0", None)
                    }
                    1 => {
                        let ids: Vec<String> = r.group(group).map(|n| n.id.clone()).collect();
                        r.remove_node(&ids[pick % ids.len()])
                    }
                    _ => r.rebalance(),
                };
                match result {
                    Ok(next) => {
                        proptest::prop_assert!(next.validate("p").is_ok());
                        proptest::prop_assert_eq!(next.epoch, before.epoch + 1);
                        // The group changed is fair; a rebalance makes every group fair.
                        let changed = if op == 2 { next.groups() } else { BTreeSet::from([group]) };
                        for g in changed {
                            proptest::prop_assert!(is_fair(&next, g));
                        }
                        proptest::prop_assert!(keeps_most(&before, &next));
                        r = next;
                    }
                    Err(RouteError::LastNode { .. }) => {
                        proptest::prop_assert_eq!(op, 1);
                        proptest::prop_assert_eq!(before.group(group).count(), 1);
                    }
                    Err(e) => proptest::prop_assert!(false, "{}", e),
                }
            }
        }
    }
}
