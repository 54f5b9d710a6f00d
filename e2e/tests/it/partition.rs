//! A runner on a host of its own — a network namespace with its own address, joined to the
//! controller's host by a veth pair on a bridge — dialing the controller at that bridge address
//! over mTLS (the server certificate checked against the address dialed). The link is cut past
//! the runner's lease: the controller takes the task back and a runner on another host completes
//! it; the link is healed: the cut-off runner stops its attempt within seconds and nothing it
//! reports is taken. Needs root and `ip`; skipped otherwise.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use e2e::harness::{Options, TestController, spawn_runner, state_dir};

use crate::executor;

/// Runs `ip` with `args`, failing the test with what it said.
fn ip(args: &[&str]) {
    let out = xcmd::Cmd::new("ip", std::env::temp_dir())
        .args(args)
        .to_std()
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rig's links and namespace, removed whatever the test's end.
struct Rig {
    bridge: String,
    ns: String,
    veth: String,
}

impl Rig {
    fn new(tag: u32, subnet: u8) -> Self {
        let rig = Self {
            bridge: format!("bpbr{tag}"),
            ns: format!("bp-host-{tag}"),
            veth: format!("bpv{tag}"),
        };
        rig.clean();
        ip(&["link", "add", &rig.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("10.231.{subnet}.1/24"),
            "dev",
            &rig.bridge,
        ]);
        ip(&["link", "set", &rig.bridge, "up"]);
        ip(&["netns", "add", &rig.ns]);
        let peer = format!("{}p", rig.veth);
        ip(&[
            "link", "add", &rig.veth, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &rig.ns]);
        ip(&["link", "set", &rig.veth, "master", &rig.bridge]);
        ip(&["link", "set", &rig.veth, "up"]);
        ip(&[
            "-n",
            &rig.ns,
            "addr",
            "add",
            &format!("10.231.{subnet}.2/24"),
            "dev",
            &peer,
        ]);
        ip(&["-n", &rig.ns, "link", "set", &peer, "up"]);
        ip(&["-n", &rig.ns, "link", "set", "lo", "up"]);
        rig
    }

    /// Cuts (`false`) or heals (`true`) the runner host's link.
    fn link(&self, up: bool) {
        ip(&["link", "set", &self.veth, if up { "up" } else { "down" }]);
    }

    fn clean(&self) {
        for args in [
            vec!["link", "del", self.veth.as_str()],
            vec!["link", "del", self.bridge.as_str()],
            vec!["netns", "del", self.ns.as_str()],
        ] {
            let _ = xcmd::Cmd::new("ip", std::env::temp_dir())
                .args(args)
                .to_std()
                .output();
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.clean();
    }
}

fn can_run() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let has_ip = xcmd::Cmd::new("ip", std::env::temp_dir())
        .args(["netns", "list"])
        .to_std()
        .output()
        .is_ok_and(|o| o.status.success());
    if !(root && has_ip) {
        eprintln!("needs root and iproute2 (network namespaces): partition test skipped");
    }
    root && has_ip
}

#[tokio::test]
async fn a_runner_cut_off_past_its_lease_stops_its_work_when_the_link_heals() {
    if !can_run() {
        return;
    }
    let tag = std::process::id() % 100_000;
    let subnet = (std::process::id() % 200) as u8 + 20;
    let rig = Rig::new(tag, subnet);
    let controller_ip = IpAddr::V4(Ipv4Addr::new(10, 231, subnet, 1));
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
    let mut a = xcmd::Cmd::new("ip", &dir_a)
        .args(["netns", "exec", &rig.ns])
        .arg(env!("CARGO_BIN_EXE_e2e-runner"))
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
    rig.link(false);
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
    rig.link(true);
    let healed = Instant::now();
    let a_pid = a.id();
    let e = exec.clone();
    e2e::harness::eventually(
        Duration::from_secs(20),
        "the cut-off runner to stop its attempt",
        move || {
            let e = e.clone();
            async move { e.ended().iter().any(|r| r.2 == a_pid) }
        },
    )
    .await;
    let stopped_after = healed.elapsed();
    let ended = exec.ended();
    assert_eq!(
        ended.iter().find(|r| r.2 == a_pid).unwrap().3,
        "Canceled",
        "{ended:?}"
    );
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
    drop(rig);
}
