//! Enrollment and mTLS: who gets in and who does not.

use std::time::Duration;

use e2e::harness::{Options, TestController, enroll, state_dir};
use runner::client::HelloInfo;
use runner::identity::{Identity, Ticket};
use tonic::Code;

fn hello_info() -> HelloInfo {
    HelloInfo {
        labels: vec![],
        capacity: 1,
        backends: vec![],
        boot_id: "b".into(),
        active: vec![],
    }
}

#[tokio::test]
async fn a_joined_runner_is_accepted_and_its_key_is_private() {
    let c = TestController::start(Options::default()).await;
    let (id, dir) = enroll(&c, "r1", &["linux", "docker"]).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the private key is readable by its owner only");
    let loaded = Identity::load(&dir).unwrap();
    assert_eq!(loaded.runner_id, id.runner_id);
    let hello = loaded
        .connect()
        .unwrap()
        .hello(&hello_info())
        .await
        .unwrap();
    assert_eq!(
        hello.labels,
        vec!["linux".to_string(), "docker".to_string()],
        "labels come from the join token"
    );
    let r = c.store.runner(id.runner_id).await.unwrap();
    assert_eq!(r.name, "r1");
    assert!(r.cert_serial.is_some());
    c.stop().await;
}

#[tokio::test]
async fn a_join_token_works_once_and_not_after_it_expired() {
    let c = TestController::start(Options::default()).await;
    let ticket: Ticket = c.ticket(&[]).await.parse().unwrap();
    runner::identity::join(&c.url(), &ticket, "first", &state_dir("first"))
        .await
        .unwrap();
    let err = runner::identity::join(&c.url(), &ticket, "second", &state_dir("second"))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("already used"), "{err:#}");

    let token = c
        .store
        .create_join_token("user:admin", Duration::from_millis(1), &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fp = ticket.ca_fingerprint.clone();
    let expired = Ticket {
        token,
        ca_fingerprint: fp.clone(),
    };
    let err = runner::identity::join(&c.url(), &expired, "late", &state_dir("late"))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("expired"), "{err:#}");

    let unknown = Ticket {
        token: "bpj_nope".into(),
        ca_fingerprint: fp,
    };
    let err = runner::identity::join(&c.url(), &unknown, "nobody", &state_dir("nobody"))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("unknown join token"), "{err:#}");
    c.stop().await;
}

#[tokio::test]
async fn a_wrong_ca_fingerprint_stops_the_join_before_the_token_is_sent() {
    let c = TestController::start(Options::default()).await;
    let mut ticket: Ticket = c.ticket(&[]).await.parse().unwrap();
    ticket.ca_fingerprint = "00".repeat(32);
    let err = runner::identity::join(&c.url(), &ticket, "r", &state_dir("r"))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("did not present the CA"),
        "{err:#}"
    );
    // The token was never spent.
    let used: i64 =
        sqlx::query_scalar("SELECT count(*) FROM join_tokens WHERE used_at IS NOT NULL")
            .fetch_one(c.store.pool())
            .await
            .unwrap();
    assert_eq!(used, 0);
    c.stop().await;
}

#[tokio::test]
async fn no_certificate_a_foreign_certificate_and_a_disabled_runner_are_refused() {
    let c = TestController::start(Options::default()).await;
    let (id, _) = enroll(&c, "r1", &[]).await;

    // No client certificate: TLS lets Join through, every other call is refused.
    let ca = tonic::transport::Certificate::from_pem(&id.ca_pem);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .domain_name("localhost");
    let ch = tonic::transport::Channel::from_shared(c.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anon =
        proto::runner_client::RunnerClient::with_interceptor(ch, runner::client::Version);
    let err = anon
        .hello(proto::HelloRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.message().contains("client certificate is required"));

    // A certificate from another CA: the handshake itself fails.
    let other_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_issuer = rcgen::Issuer::new(ca_params, other_ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("runner-{}", id.runner_id),
    );
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = p.signed_by(&key, &other_issuer).unwrap();
    let forged_id = Identity {
        cert_pem: forged.pem(),
        key_pem: key.serialize_pem(),
        ..id.clone()
    };
    let err = forged_id
        .connect()
        .unwrap()
        .hello(&hello_info())
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert_ne!(
        err.code(),
        Code::Unauthenticated,
        "refused at the handshake, not by the service: {err}"
    );

    // Disabled: refused as soon as the controller hears of the change (the registry notifies
    // every controller; its leases were taken back and its claims refused already).
    let client = id.connect().unwrap();
    client.hello(&hello_info()).await.unwrap();
    c.store
        .set_runner_state(id.runner_id, "disabled")
        .await
        .unwrap();
    let info = hello_info();
    let err = refused(|| client.hello(&info)).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("disabled"));
    c.stop().await;
}

