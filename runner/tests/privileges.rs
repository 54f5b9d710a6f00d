//! The runner's privileges from the host's side: the systemd unit grants exactly the capabilities
//! `runner::privileges` lists, `systemd-analyze verify` accepts both units, and `backporcher-runner
//! check` run as an unprivileged user with those capabilities (and the docker group) passes —
//! while dropping any one of them fails the check that needs it, naming it. Needs root, Docker
//! and `setpriv`; skipped otherwise (or with `BP_SKIP_DOCKER=1`).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The values of `key=` lines of a unit file, split on whitespace.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

#[test]
fn the_runner_unit_grants_exactly_what_the_runner_needs() {
    let unit =
        std::fs::read_to_string(root().join("deploy/systemd/backporcher-runner.service")).unwrap();
    let mut needed: Vec<String> = runner::privileges::CAPABILITIES
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    needed.sort();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let mut granted = unit_values(&unit, key);
        granted.sort();
        assert_eq!(granted, needed, "{key}");
    }
    assert_eq!(
        unit_values(&unit, "SupplementaryGroups"),
        vec![runner::privileges::DOCKER_GROUP]
    );
    let user = unit_values(&unit, "User");
    assert!(
        user.len() == 1 && user[0] != "root",
        "a dedicated user, not root: {user:?}"
    );
    assert!(unit.contains("NoNewPrivileges=yes"));
    let controller =
        std::fs::read_to_string(root().join("deploy/systemd/backporcher-controller.service"))
            .unwrap();
    assert!(
        unit_values(&controller, "CapabilityBoundingSet").is_empty()
            && controller.contains("CapabilityBoundingSet=\n"),
        "the controller needs no capability"
    );
}

#[test]
fn systemd_accepts_both_units() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("systemd-analyze is not installed: unit verification skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "backporcher-runner.service",
        "backporcher-controller.service",
    ] {
        // The binaries are not installed here: point ExecStart at one that is.
        let text = std::fs::read_to_string(root().join("deploy/systemd").join(name))
            .unwrap()
            .replace("/usr/local/bin/backporcher-runner", "/bin/true")
            .replace("/usr/local/bin/backporcher-controller", "/bin/true");
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = xcmd::Cmd::new(analyze, dir.path())
            .arg("verify")
            .arg(&path)
            .to_std()
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
    }
}

/// `backporcher-runner check` as user `nobody` (and the docker group) with `caps`.
fn check_with(caps: &[&str], state: &Path, port: u16) -> (bool, String) {
    let docker_gid = std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&runner::privileges::DOCKER_GROUP)).then(|| f[2].to_owned())
        })
        .expect("a docker group");
    let list = |sign: &str| {
        let mut v = vec!["-all".to_owned()];
        v.extend(
            caps.iter()
                .map(|c| format!("{sign}{}", c.trim_start_matches("CAP_").to_lowercase())),
        );
        v.join(",")
    };
    let out = xcmd::Cmd::new("setpriv", state)
        .args([
            "--reuid=65534",
            "--regid=65534",
            &format!("--groups={docker_gid}"),
            &format!("--inh-caps={}", list("+")),
            &format!("--ambient-caps={}", list("+")),
            &format!("--bounding-set={}", list("+")),
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_backporcher-runner"))
        .arg("--state-dir")
        .arg(state)
        .args(["check", "--gateway-port", &port.to_string()])
        .to_std()
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_runner_works_with_exactly_its_capabilities_and_not_one_fewer() {
    if std::env::var("BP_SKIP_DOCKER").is_ok_and(|v| v == "1")
        || !Path::new("/var/run/docker.sock").exists()
        || !Path::new("/usr/bin/setpriv").exists()
        || !std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    {
        eprintln!("needs root, Docker and setpriv: skipped");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    xcmd::Cmd::new("chown", state.path())
        .args(["65534:65534"])
        .arg(state.path())
        .to_std()
        .status()
        .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let all: Vec<&str> = runner::privileges::CAPABILITIES
        .iter()
        .map(|(c, _)| *c)
        .collect();
    let (ok, said) = check_with(&all, state.path(), port);
    assert!(ok, "with the unit's capabilities:\n{said}");
    for step in [
        "docker engine",
        "sandbox networks",
        "firewall",
        "a sandbox reads a handed-over tree",
        "hand-over to the sandbox user",
    ] {
        assert!(said.contains(&format!("ok    {step}")), "{step}:\n{said}");
    }
    for (missing, fails) in [
        ("CAP_NET_ADMIN", "FAIL  firewall"),
        ("CAP_CHOWN", "FAIL  hand-over"),
        ("CAP_DAC_OVERRIDE", "FAIL  hand-over"),
    ] {
        let fewer: Vec<&str> = all.iter().copied().filter(|c| *c != missing).collect();
        let (ok, said) = check_with(&fewer, state.path(), port);
        assert!(!ok, "without {missing} the check passed:\n{said}");
        assert!(said.contains(fails), "without {missing}:\n{said}");
        assert!(
            said.contains(missing),
            "the failure names {missing}:\n{said}"
        );
    }
}
