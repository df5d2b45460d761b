//! The cluster file: `[[node]]` tables with `id` and `addr`, static.
//!
//! ```toml
//! [[node]]
//! id = "node1"
//! addr = "172.28.0.11:8080"
//! ```
//!
//! Every bound is a named constant; a file that breaks one is refused as a
//! whole, naming the node and the rule, before anything is served.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Member;

/// Nodes in one cluster at most (pingora-ketama numbers nodes with `u16`;
/// a static file of more than this is a deployment this design is not for).
pub const NODES_MAX: usize = 64;
/// Node id length at most.
pub const NODE_ID_CHARS_MAX: usize = 32;
/// A cluster file larger than this is refused unread.
pub const CLUSTER_FILE_BYTES_MAX: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    #[error("reading the cluster file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the cluster file {path} is over {CLUSTER_FILE_BYTES_MAX} bytes")]
    TooLarge { path: PathBuf },
    #[error("the cluster file is not valid: {0}")]
    Syntax(String),
    #[error("the cluster file has no [[node]]")]
    Empty,
    #[error("the cluster file has {count} nodes; at most {NODES_MAX}")]
    TooManyNodes { count: usize },
    #[error("node id {id:?}: 1-{NODE_ID_CHARS_MAX} characters of [a-z0-9_-]")]
    BadId { id: String },
    #[error("node {id}: addr {addr:?} must be a literal IPv4 ip:port (nginx hashes the server as written)")]
    BadAddr { id: String, addr: String },
    #[error("node id {id} appears twice")]
    DuplicateId { id: String },
    #[error("addr {addr} appears twice")]
    DuplicateAddr { addr: SocketAddrV4 },
    #[error("nodes {a} and {b} share a ring point; nginx and this node could disagree on owners there: change an address")]
    PointCollision { a: String, b: String },
    #[error("node {id:?} is not in the cluster file")]
    UnknownNode { id: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    node: Vec<NodeToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeToml {
    id: String,
    addr: String,
}

pub(super) fn read(path: &Path) -> Result<String, ClusterFileError> {
    let read_err = |source| ClusterFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > CLUSTER_FILE_BYTES_MAX {
        return Err(ClusterFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    std::fs::read_to_string(path).map_err(read_err)
}

pub(super) fn parse(text: &str) -> Result<Vec<Member>, ClusterFileError> {
    let file: FileToml =
        toml::from_str(text).map_err(|e| ClusterFileError::Syntax(e.message().to_string()))?;
    if file.node.is_empty() {
        return Err(ClusterFileError::Empty);
    }
    if file.node.len() > NODES_MAX {
        return Err(ClusterFileError::TooManyNodes {
            count: file.node.len(),
        });
    }
    let mut ids = HashSet::new();
    let mut addrs = HashSet::new();
    let mut members = Vec::with_capacity(file.node.len());
    for node in file.node {
        let member = member(node)?;
        if !ids.insert(member.id.clone()) {
            return Err(ClusterFileError::DuplicateId { id: member.id });
        }
        if !addrs.insert(member.addr) {
            return Err(ClusterFileError::DuplicateAddr { addr: member.addr });
        }
        members.push(member);
    }
    Ok(members)
}

fn member(node: NodeToml) -> Result<Member, ClusterFileError> {
    let id_ok = (1..=NODE_ID_CHARS_MAX).contains(&node.id.len())
        && node
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !id_ok {
        return Err(ClusterFileError::BadId { id: node.id });
    }
    // Canonical form only: "10.0.0.1:80" round-trips, "010.0.0.1:80" or
    // "10.0.0.1:080" would not be the string nginx hashes.
    let addr = node
        .addr
        .parse::<SocketAddrV4>()
        .ok()
        .filter(|a| a.to_string() == node.addr && a.port() != 0);
    match addr {
        Some(addr) => Ok(Member { id: node.id, addr }),
        None => Err(ClusterFileError::BadAddr {
            id: node.id,
            addr: node.addr,
        }),
    }
}

#[cfg(test)]
mod tests {
    //! Goal: each rule of the file refuses its first violation with its own
    //! error and accepts the bound itself; method: table of small files.
    use super::*;

    fn file(nodes: &[(&str, &str)]) -> String {
        nodes
            .iter()
            .map(|(id, addr)| format!("[[node]]\nid = \"{id}\"\naddr = \"{addr}\"\n"))
            .collect()
    }

    #[test]
    fn a_valid_file_parses_in_order() {
        let members = parse(&file(&[("a", "10.0.0.1:80"), ("b-2_x", "10.0.0.2:8080")])).unwrap();
        let ids: Vec<_> = members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b-2_x"]);
        assert_eq!(members[1].addr.to_string(), "10.0.0.2:8080");
    }

    #[test]
    fn every_rule_has_its_error() {
        let long_id = "a".repeat(NODE_ID_CHARS_MAX + 1);
        let max_id = "a".repeat(NODE_ID_CHARS_MAX);
        assert!(parse(&file(&[(&max_id, "10.0.0.1:80")])).is_ok());
        type IsExpected = fn(&ClusterFileError) -> bool;
        let cases: Vec<(String, IsExpected)> = vec![
            (String::new(), |e| matches!(e, ClusterFileError::Empty)),
            ("node = 3".into(), |e| {
                matches!(e, ClusterFileError::Syntax(_))
            }),
            (
                "[[node]]\nid = \"a\"\naddr = \"10.0.0.1:80\"\nweight = 2\n".into(),
                |e| matches!(e, ClusterFileError::Syntax(_)),
            ),
            (file(&[(&long_id, "10.0.0.1:80")]), |e| {
                matches!(e, ClusterFileError::BadId { .. })
            }),
            (file(&[("Node1", "10.0.0.1:80")]), |e| {
                matches!(e, ClusterFileError::BadId { .. })
            }),
            (file(&[("", "10.0.0.1:80")]), |e| {
                matches!(e, ClusterFileError::BadId { .. })
            }),
            (file(&[("a", "node1:80")]), |e| {
                matches!(e, ClusterFileError::BadAddr { .. })
            }),
            (file(&[("a", "[::1]:80")]), |e| {
                matches!(e, ClusterFileError::BadAddr { .. })
            }),
            (file(&[("a", "10.0.0.1:080")]), |e| {
                matches!(e, ClusterFileError::BadAddr { .. })
            }),
            (file(&[("a", "10.0.0.1:0")]), |e| {
                matches!(e, ClusterFileError::BadAddr { .. })
            }),
            (file(&[("a", "10.0.0.1")]), |e| {
                matches!(e, ClusterFileError::BadAddr { .. })
            }),
            (file(&[("a", "10.0.0.1:80"), ("a", "10.0.0.2:80")]), |e| {
                matches!(e, ClusterFileError::DuplicateId { .. })
            }),
            (file(&[("a", "10.0.0.1:80"), ("b", "10.0.0.1:80")]), |e| {
                matches!(e, ClusterFileError::DuplicateAddr { .. })
            }),
        ];
        for (text, is_expected) in cases {
            let err = parse(&text).expect_err(&text);
            assert!(is_expected(&err), "{text:?} gave {err}");
        }
    }

    #[test]
    fn node_count_is_bounded() {
        let nodes: Vec<(String, String)> = (0..=NODES_MAX)
            .map(|i| {
                (
                    format!("n{i}"),
                    format!("10.0.{}.{}:80", i / 200, i % 200 + 1),
                )
            })
            .collect();
        let as_refs = |n: usize| -> Vec<(&str, &str)> {
            nodes[..n]
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect()
        };
        assert_eq!(parse(&file(&as_refs(NODES_MAX))).unwrap().len(), NODES_MAX);
        assert!(matches!(
            parse(&file(&as_refs(NODES_MAX + 1))),
            Err(ClusterFileError::TooManyNodes { count }) if count == NODES_MAX + 1
        ));
    }
}
