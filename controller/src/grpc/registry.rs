//! What the runner service remembers of the registry between a runner's calls, so that a call
//! does not cost a statement to learn who is calling. A remembered row is used only while the
//! registry generation it was read under is current ([`crate::fanout::RegistryGeneration`]):
//! every change of a runner's state, certificate, labels or capacity notifies `bp_runner`, which
//! moves the generation on every controller, and while the notification listener is down
//! nothing is remembered. The certificate is checked against the row on every call either way,
//! and a claim reads the runner's state itself, so a runner disabled a moment ago leases nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::fanout::RegistryGeneration;
use crate::store::runners::Runner;
use crate::store::{Result, RunnerId, Store};

/// Most rows remembered; past it everything is forgotten (and read again as runners call).
const MAX_REMEMBERED: usize = 10_000;

/// Registry rows by runner id, each with the generation it was read under.
#[derive(Debug)]
pub struct RunnerCache {
    generation: Arc<RegistryGeneration>,
    rows: Mutex<HashMap<RunnerId, (u64, Runner)>>,
}

impl RunnerCache {
    /// An empty cache following `generation`.
    pub fn new(generation: Arc<RegistryGeneration>) -> Self {
        Self {
            generation,
            rows: Mutex::new(HashMap::new()),
        }
    }

    /// The runner `id` if the certificate with `serial` is the one it holds and it is not
    /// disabled.
    pub async fn authenticate(&self, store: &Store, id: RunnerId, serial: &str) -> Result<Runner> {
        let r = self.runner(store, id).await?;
        r.admits(serial)?;
        Ok(r)
    }

    /// The registry row of runner `id`: from memory when the generation allows, else from the
    /// store.
    pub async fn runner(&self, store: &Store, id: RunnerId) -> Result<Runner> {
        let before = self.generation.current();
        if let Some(g) = before {
            let mut rows = self.rows.lock().expect("runner cache lock");
            match rows.get(&id) {
                Some((at, r)) if *at == g => return Ok(r.clone()),
                Some(_) => {
                    rows.remove(&id);
                }
                None => {}
            }
        }
        let r = store.runner(id).await?;
        // Kept only if nothing changed while it was read (else it may predate the change).
        if let Some(g) = before.filter(|g| self.generation.current() == Some(*g)) {
            let mut rows = self.rows.lock().expect("runner cache lock");
            if rows.len() >= MAX_REMEMBERED {
                rows.clear();
            }
            rows.insert(id, (g, r.clone()));
        }
        Ok(r)
    }
}
