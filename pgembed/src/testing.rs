//! The test harness: one server per test binary, a fresh database per test.
//!
//! The first call to [`cluster`] starts a private server in a temporary directory (or, when
//! `DATABASE_URL` is set, uses that server instead). [`TestCluster::fresh_database`] migrates a
//! template database once per distinct migration set and hands every caller its own copy of it
//! (`CREATE DATABASE … TEMPLATE …`), which takes milliseconds.
//!
//! Nothing here keeps a connection pool: each test runs on its own Tokio runtime, and pools must
//! not cross runtimes.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;
use sqlx::migrate::Migrator;
use tokio::sync::{Mutex, OnceCell};

use crate::{Error, Server, ServerConfig, quote_ident};

static CLUSTER: OnceCell<TestCluster> = OnceCell::const_new();

/// The server tests of this process share.
#[derive(Debug)]
pub struct TestCluster {
    admin_url: String,
    _server: Option<Server>,
    templates: Mutex<HashSet<String>>,
    counter: AtomicU64,
}

/// One test's database.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// The database name.
    pub name: String,
    /// A URL to connect to it.
    pub url: String,
}

/// The cluster of this test binary, started on first use.
pub async fn cluster() -> &'static TestCluster {
    CLUSTER
        .get_or_init(|| async {
            match TestCluster::start().await {
                Ok(c) => c,
                Err(e) => panic!("test PostgreSQL could not start: {e}"),
            }
        })
        .await
}

impl TestCluster {
    async fn start() -> Result<Self, Error> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Ok(Self::new(url, None));
        }
        let root = std::env::temp_dir();
        remove_stale_dirs(&root);
        let dir = root.join(format!("backporcher-pgtest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let server = Server::start(&ServerConfig {
            data_dir: dir,
            port: None,
            bin_dir: None,
            durable: false,
            password: None,
        })
        .await?;
        Ok(Self::new(server.url("postgres"), Some(server)))
    }

    fn new(admin_url: String, server: Option<Server>) -> Self {
        Self {
            admin_url,
            _server: server,
            templates: Mutex::new(HashSet::new()),
            counter: AtomicU64::new(0),
        }
    }

    /// A URL of the server's administrative database.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// A new, empty-but-migrated database for one test.
    pub async fn fresh_database(&self, migrator: &Migrator) -> Result<TestDatabase, Error> {
        let template = self.template(migrator).await?;
        self.create("bp_t", Some(&template)).await
    }

    /// An empty database with no schema (for testing migrations themselves).
    pub async fn empty_database(&self) -> Result<TestDatabase, Error> {
        self.create("bp_e", None).await
    }

    /// Creates a database named `<prefix>_<pid>_<n>`, from `template` if given.
    async fn create(&self, prefix: &str, template: Option<&str>) -> Result<TestDatabase, Error> {
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let mut sql = format!("CREATE DATABASE {}", quote_ident(&name));
        if let Some(t) = template {
            sql.push_str(&format!(" TEMPLATE {}", quote_ident(t)));
        }
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(TestDatabase {
            url: with_database(&self.admin_url, &name),
            name,
        })
    }

    async fn template(&self, migrator: &Migrator) -> Result<String, Error> {
        let name = template_name(migrator);
        let mut known = self.templates.lock().await;
        if known.contains(&name) {
            return Ok(name);
        }
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
        // Serialises template creation across processes sharing an external server.
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(&name)
            .execute(&mut conn)
            .await?;
        let result = self.create_template(&mut conn, &name, migrator).await;
        sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(&name)
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        result?;
        known.insert(name.clone());
        Ok(name)
    }

    async fn create_template(
        &self,
        conn: &mut sqlx::PgConnection,
        name: &str,
        migrator: &Migrator,
    ) -> Result<(), Error> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&mut *conn)
                .await?;
        if exists {
            return Ok(());
        }
        let building = format!("{name}_building_{}", std::process::id());
        for sql in [
            format!("DROP DATABASE IF EXISTS {}", quote_ident(&building)),
            format!("CREATE DATABASE {}", quote_ident(&building)),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await?;
        }
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&with_database(&self.admin_url, &building))
            .await?;
        migrator.run(&pool).await?;
        pool.close().await;
        let sql = format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(&building),
            quote_ident(name)
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

fn template_name(migrator: &Migrator) -> String {
    // FNV-1a over every migration's version and checksum: a changed migration gets a new template.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for m in migrator.iter() {
        for b in m.version.to_le_bytes().iter().chain(m.checksum.iter()) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("bp_tmpl_{hash:016x}")
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{database}?{q}"),
        None => format!("{host_part}/{database}"),
    }
}

/// Removes data directories of earlier test processes that are gone.
fn remove_stale_dirs(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("backporcher-pgtest-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5/app?sslmode=disable", "t1"),
            "postgres://u:p@h:5/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5", "t1"), "postgres://h:5/t1");
        assert_eq!(with_database("postgres://h/app", "t1"), "postgres://h/t1");
    }
}
