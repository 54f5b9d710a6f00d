//! The host firewall around the sandbox networks (IPv4 `iptables`; the networks have no IPv6).
//!
//! Two chains of our own, each jumped to from the top of a built-in chain, so nothing another
//! tool put earlier in that chain can let sandbox traffic past them:
//! - `BP-SANDBOX-IN` (from `INPUT`, for traffic from a sandbox bridge to the host itself): each
//!   runner's gateway port is accepted on both bridges, everything else from them is dropped — a
//!   sandbox reaches no service of the host but its model gateway;
//! - `BP-SANDBOX-OUT` (from `DOCKER-USER`, for traffic the host forwards from the `open` bridge):
//!   the host's DNS servers and the operator's allowed ranges are accepted, then link-local
//!   (cloud metadata), loopback, private, shared, benchmark, multicast and reserved ranges are
//!   dropped — an `open` sandbox reaches the internet, not the host's networks.
//!
//! Inter-container traffic on each bridge is off by the network's own option (see
//! [`crate::sandbox`]). [`Firewall::ensure`] installs what is missing and says how many rules were
//! missing; the executor runs it at start and then periodically, so a firewall reload that
//! removed the rules is repaired within one interval, and a sandbox never starts while they
//! cannot be put back.

use anyhow::Context;

/// Bridge of the `gateway-only` network.
pub const GATEWAY_BRIDGE: &str = "bp-gw0";
/// Bridge of the `open` network.
pub const OPEN_BRIDGE: &str = "bp-open0";
/// Chain for traffic from the bridges to the host.
pub const IN_CHAIN: &str = "BP-SANDBOX-IN";
/// Chain for traffic forwarded from the `open` bridge.
pub const OUT_CHAIN: &str = "BP-SANDBOX-OUT";

/// Destinations an `open` sandbox never reaches unless allowed.
pub const BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The rules of one runner.
#[derive(Debug, Clone)]
pub struct Firewall {
    /// The runner's gateway port.
    pub gateway_port: u16,
    /// Ranges an `open` sandbox may reach despite [`BLOCKED`] (CIDRs).
    pub open_allow: Vec<String>,
    /// DNS servers an `open` sandbox may reach (port 53).
    pub dns: Vec<String>,
}

/// One rule: (table chain, rule spec, insert at the top rather than append).
type Rule = (&'static str, Vec<String>, bool);

impl Firewall {
    /// The rules for `gateway_port`, allowing `open_allow`, with the host's DNS servers.
    pub fn new(gateway_port: u16, open_allow: Vec<String>) -> Self {
        Self {
            gateway_port,
            open_allow,
            dns: host_dns_servers(),
        }
    }

    fn rules(&self) -> Vec<Rule> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let port = self.gateway_port.to_string();
        let mut rules: Vec<Rule> = Vec::new();
        for bridge in [GATEWAY_BRIDGE, OPEN_BRIDGE] {
            rules.push(("INPUT", s(&["-i", bridge, "-j", IN_CHAIN]), true));
            rules.push((
                IN_CHAIN,
                s(&["-i", bridge, "-p", "tcp", "--dport", &port, "-j", "ACCEPT"]),
                true,
            ));
            rules.push((IN_CHAIN, s(&["-i", bridge, "-j", "DROP"]), false));
        }
        rules.push((
            "DOCKER-USER",
            s(&["-i", OPEN_BRIDGE, "-j", OUT_CHAIN]),
            true,
        ));
        for dns in &self.dns {
            for proto in ["udp", "tcp"] {
                rules.push((
                    OUT_CHAIN,
                    s(&["-d", dns, "-p", proto, "--dport", "53", "-j", "ACCEPT"]),
                    true,
                ));
            }
        }
        for allow in &self.open_allow {
            rules.push((OUT_CHAIN, s(&["-d", allow, "-j", "ACCEPT"]), true));
        }
        for range in BLOCKED {
            rules.push((OUT_CHAIN, s(&["-d", range, "-j", "DROP"]), false));
        }
        rules
    }

    /// Installs every missing rule (creating our chains if needed); returns how many were
    /// missing. An error means the sandbox networks are not safe to use.
    pub fn ensure(&self) -> anyhow::Result<usize> {
        for chain in [IN_CHAIN, OUT_CHAIN] {
            ensure_chain(chain)?;
        }
        if ensure_chain("DOCKER-USER")? {
            anyhow::ensure!(
                ipt(&["-I", "FORWARD", "-j", "DOCKER-USER"])?,
                "cannot send forwarded traffic through the DOCKER-USER chain; {NEEDS_NET_ADMIN}"
            );
        }
        let mut missing = 0;
        for (chain, spec, top) in self.rules() {
            let mut check = vec!["-C", chain];
            check.extend(spec.iter().map(String::as_str));
            if ipt(&check)? {
                continue;
            }
            missing += 1;
            let mut add = vec![if top { "-I" } else { "-A" }, chain];
            add.extend(spec.iter().map(String::as_str));
            anyhow::ensure!(
                ipt(&add)?,
                "iptables refused `{}`; {NEEDS_NET_ADMIN}",
                add.join(" ")
            );
        }
        Ok(missing)
    }

    /// Removes this runner's gateway-port rules (the drops stay: the networks stay closed).
    pub fn remove_port_rules(&self) {
        for (chain, spec, _) in self.rules() {
            if spec.iter().any(|a| a == "--dport") && spec.iter().any(|a| a == "ACCEPT") {
                let mut del = vec!["-D", chain];
                del.extend(spec.iter().map(String::as_str));
                let _ = ipt(&del);
            }
        }
    }
}