#[tokio::test]
async fn a_protocol_version_mismatch_is_refused_with_what_to_do() {
    let c = TestController::start(Options::default()).await;
    let (id, _) = enroll(&c, "r1", &[]).await;
    let ca = tonic::transport::Certificate::from_pem(&id.ca_pem);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("localhost")
        .identity(tonic::transport::Identity::from_pem(
            &id.cert_pem,
            &id.key_pem,
        ));
    let ch = tonic::transport::Channel::from_shared(c.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = proto::runner_client::RunnerClient::new(ch);
    let mut req = tonic::Request::new(proto::HelloRequest::default());
    req.metadata_mut().insert(
        proto::VERSION_HEADER,
        tonic::metadata::MetadataValue::from(99u32),
    );
    let err = raw.hello(req).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("protocol version 99 is not supported"),
        "{}",
        err.message()
    );
    c.stop().await;
}

#[tokio::test]
async fn certificates_are_renewed_before_they_expire_and_old_ones_stop_working() {
    // Runners renew at a third of the validity left: with 9 s validity, after about 6 s.
    let c = TestController::start(Options {
        cert_validity: Duration::from_secs(9),
        ..Options::default()
    })
    .await;
    let (id, dir) = enroll(&c, "r1", &[]).await;
    let old_serial = c
        .store
        .runner(id.runner_id)
        .await
        .unwrap()
        .cert_serial
        .unwrap();
    let runner = e2e::harness::spawn_runner(id.clone(), &dir, crate::executor(), 1);
    let store = c.store.clone();
    let saved = dir.clone();
    let first_pem = id.cert_pem.clone();
    e2e::harness::eventually(
        Duration::from_secs(15),
        "the certificate to be renewed and saved",
        || {
            let store = store.clone();
            let old = old_serial.clone();
            let saved = saved.clone();
            let first_pem = first_pem.clone();
            async move {
                store
                    .runner(id.runner_id)
                    .await
                    .unwrap()
                    .cert_serial
                    .as_deref()
                    != Some(old.as_str())
                    && Identity::load(&saved)
                        .map(|i| i.cert_pem != first_pem)
                        .unwrap_or(false)
            }
        },
    )
    .await;
    let renewed = Identity::load(&dir).unwrap();
    let (from, to) = renewed.cert_validity().unwrap();
    assert!(
        to - from <= 10,
        "the renewed certificate has the configured validity"
    );
    // The old certificate is refused now; the runner keeps working with the new one.
    let old = id.connect().unwrap();
    let info = hello_info();
    let err = refused(|| old.hello(&info)).await;
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let repo = c.repo("acme/w").await;
    let t = c.task(&repo, "sleep:10").await;
    c.wait_status(t.id, "pushing", Duration::from_secs(10))
        .await;
    runner.stop().await.unwrap();
    c.stop().await;
}

#[tokio::test]
async fn a_runner_disabled_while_it_waits_for_work_is_refused_and_stops() {
    let c = TestController::start(Options::default()).await;
    let (id, dir) = enroll(&c, "r1", &[]).await;
    let runner = e2e::harness::spawn_runner(id.clone(), &dir, crate::executor(), 1);
    let store = c.store.clone();
    e2e::harness::eventually(Duration::from_secs(10), "the runner to connect", || {
        let store = store.clone();
        async move { store.runner(id.runner_id).await.unwrap().boot_id.is_some() }
    })
    .await;
    // It is now long-polling for work; disabling it ends that call and the daemon.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.store
        .set_runner_state(id.runner_id, "disabled")
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), runner.handle)
        .await
        .expect("the daemon stops")
        .unwrap();
    let err = ended.expect_err("a disabled runner cannot go on");
    assert!(format!("{err:#}").contains("disabled"), "{err:#}");
    c.stop().await;
}

/// The error of `call` once it fails, retried while it succeeds for at most 5 s: a change of the
/// registry takes effect on a controller when it hears the change's notification.
async fn refused<T, F, Fut>(call: F) -> tonic::Status
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match call().await {
            Err(e) => return e,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Ok(_) => panic!("the call is still let in 5 s after the registry changed"),
        }
    }
}
