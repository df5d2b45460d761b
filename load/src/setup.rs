//! Before and after the measured phase: create the run's items through the
//! API, and read every item back for the check. Both use a few parallel
//! connections; every loop is bounded by a named attempt limit.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::client::{Client, Failure, Reply};
use crate::error::LoadError;
use crate::history::{Attempt, Record, Recorder, Req, CLIENT_FINAL, CLIENT_SETUP};
use crate::plan::{ItemPlan, Plan};
use crate::target::Target;
use crate::worker::join;

/// Parallel connections used to create and read back items.
const SETUP_CONNECTIONS_MAX: usize = 8;
/// Names tried per item when the server answers 409 `name_taken`.
pub(crate) const NAME_ATTEMPTS_MAX: u32 = 5;
/// Tries per final read (a transport failure is retried).
const READ_ATTEMPTS_MAX: u32 = 3;
/// Longest id accepted from the server (a UUID is 36 characters).
const ID_CHARS_MAX: usize = 64;

/// What to create: for each item, its owner index and base name.
pub(crate) struct ItemSpec {
    pub owner: usize,
    pub name: String,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct ReadBack {
    qty: i64,
}

/// Creates every item with `start_qty` for the owners of `plan` (whose
/// `items` are not used); returns them in `specs` order.
pub(crate) async fn create_items(
    target: &Target,
    timeout: Duration,
    plan: Arc<Plan>,
    specs: Arc<Vec<ItemSpec>>,
    recorder: Arc<Recorder>,
) -> Result<(Vec<ItemPlan>, Vec<Record>), LoadError> {
    let lanes = SETUP_CONNECTIONS_MAX.min(specs.len()).max(1);
    let mut tasks = Vec::with_capacity(lanes);
    for lane in 0..lanes {
        let (plan, specs, target) = (plan.clone(), specs.clone(), target.clone());
        let recorder = recorder.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(target, timeout);
            let mut made = Vec::new();
            let mut records = Vec::new();
            for index in (lane..specs.len()).step_by(lanes) {
                let (id, name) =
                    create_one(&mut client, &plan, &specs[index], &recorder, &mut records).await?;
                made.push((
                    index,
                    ItemPlan {
                        id,
                        owner: specs[index].owner,
                        name,
                    },
                ));
            }
            Ok::<_, LoadError>((made, records))
        }));
    }
    let mut slots: Vec<Option<ItemPlan>> = (0..specs.len()).map(|_| None).collect();
    let mut all_records = Vec::new();
    for task in tasks {
        let (made, records) = join(task).await?;
        for (index, item) in made {
            slots[index] = Some(item);
        }
        all_records.extend(records);
    }
    // The lanes' indices cover 0..len, and every lane succeeded.
    let items = slots
        .into_iter()
        .map(|s| s.expect("every index has a lane"));
    Ok((items.collect(), all_records))
}

/// Creates one item; returns its id and name. Only the attempt that
/// created it is recorded (the others concern names no one uses).
async fn create_one(
    client: &mut Client,
    plan: &Plan,
    spec: &ItemSpec,
    recorder: &Recorder,
    records: &mut Vec<Record>,
) -> Result<(String, String), LoadError> {
    let owner = &plan.owners[spec.owner];
    for attempt in 0..NAME_ATTEMPTS_MAX {
        let name = if attempt == 0 {
            spec.name.clone()
        } else {
            format!("{}-r{attempt}", spec.name)
        };
        let req = Req::Create {
            name: name.clone(),
            qty: plan.start_qty,
        };
        let sent = recorder
            .send(
                client,
                Attempt {
                    client: CLIENT_SETUP,
                    owner: &owner.name,
                    token: &owner.token,
                    req: &req,
                    key: None,
                    timeout: client.timeout(),
                    resolves: None,
                    intended: None,
                },
            )
            .await;
        let (result, _, _, record) = sent;
        let reply = match result {
            Ok(reply) => reply,
            Err(Failure::Connect) => {
                return Err(LoadError::Unreachable {
                    addr: client.addr(),
                })
            }
            // No reply: the item may exist under this name; try another.
            Err(_) => continue,
        };
        match reply.status {
            201 => {
                records.extend(record);
                return parse_created(&reply).map(|id| (id, name));
            }
            409 => continue,
            status => {
                let body = snippet(&reply);
                return Err(LoadError::SetupStatus { status, body });
            }
        }
    }
    let name = spec.name.clone();
    Err(LoadError::NamesExhausted { name })
}

