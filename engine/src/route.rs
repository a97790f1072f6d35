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
        let tmp = cluster_dir.join(format!(".{CLUSTER_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
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
}
