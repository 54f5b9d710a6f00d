//! Controller configuration: where the database is, where the controller listens, and the lease
//! timings it dictates to runners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the controller needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL URL; `None` runs an embedded server under `data_dir/postgres`.
    pub database_url: Option<String>,
    /// State directory (embedded database, keys).
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Lease length given to runners.
    pub lease: Duration,
    /// Extra time live leases get when a controller starts.
    pub restart_grace: Duration,
    /// Longest pause between two reaper sweeps.
    pub reaper_interval: Duration,
    /// Database pool size.
    pub max_db_connections: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            data_dir: PathBuf::from(".backporcher"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            lease: Duration::from_secs(75),
            restart_grace: Duration::from_secs(60),
            reaper_interval: Duration::from_secs(1),
            max_db_connections: 20,
        }
    }
}
