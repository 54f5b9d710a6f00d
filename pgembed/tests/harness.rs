//! The harness itself: a private server starts once, each test gets its own migrated database.

use sqlx::Connection;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations");

#[tokio::test]
async fn fresh_databases_are_migrated_and_isolated() {
    let cluster = pgembed::testing::cluster().await;
    let a = cluster.fresh_database(&MIGRATOR).await.unwrap();
    let b = cluster.fresh_database(&MIGRATOR).await.unwrap();
    assert_ne!(a.name, b.name);
    let mut ca = sqlx::PgConnection::connect(&a.url).await.unwrap();
    let mut cb = sqlx::PgConnection::connect(&b.url).await.unwrap();
    sqlx::query("INSERT INTO t (v) VALUES ('x')")
        .execute(&mut ca)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut cb)
        .await
        .unwrap();
    assert_eq!(n, 0, "databases must not share rows");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut ca)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn many_tests_share_one_server_concurrently() {
    let cluster = pgembed::testing::cluster().await;
    let dbs = futures_join(cluster).await;
    assert_eq!(dbs.len(), 8);
}

async fn futures_join(cluster: &'static pgembed::testing::TestCluster) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        set.spawn(async move { cluster.fresh_database(&MIGRATOR).await.unwrap().name });
    }
    let mut names = Vec::new();
    while let Some(n) = set.join_next().await {
        names.push(n.unwrap());
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn durable_server_with_password_restarts_on_its_data() {
    let dir = tempfile_dir();
    let config = pgembed::ServerConfig {
        data_dir: dir.join("pg"),
        port: None,
        bin_dir: None,
        durable: true,
        password: Some("s3cret".into()),
    };
    let server = pgembed::Server::start(&config).await.unwrap();
    server.ensure_database("app").await.unwrap();
    let mut c = sqlx::PgConnection::connect(&server.url("app"))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE kept (v int)")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES (7)")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    // Wrong password is refused.
    let bad = server.url("app").replace("s3cret", "nope");
    assert!(sqlx::PgConnection::connect(&bad).await.is_err());
    server.stop().await.unwrap();

    let server = pgembed::Server::start(&config).await.unwrap();
    let mut c = sqlx::PgConnection::connect(&server.url("app"))
        .await
        .unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 7);
    c.close().await.unwrap();
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pgembed-durable-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
