//! TEMPORARY stand-in, replaced by the storage branch's recovery.
use std::collections::HashMap;
use std::path::Path;

use crate::domain::{Micros, OwnerId, OwnerState};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

pub struct RecoveredOwner {
    pub state: OwnerState,
    pub last_lsn: u64,
}

#[derive(Debug, Default)]
pub struct RecoveryReport {}

pub struct Recovered {
    pub owners: HashMap<OwnerId, RecoveredOwner>,
    pub next_lsn: u64,
    pub report: RecoveryReport,
    pub lock: std::fs::File,
}

pub fn recover(dir: &Path, _now: Micros) -> Result<Recovered, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error(e.to_string()))?;
    let lock = std::fs::File::create(dir.join("LOCK")).map_err(|e| Error(e.to_string()))?;
    let n = std::fs::read_dir(dir)
        .map_err(|e| Error(e.to_string()))?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("wal-"))
        })
        .count();
    let next_lsn = 1 + n as u64 * 1_000_000_000;
    Ok(Recovered {
        owners: HashMap::new(),
        next_lsn,
        report: RecoveryReport::default(),
        lock,
    })
}
