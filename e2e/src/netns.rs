//! Hosts of a test network: network namespaces, each with its own address on one bridge, joined
//! to it by a veth pair whose host end can be taken down (a partition) and up again (healed).
//! The test process itself is the host at `.1` (the bridge's own address). Bridged traffic
//! between namespaces is let through the host firewall's `FORWARD` chain for this bridge only
//! (Docker's policy there drops it). Needs root and iproute2; everything is removed on drop.

use std::net::{IpAddr, Ipv4Addr};

/// Runs `prog` with `args`, failing with what it said.
fn run(prog: &str, args: &[&str]) {
    let out = xcmd::Cmd::new(prog, std::env::temp_dir())
        .args(args)
        .to_std()
        .output()
        .unwrap_or_else(|e| panic!("{prog} cannot run: {e}"));
    assert!(
        out.status.success(),
        "{prog} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `prog` with `args`, ignoring the outcome (clean-up of what may not exist).
fn try_run(prog: &str, args: &[&str]) {
    let _ = xcmd::Cmd::new(prog, std::env::temp_dir())
        .args(args)
        .to_std()
        .output();
}

/// Whether this process may build a network (root, iproute2); says why not on stderr.
pub fn available() -> bool {
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
        eprintln!("needs root and iproute2 (network namespaces): skipped");
    }
    root && has_ip
}

/// A bridge and the hosts on it.
pub struct Net {
    tag: u32,
    subnet: u8,
    bridge: String,
    hosts: Vec<Host>,
    forward_rule: Vec<String>,
}

/// One host: a namespace and the host end of its link.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name (`ip netns exec <ns> …`).
    pub ns: String,
    /// The link's end on the bridge.
    veth: String,
    /// Its address.
    pub addr: IpAddr,
}

impl Net {
    /// A bridge `10.231.<subnet>.0/24` of its own with this process at `.1`. Its names and subnet
    /// are unique to this network among those of this process (tests in one binary build theirs
    /// at once) and of other processes as far as the process id tells them apart; leftovers of
    /// an earlier run with the same names are removed first.
    pub fn create() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let tag = (std::process::id() % 1000) * 10 + n;
        let subnet = (tag % 200) as u8 + 20;
        let bridge = format!("bpbr{tag}");
        let forward_rule = ["FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]
            .map(String::from)
            .to_vec();
        let net = Self {
            tag,
            subnet,
            bridge,
            hosts: Vec::new(),
            forward_rule,
        };
        net.clean_leftovers();
        run("ip", &["link", "add", &net.bridge, "type", "bridge"]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.231.{subnet}.1/24"),
                "dev",
                &net.bridge,
            ],
        );
        run("ip", &["link", "set", &net.bridge, "up"]);
        let mut insert = vec!["-I"];
        insert.extend(net.forward_rule.iter().map(String::as_str));
        try_run("iptables", &insert);
        net
    }

    /// This process's address on the bridge.
    pub fn own_addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 231, self.subnet, 1))
    }

    /// Adds host `name` at `.octet` (2–254).
    pub fn add_host(&mut self, name: &str, octet: u8) -> Host {
        let host = Host {
            ns: format!("bp-{}-{name}", self.tag),
            veth: format!("bpv{}x{octet}", self.tag),
            addr: IpAddr::V4(Ipv4Addr::new(10, 231, self.subnet, octet)),
        };
        try_run("ip", &["netns", "del", &host.ns]);
        try_run("ip", &["link", "del", &host.veth]);
        run("ip", &["netns", "add", &host.ns]);
        let peer = format!("{}p", host.veth);
        run(
            "ip",
            &[
                "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
            ],
        );
        run("ip", &["link", "set", &peer, "netns", &host.ns]);
        run("ip", &["link", "set", &host.veth, "master", &self.bridge]);
        run("ip", &["link", "set", &host.veth, "up"]);
        run(
            "ip",
            &[
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                &peer,
            ],
        );
        run("ip", &["-n", &host.ns, "link", "set", &peer, "up"]);
        run("ip", &["-n", &host.ns, "link", "set", "lo", "up"]);
        self.hosts.push(host.clone());
        host
    }

    /// Cuts (`false`) or heals (`true`) a host's link.
    pub fn link(&self, host: &Host, up: bool) {
        run(
            "ip",
            &["link", "set", &host.veth, if up { "up" } else { "down" }],
        );
    }

    fn clean_leftovers(&self) {
        let out = xcmd::Cmd::new("ip", std::env::temp_dir())
            .args(["netns", "list"])
            .to_std()
            .output();
        let prefix = format!("bp-{}-", self.tag);
        if let Ok(out) = out {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(ns) = line
                    .split_whitespace()
                    .next()
                    .filter(|n| n.starts_with(&prefix))
                {
                    try_run("ip", &["netns", "del", ns]);
                }
            }
        }
        try_run("ip", &["link", "del", &self.bridge]);
    }
}

impl Host {
    /// A command that runs `program` inside this host's namespace.
    pub fn command(&self, program: &std::path::Path, cwd: &std::path::Path) -> xcmd::Cmd {
        xcmd::Cmd::new("ip", cwd)
            .args(["netns", "exec", &self.ns])
            .arg(program)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in &self.hosts {
            try_run("ip", &["link", "del", &host.veth]);
            try_run("ip", &["netns", "del", &host.ns]);
        }
        try_run("ip", &["link", "del", &self.bridge]);
        let mut delete = vec!["-D"];
        delete.extend(self.forward_rule.iter().map(String::as_str));
        try_run("iptables", &delete);
    }
}

/// Forwards TCP connections arriving at `listen` to `target`, until the returned handle is
/// aborted: how hosts on the bridge reach a server that only listens on loopback (the test's
/// PostgreSQL). A connection the target refuses is closed at once, as the target would.
pub async fn forward(
    listen: std::net::SocketAddr,
    target: std::net::SocketAddr,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}