/// What an error says when iptables refuses the runner.
const NEEDS_NET_ADMIN: &str = "the runner needs CAP_NET_ADMIN (run it as root, or with the \
     capabilities deploy/systemd/backporcher-runner.service grants)";

/// Creates `chain` unless it exists; true when this call created it. Another runner of the host
/// may create it at the same moment (two runners starting together, each finding it missing):
/// a refused `-N` is an error only if the chain is still missing after it.
fn ensure_chain(chain: &str) -> anyhow::Result<bool> {
    // `-N` fails when the chain exists; `-L` tells which.
    if ipt(&["-n", "-L", chain])? {
        return Ok(false);
    }
    if ipt(&["-N", chain])? {
        return Ok(true);
    }
    anyhow::ensure!(
        ipt(&["-n", "-L", chain])?,
        "iptables refused to create chain {chain}; {NEEDS_NET_ADMIN}"
    );
    Ok(false)
}

fn ipt(args: &[&str]) -> anyhow::Result<bool> {
    let out = xcmd::Cmd::new("iptables", "/")
        .args(["-w", "5"])
        .args(args)
        .to_std()
        .output()
        .context("cannot run iptables (needed to fence the sandbox networks)")?;
    Ok(out.status.success())
}

/// The IPv4 name servers of this host (what Docker's embedded DNS forwards to).
pub fn host_dns_servers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_owned)
        .collect()
}

/// Whether a Docker engine version has the internal-network DNS leak of CVE-2024-29018 (fixed in
/// 23.0.11, 25.0.5 and 26.0.0; every 24.x is affected).
pub fn dns_leak_affected(version: &str) -> bool {
    let nums: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let v = (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
        nums.get(2).copied().unwrap_or(0),
    );
    match v.0 {
        0..=22 => true,
        23 => v < (23, 0, 11),
        24 => true,
        25 => v < (25, 0, 5),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runners of one host starting together each find the chains missing and create them: every
    /// one succeeds (one creates the chain, the others find it made). Before, all but one failed
    /// with "iptables refused to create chain". Needs root, as the runner does.
    #[test]
    fn runners_starting_together_all_find_their_chain() {
        let chain = format!("BP-TEST-{}", std::process::id());
        let made: Vec<anyhow::Result<bool>> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..6).map(|_| s.spawn(|| ensure_chain(&chain))).collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let _ = ipt(&["-X", &chain]);
        let created = made.iter().filter(|m| matches!(m, Ok(true))).count();
        assert!(made.iter().all(Result::is_ok) && created == 1, "{made:?}");
    }

    #[test]
    fn the_dns_leak_versions() {
        for v in ["20.10.24+dfsg1", "23.0.10", "24.0.7", "25.0.4"] {
            assert!(dns_leak_affected(v), "{v}");
        }
        for v in ["23.0.11", "25.0.5", "26.0.0", "27.3.1"] {
            assert!(!dns_leak_affected(v), "{v}");
        }
    }

    #[test]
    fn drops_come_after_accepts_and_every_blocked_range_is_dropped() {
        let f = Firewall {
            gateway_port: 4180,
            open_allow: vec!["10.1.0.0/16".into()],
            dns: vec!["10.255.255.53".into()],
        };
        let rules = f.rules();
        for range in BLOCKED {
            assert!(
                rules
                    .iter()
                    .any(|(c, r, top)| *c == OUT_CHAIN && !top && r[1] == *range && r[3] == "DROP"),
                "{range}"
            );
        }
        // Accepts are inserted at the top, drops appended: accepts always come first.
        assert!(
            rules
                .iter()
                .filter(|(_, r, _)| r.contains(&"ACCEPT".to_string()))
                .all(|(_, _, top)| *top)
        );
        assert!(
            rules
                .iter()
                .filter(|(_, r, _)| r.contains(&"DROP".to_string()))
                .all(|(_, _, top)| !top)
        );
    }
}
