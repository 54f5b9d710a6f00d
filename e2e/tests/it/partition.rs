//! A runner on a host of its own — a network namespace with its own address, joined to the
//! controller's host by a veth pair on a bridge — dialing the controller at that bridge address
//! over mTLS (the server certificate checked against the address dialed). The link is cut past
//! the runner's lease: the controller takes the task back and a runner on another host completes
//! it; the link is healed: the cut-off runner stops its attempt within seconds and nothing it
//! reports is taken. Needs root and `ip`; skipped otherwise.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::harness::{Options, TestController, spawn_runner, state_dir};
use e2e::netns::Net;

use crate::executor;

#[tokio::test]
async fn a_runner_cut_off_past_its_lease_stops_its_work_when_the_link_heals() {
    if !e2e::netns::available() {
        return;
    }
    let mut net = Net::create();
    let host = net.add_host("runner", 2);
    let controller_ip = net.own_addr();
    let lease = Duration::from_secs(3);
    let ip_name = controller_ip.to_string();
    let c = TestController::start_at(
        SocketAddr::new(controller_ip, e2e::harness::free_port()),
        SocketAddr::new(controller_ip, e2e::harness::free_port()),
        Options {
            lease,
            heartbeat: Duration::from_secs(1),
            restart_grace: Duration::from_secs(1),
            configure: e2e::harness::Configure(Some(std::sync::Arc::new(move |cfg| {
                cfg.server_names = vec![ip_name.clone()];
            }))),
            ..Options::default()
        },
    )
    .await;
    let url = format!("https://{}", c.grpc);
    let repo = c.repo("acme/widgets").await;
    // The runner host enrolls through the bridge address: the controller's certificate names it.
    let dir_a = state_dir("partitioned");
    let ticket: runner::identity::Ticket = c.ticket(&[]).await.parse().unwrap();
    runner::identity::join(&url, &ticket, "partitioned", &dir_a)
        .await
        .expect("join over the bridge");
    let exec = executor();
    let mut a = host
        .command(
            std::path::Path::new(env!("CARGO_BIN_EXE_e2e-runner")),
            &dir_a,
        )
        .arg(&dir_a)
        .arg(&exec.runs_file)
        .arg("1")
        .env("RUST_LOG", "warn")
        .to_std()
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the runner starts in its namespace");
    let t = c.task(&repo, "sleep:20000").await;
    let started = c
        .wait_status(t.id, "running", Duration::from_secs(30))
        .await;
    assert!(started.runner_id.is_some());
    // Cut past the lease: the task goes back, and a runner on the controller's side takes it.
    net.link(&host, false);
    c.wait_status(t.id, "queued", lease + Duration::from_secs(5))
        .await;
    let dir_b = state_dir("beside");
    let ticket: runner::identity::Ticket = c.ticket(&[]).await.parse().unwrap();
    let id_b = runner::identity::join(&url, &ticket, "beside", &dir_b)
        .await
        .unwrap();
    let b = spawn_runner(id_b.clone(), &dir_b, exec.clone(), 1);
    c.wait_status(t.id, "running", Duration::from_secs(20))
        .await;
    net.link(&host, true);
    let (stopped_after, outcome) = exec
        .wait_ended(
            a.id(),
            Duration::from_secs(20),
            "the cut-off runner to stop its attempt",
        )
        .await;
    assert_eq!(outcome, "Canceled");
    assert!(
        stopped_after < Duration::from_secs(15),
        "the cut-off attempt kept working {stopped_after:?} after the link healed"
    );
    let done = c
        .wait_status(t.id, "pushing", Duration::from_secs(40))
        .await;
    assert_eq!(done.runner_id, Some(id_b.runner_id));
    let results: Vec<(i32,)> =
        sqlx::query_as("SELECT attempt FROM task_results WHERE task_id = $1")
            .bind(t.id)
            .fetch_all(c.store.pool())
            .await
            .unwrap();
    assert_eq!(
        results,
        vec![(done.attempt,)],
        "only the other runner's attempt reported"
    );
    let _ = a.kill();
    let _ = a.wait();
    b.stop().await.unwrap();
    c.stop().await;
    drop(net);
}