fn parse_created(reply: &Reply) -> Result<String, LoadError> {
    let created: Created =
        serde_json::from_slice(&reply.body).map_err(|source| LoadError::SetupBody {
            body: snippet(reply),
            source,
        })?;
    if !is_path_safe_id(&created.id) {
        return Err(LoadError::UnsafeId { id: created.id });
    }
    Ok(created.id)
}

/// Ids go into request paths: only `[A-Za-z0-9_-]`, bounded length.
pub(crate) fn is_path_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_CHARS_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Reads every item's final qty; None for an item that could not be read.
pub(crate) async fn read_final(
    target: &Target,
    timeout: Duration,
    plan: Arc<Plan>,
    recorder: Arc<Recorder>,
) -> (Vec<Option<i128>>, Vec<Record>) {
    let lanes = SETUP_CONNECTIONS_MAX.min(plan.items.len()).max(1);
    let mut tasks = Vec::with_capacity(lanes);
    for lane in 0..lanes {
        let (plan, target, recorder) = (plan.clone(), target.clone(), recorder.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(target, timeout);
            let mut read = Vec::new();
            let mut records = Vec::new();
            for index in (lane..plan.items.len()).step_by(lanes) {
                let qty = read_one(&mut client, &plan, index, &recorder, &mut records).await;
                read.push((index, qty));
            }
            (read, records)
        }));
    }
    let mut finals = vec![None; plan.items.len()];
    let mut all_records = Vec::new();
    for task in tasks {
        // A failed lane leaves its items unread, which fails the check.
        if let Ok((read, records)) = task.await {
            for (index, qty) in read {
                finals[index] = qty;
            }
            all_records.extend(records);
        }
    }
    (finals, all_records)
}

async fn read_one(
    client: &mut Client,
    plan: &Plan,
    index: usize,
    recorder: &Recorder,
    records: &mut Vec<Record>,
) -> Option<i128> {
    let item = &plan.items[index];
    let owner = &plan.owners[item.owner];
    let req = Req::Get {
        item: item.id.clone(),
    };
    for _ in 0..READ_ATTEMPTS_MAX {
        let attempt = Attempt {
            client: CLIENT_FINAL,
            owner: &owner.name,
            token: &owner.token,
            req: &req,
            key: None,
            timeout: client.timeout(),
            resolves: None,
            intended: None,
        };
        let (result, _, _, record) = recorder.send(client, attempt).await;
        records.extend(record);
        match result {
            Ok(reply) if reply.status == 200 => {
                return serde_json::from_slice::<ReadBack>(&reply.body)
                    .ok()
                    .map(|r| i128::from(r.qty));
            }
            Ok(_) => return None,
            Err(_) => continue,
        }
    }
    None
}

/// The server's `version` from `GET /healthz` (None when it has none).
pub(crate) async fn server_version(target: &Target, timeout: Duration) -> Option<String> {
    #[derive(Deserialize)]
    struct Health {
        version: Option<String>,
    }
    let mut client = Client::new(target.clone(), timeout);
    let none = http::HeaderValue::from_static("");
    let reply = client
        .request(http::Method::GET, "/healthz", &none, None)
        .await
        .ok()?;
    serde_json::from_slice::<Health>(&reply.body).ok()?.version
}

/// The start of a body, for error messages.
fn snippet(reply: &Reply) -> String {
    const SNIPPET_BYTES_MAX: usize = 200;
    let end = reply.body.len().min(SNIPPET_BYTES_MAX);
    String::from_utf8_lossy(&reply.body[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    //! Goal: only path-safe ids are accepted; method: examples.
    use super::*;

    #[test]
    fn path_safe_ids() {
        assert!(is_path_safe_id("01890a5d-ac96-774b-bcce-b302099a8057"));
        assert!(!is_path_safe_id(""));
        assert!(!is_path_safe_id("a/b"));
        assert!(!is_path_safe_id("a b"));
        assert!(!is_path_safe_id(&"x".repeat(65)));
    }
}
