//! The controller process wiring: embedded PostgreSQL under a data dir, migrations, health.

use controller::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn the_controller_runs_on_its_own_embedded_postgres_and_keeps_data_across_restarts() {
    let dir = std::env::temp_dir().join(format!("bp-controller-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = Config {
        data_dir: dir.clone(),
        ..Config::default()
    };
    for round in 0..2 {
        // Ready when started: no polling.
        let server = crate::Serving::start(config.clone()).await;
        let addr = server.addr;
        let ready = http_get(addr, "/readyz").await;
        assert!(ready.contains("200 OK"), "{ready}");
        assert!(ready.ends_with("ready"));
        assert!(http_get(addr, "/healthz").await.ends_with("ok"));
        // Data written in round 0 is there in round 1.
        let pw = std::fs::read_to_string(dir.join("postgres.password")).unwrap();
        assert_eq!(
            std::fs::metadata(dir.join("postgres.password"))
                .map(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o777
                })
                .unwrap(),
            0o600
        );
        let port: u16 = std::fs::read_to_string(dir.join("postgres/postmaster.pid"))
            .unwrap()
            .lines()
            .nth(3)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let store = controller::store::Store::connect(
            &format!(
                "postgres://postgres:{}@127.0.0.1:{port}/backporcher",
                pw.trim()
            ),
            2,
        )
        .await
        .unwrap();
        if round == 0 {
            crate::repo(&store, "acme/kept").await;
        } else {
            store
                .repo_by_name("acme/kept")
                .await
                .expect("data survived the restart");
        }
        store.pool().close().await;
        server.stop().await;
        assert!(
            !dir.join("postgres/postmaster.pid").exists(),
            "embedded server stopped cleanly"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
