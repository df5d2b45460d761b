//! Owners partitioned across nodes: which node holds which owner.
//!
//! Owners are independent (no transition spans two owners), so a cluster is
//! just a partition of owners over nodes, routed by an existing proxy. This
//! module owns the three things every node and the proxy must agree on:
//!
//! - `file`: the membership file (`--cluster cluster.toml`): node ids and
//!   addresses, static, with its bounds.
//! - `ring`: the consistent hash that maps an owner to a node. It is
//!   nginx's `hash $owner consistent` (ketama), computed with the
//!   `pingora-ketama` crate, a port that matches nginx exactly; a node
//!   refuses (421) every owner the ring gives to another node.
//! - `proxy`: the nginx configuration (`countiq cluster proxy-config`) that
//!   routes by the same ring from the same file.
//! - `guard`: the membership a data directory was written under, so that a
//!   node never starts with a changed ring over existing data (it would
//!   silently serve owners whose data is elsewhere).
//!
//! No tokio here; `guard` does file I/O at start-up only.

mod file;
mod guard;
mod proxy;
mod ring;

use std::net::SocketAddrV4;
use std::sync::Arc;

pub use file::{ClusterFileError, CLUSTER_FILE_BYTES_MAX, NODES_MAX, NODE_ID_CHARS_MAX};
pub use guard::{check_data_dir, GuardError, MEMBERSHIP_FILE};
pub use proxy::{
    nginx_config, ProxyOptions, OWNER_JS, PROXY_CONNECT_TIMEOUT_MS, PROXY_READ_TIMEOUT_S,
};
pub use ring::Ring;

use crate::domain::OwnerId;

/// One node of the cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Stable name (`[a-z0-9_-]`, 1–`NODE_ID_CHARS_MAX`), used in the 421
    /// header and in logs; the ring itself is keyed by `addr`.
    pub id: String,
    /// The address the proxy dials. IPv4 `ip:port` only: nginx hashes the
    /// server as written and pingora-ketama hashes `ip\0port`, which agree
    /// for a literal IPv4 address (not for a host name, nor for `[v6]`).
    pub addr: SocketAddrV4,
}

/// The parsed, validated membership and its ring.
#[derive(Debug, Clone)]
pub struct Cluster {
    members: Arc<[Member]>,
    ring: Arc<Ring>,
}

impl Cluster {
    /// Parses and validates a cluster file's text.
    pub fn parse(text: &str) -> Result<Cluster, ClusterFileError> {
        let members = file::parse(text)?;
        let ring = Ring::new(&members)?;
        Ok(Cluster {
            members: members.into(),
            ring: Arc::new(ring),
        })
    }

    /// Reads and parses a cluster file.
    pub fn load(path: &std::path::Path) -> Result<Cluster, ClusterFileError> {
        Cluster::parse(&file::read(path)?)
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member that holds `owner`.
    pub fn owner_node(&self, owner: &str) -> &Member {
        &self.members[self.ring.member_index(owner)]
    }

    /// This cluster seen from the node `id`; an error if `id` is not a member.
    pub fn placement(&self, id: &str) -> Result<Placement, ClusterFileError> {
        let me = self
            .members
            .iter()
            .position(|m| m.id == id)
            .ok_or_else(|| ClusterFileError::UnknownNode { id: id.to_string() })?;
        Ok(Placement {
            cluster: self.clone(),
            me,
        })
    }

    /// The membership as canonical text: one `id addr` line per member in
    /// file order. Two files with the same canonical text give the same ring.
    pub fn canonical(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{} {}\n", m.id, m.addr))
            .collect()
    }
}

/// One node's view: the cluster and which member it is.
#[derive(Debug, Clone)]
pub struct Placement {
    cluster: Cluster,
    me: usize,
}

/// The owner is held by another node (HTTP 421 Misdirected Request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("owner held by node {node_id} at {addr}")]
pub struct Misdirected {
    pub node_id: String,
    pub addr: SocketAddrV4,
}

impl Placement {
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn me(&self) -> &Member {
        &self.cluster.members[self.me]
    }

    /// Ok when this node holds `owner`; else which node does. Pure: the same
    /// owner gets the same answer on every node with the same file.
    pub fn check_owner(&self, owner: &OwnerId) -> Result<(), Misdirected> {
        let index = self.cluster.ring.member_index(owner.as_str());
        if index == self.me {
            return Ok(());
        }
        let holder = &self.cluster.members[index];
        Err(Misdirected {
            node_id: holder.id.clone(),
            addr: holder.addr,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Goal: every owner is held by exactly one node, the same on every node,
    //! and moving from 3 to 4 nodes moves about 1/4 of the owners, all to the
    //! new node; method: 10,000 owners against every placement.
    use super::*;

    const THREE: &str = r#"
[[node]]
id = "node1"
addr = "10.0.0.1:8080"
[[node]]
id = "node2"
addr = "10.0.0.2:8080"
[[node]]
id = "node3"
addr = "10.0.0.3:8080"
"#;

    fn owner(i: u32) -> OwnerId {
        OwnerId::new(&format!("owner-{i}")).unwrap()
    }

    #[test]
    fn each_owner_is_held_by_exactly_one_node() {
        let cluster = Cluster::parse(THREE).unwrap();
        let placements: Vec<_> = ["node1", "node2", "node3"]
            .iter()
            .map(|id| cluster.placement(id).unwrap())
            .collect();
        let mut held = [0u32; 3];
        for i in 0..10_000 {
            let o = owner(i);
            let holders: Vec<usize> = (0..3)
                .filter(|&n| placements[n].check_owner(&o).is_ok())
                .collect();
            assert_eq!(holders.len(), 1, "owner {o} held by {holders:?}");
            let holder = &cluster.members()[holders[0]];
            assert_eq!(cluster.owner_node(o.as_str()), holder);
            for (n, p) in placements.iter().enumerate() {
                if n != holders[0] {
                    let err = p.check_owner(&o).unwrap_err();
                    assert_eq!(err.node_id, holder.id);
                    assert_eq!(err.addr, holder.addr);
                }
            }
            held[holders[0]] += 1;
        }
        // 160 points per node: every node gets a real share (not an exact
        // third; ketama's shares for 3 nodes are within a few percent).
        for (n, count) in held.iter().enumerate() {
            assert!(*count > 2_500, "node {n} holds only {count} of 10,000");
        }
    }

    #[test]
    fn adding_a_node_moves_only_owners_to_it() {
        let three = Cluster::parse(THREE).unwrap();
        let four = Cluster::parse(&format!(
            "{THREE}[[node]]\nid = \"node4\"\naddr = \"10.0.0.4:8080\"\n"
        ))
        .unwrap();
        let mut moved = 0;
        for i in 0..10_000 {
            let o = owner(i);
            let before = three.owner_node(o.as_str());
            let after = four.owner_node(o.as_str());
            if before != after {
                assert_eq!(after.id, "node4", "owner {o} moved between old nodes");
                moved += 1;
            }
        }
        assert!((1_500..3_500).contains(&moved), "moved {moved} of 10,000");
    }

    #[test]
    fn an_unknown_node_id_has_no_placement() {
        let cluster = Cluster::parse(THREE).unwrap();
        assert!(matches!(
            cluster.placement("node9"),
            Err(ClusterFileError::UnknownNode { .. })
        ));
    }

    #[test]
    fn canonical_text_lists_members_in_file_order() {
        let cluster = Cluster::parse(THREE).unwrap();
        assert_eq!(
            cluster.canonical(),
            "node1 10.0.0.1:8080\nnode2 10.0.0.2:8080\nnode3 10.0.0.3:8080\n"
        );
    }
}
