//! The operating-system details of running the server: which user it runs as, how it is tied to
//! this process's life, and how it is signalled. The only `unsafe` of the crate lives here.
#![allow(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;

use crate::Error;

/// An unprivileged account to run the server as when this process is root.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// `None` when this process is not root (the server then runs as ourselves).
pub(crate) fn service_user() -> Result<Option<User>, Error> {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let find = |wanted: &str| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[0] == wanted).then(|| User {
                name: wanted.to_owned(),
                uid: f[2].parse().unwrap_or(0),
                gid: f[3].parse().unwrap_or(0),
            })
        })
    };
    let wanted = std::env::var("PG_SERVICE_USER").ok();
    let user = match wanted.as_deref() {
        Some(name) => find(name),
        None => find("postgres").or_else(|| find("nobody")),
    };
    match user {
        Some(u) if u.uid != 0 => Ok(Some(u)),
        _ => Err(Error::NoServiceUser),
    }
}

pub(crate) fn run_as(cmd: &mut std::process::Command, user: &User) {
    cmd.uid(user.uid).gid(user.gid);
}

/// Asks the kernel to send the server SIGINT (fast shutdown) when the thread that spawned it ends.
/// The spawning thread lives exactly as long as the server, so in practice: when this process dies.
pub(crate) fn die_with_parent(cmd: &mut std::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub(crate) fn signal_fast_shutdown(pid: u32) {
    send(pid, libc::SIGINT);
}

pub(crate) fn signal_kill(pid: u32) {
    send(pid, libc::SIGKILL);
}

fn send(pid: u32, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}
