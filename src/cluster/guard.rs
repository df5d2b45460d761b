//! The membership a data directory was written under.
//!
//! Invariant: a node serves an owner only if its data directory holds that
//! owner's whole history. A changed ring breaks it silently: a new node
//! would answer for owners whose data is on an old one, as if they were
//! empty. So the first start with `--cluster` records `node id` and the
//! membership in `<data-dir>/cluster.members`, and every later start
//! compares: a different node id or membership refuses to start, as does
//! a data directory of a cluster node started without `--cluster`, or a
//! first cluster start over data that holds owners another node would
//! serve. Resizing is therefore an explicit operator step (README
//! "Cluster"), never a side effect of editing the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::Placement;
use crate::domain::OwnerId;

/// The record's file name in the data directory.
pub const MEMBERSHIP_FILE: &str = "cluster.members";
/// Owners named in a refusal (the count is exact).
const OWNERS_NAMED_MAX: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the data directory was written as {recorded:?}, but this start is {current:?}: refusing to serve owners whose data may be elsewhere (README \"Cluster\": resizing)")]
    Changed { recorded: String, current: String },
    #[error("the data directory belongs to a cluster node ({recorded:?}); start it with --cluster and --node-id")]
    ClusterDataWithoutCluster { recorded: String },
    #[error("the data directory holds {count} owners that the ring gives to other nodes (e.g. {examples:?}): refusing to start over it")]
    ForeignOwners { count: usize, examples: Vec<String> },
}

fn record(placement: &Placement) -> String {
    format!(
        "node {}\n{}",
        placement.me().id,
        placement.cluster().canonical()
    )
}

/// Checks `data_dir` against this start's placement (None: no cluster) and
/// the owners recovered from it; records the placement on the first cluster
/// start (written, fsync'd, renamed, directory fsync'd).
pub fn check_data_dir(
    data_dir: &Path,
    placement: Option<&Placement>,
    recovered: &[OwnerId],
) -> Result<(), GuardError> {
    let path = data_dir.join(MEMBERSHIP_FILE);
    let io = |source| GuardError::Io {
        path: path.clone(),
        source,
    };
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let Some(placement) = placement else {
        return match recorded {
            None => Ok(()),
            Some(recorded) => Err(GuardError::ClusterDataWithoutCluster { recorded }),
        };
    };
    let current = record(placement);
    if let Some(recorded) = recorded {
        if recorded == current {
            return Ok(());
        }
        return Err(GuardError::Changed { recorded, current });
    }
    let foreign: Vec<&OwnerId> = recovered
        .iter()
        .filter(|o| placement.check_owner(o).is_err())
        .collect();
    if !foreign.is_empty() {
        return Err(GuardError::ForeignOwners {
            count: foreign.len(),
            examples: foreign
                .iter()
                .take(OWNERS_NAMED_MAX)
                .map(|o| o.to_string())
                .collect(),
        });
    }
    write_durably(data_dir, &path, &current).map_err(io)
}

fn write_durably(dir: &Path, path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    //! Goal: the guard refuses every changed start and accepts the same one
    //! again; method: one data directory through a sequence of starts.
    use super::*;
    use crate::cluster::Cluster;

    fn cluster(n: usize) -> Cluster {
        let text: String = (1..=n)
            .map(|i| format!("[[node]]\nid = \"node{i}\"\naddr = \"10.0.0.{i}:8080\"\n"))
            .collect();
        Cluster::parse(&text).unwrap()
    }

    fn owned_by(c: &Cluster, id: &str) -> OwnerId {
        (0..)
            .map(|i| OwnerId::new(&format!("o{i}")).unwrap())
            .find(|o| c.owner_node(o.as_str()).id == id)
            .unwrap()
    }

    #[test]
    fn same_start_passes_changed_start_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let three = cluster(3);
        let p1 = three.placement("node1").unwrap();
        check_data_dir(dir.path(), Some(&p1), &[]).unwrap();
        assert!(dir.path().join(MEMBERSHIP_FILE).exists());
        check_data_dir(dir.path(), Some(&p1), &[]).unwrap();

        let p2 = three.placement("node2").unwrap();
        assert!(matches!(
            check_data_dir(dir.path(), Some(&p2), &[]),
            Err(GuardError::Changed { .. })
        ));
        let four = cluster(4);
        let p1_of_four = four.placement("node1").unwrap();
        assert!(matches!(
            check_data_dir(dir.path(), Some(&p1_of_four), &[]),
            Err(GuardError::Changed { .. })
        ));
        assert!(matches!(
            check_data_dir(dir.path(), None, &[]),
            Err(GuardError::ClusterDataWithoutCluster { .. })
        ));
        // Nothing above changed the record.
        check_data_dir(dir.path(), Some(&p1), &[]).unwrap();
    }

    #[test]
    fn first_cluster_start_over_foreign_owners_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let three = cluster(3);
        let p1 = three.placement("node1").unwrap();
        let mine = owned_by(&three, "node1");
        let theirs = owned_by(&three, "node2");
        let err = check_data_dir(dir.path(), Some(&p1), &[mine.clone(), theirs.clone()]);
        match err {
            Err(GuardError::ForeignOwners { count, examples }) => {
                assert_eq!(count, 1);
                assert_eq!(examples, vec![theirs.to_string()]);
            }
            other => panic!("expected ForeignOwners, got {other:?}"),
        }
        assert!(
            !dir.path().join(MEMBERSHIP_FILE).exists(),
            "a refusal records nothing"
        );
        check_data_dir(dir.path(), Some(&p1), &[mine]).unwrap();
    }

    #[test]
    fn no_cluster_over_plain_data_passes() {
        let dir = tempfile::tempdir().unwrap();
        check_data_dir(dir.path(), None, &[OwnerId::new("alice").unwrap()]).unwrap();
        assert!(!dir.path().join(MEMBERSHIP_FILE).exists());
    }
}
