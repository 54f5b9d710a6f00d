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
        store.close().await;
        server.stop().await;
        assert!(
            !dir.join("postgres/postmaster.pid").exists(),
            "embedded server stopped cleanly"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// HTTPS on the controller's own listener with a certificate its CA issues: a client that trusts
/// the CA (`/ca.pem`) gets answers, one that does not is refused at the handshake, plain HTTP gets
/// nothing, and a client that opens a connection and never says anything holds up nobody else.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_is_served_over_https_from_the_controllers_ca() {
    let (store, url) = crate::store_and_url().await;
    let server = crate::Serving::start(controller::config::Config {
        database_url: Some(url),
        data_dir: tempfile::tempdir().unwrap().keep(),
        http_tls: controller::http::tls::HttpTls::OwnCa,
        server_names: vec!["localhost".into(), "127.0.0.1".into()],
        ..controller::config::Config::default()
    })
    .await;
    let port = server.addr.port();
    let ca: String = sqlx::query_scalar("SELECT cert_pem FROM pki_ca")
        .fetch_one(store.pool())
        .await
        .unwrap();
    // A client that says nothing: the next one is still served.
    let _silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let client_trusting = |roots: rustls::RootCertStore| {
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
    };
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let trusting = client_trusting(roots);
    for host in ["localhost", "127.0.0.1"] {
        let r = trusting
            .get(format!("https://{host}:{port}/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("https://{host}: {e:?}"));
        assert_eq!(r.status(), reqwest::StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    let served_ca = trusting
        .get(format!("https://localhost:{port}/ca.pem"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served_ca.trim(), ca.trim());
    let stranger = client_trusting(rustls::RootCertStore::empty());
    assert!(
        stranger
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .is_err(),
        "a client that does not trust the CA is refused"
    );
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_err(),
        "plain HTTP gets no answer"
    );
    server.stop().await;
}
