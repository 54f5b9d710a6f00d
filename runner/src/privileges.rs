//! What the runner needs from its host beyond an ordinary user, and why — the one list the
//! systemd unit grants (`deploy/systemd/backporcher-runner.service`, which a test checks against
//! it) and [`check`] exercises, so an operator can run the runner as a dedicated user with these
//! capabilities instead of as root.

use std::path::Path;

use crate::firewall::Firewall;
use crate::sandbox::{Sandbox, SandboxConfig};

/// Linux capabilities, each with the operation that needs it.
pub const CAPABILITIES: &[(&str, &str)] = &[
    (
        "CAP_NET_ADMIN",
        "installs and keeps the firewall chains around the sandbox networks (iptables; a host on \
         the legacy iptables backend also needs CAP_NET_RAW)",
    ),
    (
        "CAP_CHOWN",
        "hands checkouts, setup trees and secret files to the sandbox user (uid 1000)",
    ),
    (
        "CAP_DAC_OVERRIDE",
        "reads what the sandbox user wrote and removes its work directories afterwards",
    ),
];

/// The group whose members may use the Docker engine's socket.
pub const DOCKER_GROUP: &str = "docker";

/// One check: what was checked, and what was found or what to do.
pub type Finding = (&'static str, Result<String, String>);

/// Checks that this host lets the runner do its work with the privileges it has now: the Docker
/// engine answers, the agent image is there, the sandbox networks and their firewall can be put
/// in place, and a tree can be handed to the sandbox user and removed again. Changes nothing the
/// runner would not change at start (the networks and firewall rules it installs are its own).
pub async fn check(state_dir: &Path, image: &str, gateway_port: u16) -> Vec<Finding> {
    let mut found: Vec<Finding> = Vec::new();
    let sandbox = match Sandbox::connect(SandboxConfig {
        image: image.to_owned(),
        ..SandboxConfig::default()
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            found.push((
                "docker engine",
                Err(format!(
                    "{e:#}; the runner's user must be in the `{DOCKER_GROUP}` group (or root)"
                )),
            ));
            return found;
        }
    };
    found.push((
        "docker engine",
        sandbox
            .check_engine()
            .await
            .map(|v| format!("version {v}"))
            .map_err(|e| format!("{e:#}; the runner's user must be in the `{DOCKER_GROUP}` group")),
    ));
    found.push((
        "agent image",
        if sandbox.has_image(image).await {
            Ok(image.to_owned())
        } else {
            Err(format!(
                "`{image}` is not on this host; build it: bash deploy/agent/build-offline.sh"
            ))
        },
    ));
    found.push((
        "sandbox networks",
        sandbox
            .ensure_networks()
            .await
            .map(|(gw, open)| format!("gateway-only at {gw}, open at {open}"))
            .map_err(|e| format!("{e:#}")),
    ));
    let firewall = Firewall::new(gateway_port, Vec::new());
    let fw = firewall.clone();
    let ensured = tokio::task::spawn_blocking(move || fw.ensure()).await;
    found.push((
        "firewall",
        match ensured {
            Ok(Ok(added)) => Ok(format!("chains in place ({added} rules added)")),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(e.to_string()),
        },
    ));
    firewall.remove_port_rules();
    let probe = state_dir.join("check-handover");
    let tree = probe.join("tree");
    let token = format!("probe-{}", uuid::Uuid::new_v4().simple());
    let handed = async {
        tokio::fs::create_dir_all(&tree).await?;
        tokio::fs::write(tree.join("file"), token.as_bytes()).await?;
        crate::workspace::give_file_to_sandbox(&tree).await?;
        anyhow::Ok(())
    }
    .await;
    let handed_ok = handed.is_ok();
    // A sandbox reads the tree through a bind mount: the path the runner names must be one the
    // Docker engine resolves on its host (a runner in a container needs its state directory at
    // the same path on both sides).
    if handed_ok {
        found.push((
            "a sandbox reads a handed-over tree",
            sandbox_reads(&sandbox, &probe, &tree, &token).await,
        ));
    }
    let removed = tokio::fs::remove_dir_all(&probe).await;
    found.push((
        "hand-over to the sandbox user",
        handed
            .and_then(|()| removed.map_err(anyhow::Error::from))
            .map(|()| "a tree was handed to uid 1000 and removed again".to_owned())
            .map_err(|e| {
                format!("{e:#}; the runner needs CAP_CHOWN and CAP_DAC_OVERRIDE (or root)")
            }),
    ));
    let _ = tokio::fs::remove_dir_all(&probe).await;
    found
}

/// Runs the agent image with `tree` mounted, without network, and reads the probe file back.
/// The output is searched for `token` rather than compared: the image's entrypoint probes its
/// gateway relay, and with no gateway behind it the relay's complaint can land after the file.
async fn sandbox_reads(
    sandbox: &Sandbox,
    socket_dir: &Path,
    tree: &Path,
    token: &str,
) -> Result<String, String> {
    let run = crate::sandbox::RunSpec {
        name: format!("check-{}", uuid::Uuid::new_v4().simple()),
        cmd: vec!["cat".into(), "/workspace/file".into()],
        env: Vec::new(),
        mounts: vec![(tree.to_owned(), "/workspace".into(), true)],
        egress: crate::sandbox::Egress::None {
            socket_dir: socket_dir.to_owned(),
        },
        labels: std::collections::HashMap::new(),
        wall: std::time::Duration::from_secs(60),
        idle: std::time::Duration::from_secs(60),
        image: None,
        commit_to: None,
    };
    let mut out = Vec::new();
    let ended = sandbox
        .run(&run, &tokio_util::sync::CancellationToken::new(), |_, b| {
            out.extend_from_slice(b)
        })
        .await;
    let out = String::from_utf8_lossy(&out).trim().to_owned();
    match ended {
        Ok(crate::sandbox::Ended::Exited(0)) if out.lines().any(|l| l.contains(token)) => {
            Ok("the agent image ran as the sandbox user and read it through a bind mount".into())
        }
        Ok(e) => Err(format!(
            "the sandbox ended {e:?} and printed `{out}`; the state directory must be at the same path for the runner and the Docker engine (a runner in a container mounts it at the host's path)"
        )),
        Err(e) => Err(format!("{e:#}")),
    }
}
