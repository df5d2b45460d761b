//! The owner → node ring: nginx's `hash $key consistent` (ketama).
//!
//! nginx gives each server 160 points per unit of weight: point `j` is
//! `crc32(host "\0" port prev_hash_le)` with `prev_hash` the point before
//! it (0 for the first); a key goes to the first point at or after
//! `crc32(key)`, wrapping at the end. `pingora-ketama` is a port of exactly
//! that (its own tests compare it with nginx); `tests/cluster_compose.rs`
//! compares it with the real nginx of our image, owner by owner.
//!
//! One corner the port may not share: when two servers' points have the
//! same hash, nginx keeps the first in configuration order and
//! pingora-ketama an arbitrary one. Such a membership is refused
//! (`PointCollision`), so the two rings agree on every key.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};

use pingora_ketama::{Bucket, Continuum, DEFAULT_POINT_MULTIPLE};

use super::{ClusterFileError, Member};

/// nginx's default server weight; every member has it.
const WEIGHT: u32 = 1;

pub struct Ring {
    continuum: Continuum,
    /// Member index by address (the continuum answers with addresses).
    index_by_addr: HashMap<SocketAddrV4, usize>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("members", &self.index_by_addr.len())
            .finish()
    }
}

impl Ring {
    pub(super) fn new(members: &[Member]) -> Result<Ring, ClusterFileError> {
        assert!(
            !members.is_empty(),
            "the file parser refuses an empty cluster"
        );
        refuse_point_collisions(members)?;
        let buckets: Vec<Bucket> = members
            .iter()
            .map(|m| Bucket::new(SocketAddr::V4(m.addr), WEIGHT))
            .collect();
        let index_by_addr = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.addr, i))
            .collect();
        Ok(Ring {
            continuum: Continuum::new(&buckets),
            index_by_addr,
        })
    }

    /// Index (in file order) of the member that holds `key`.
    pub fn member_index(&self, key: &str) -> usize {
        let addr = self
            .continuum
            .node(key.as_bytes())
            .expect("a ring of at least one member has points");
        let SocketAddr::V4(v4) = addr else {
            unreachable!("members are IPv4");
        };
        self.index_by_addr[&v4]
    }
}

/// The points nginx computes for one server, as described above.
fn points(addr: &SocketAddrV4) -> impl Iterator<Item = u32> {
    let base = format!("{}\0{}", addr.ip(), addr.port());
    let mut prev: u32 = 0;
    (0..WEIGHT * DEFAULT_POINT_MULTIPLE).map(move |_| {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(base.as_bytes());
        hasher.update(&prev.to_le_bytes());
        prev = hasher.finalize();
        prev
    })
}

fn refuse_point_collisions(members: &[Member]) -> Result<(), ClusterFileError> {
    let mut owner_of_point: HashMap<u32, usize> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        for p in points(&m.addr) {
            if let Some(&other) = owner_of_point.get(&p) {
                if other != i {
                    return Err(ClusterFileError::PointCollision {
                        a: members[other].id.clone(),
                        b: m.id.clone(),
                    });
                }
            }
            owner_of_point.insert(p, i);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Goal: our reading of nginx's point formula is the one pingora-ketama
    //! implements (else the collision check would guard the wrong points);
    //! method: rebuild the ring from `points` by hand and check that every
    //! key goes to the member of the first point at or after crc32(key).
    use super::*;

    fn member(id: &str, addr: &str) -> Member {
        Member {
            id: id.into(),
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn keys_go_to_the_first_point_at_or_after_their_hash() {
        let members = [member("a", "10.0.0.1:8080"), member("b", "10.0.0.2:8080")];
        let ring = Ring::new(&members).unwrap();
        assert_eq!(points(&members[1].addr).count(), 160);
        let mut all: Vec<(u32, usize)> = Vec::new();
        for (i, m) in members.iter().enumerate() {
            all.extend(points(&m.addr).map(|p| (p, i)));
        }
        all.sort();
        for k in 0..5_000 {
            let key = format!("owner-{k}");
            let h = crc32fast::hash(key.as_bytes());
            let ours = all.iter().find(|(p, _)| *p >= h).unwrap_or(&all[0]).1;
            assert_eq!(ring.member_index(&key), ours, "key {key}");
        }
    }
}
