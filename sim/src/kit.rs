//! Small pieces every test crate shares: waiting for a condition, and git with a test identity.

use std::path::Path;
use std::time::Duration;

/// Waits for `cond` to hold, polling every 20 ms; fails the test after `timeout`, naming `what`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `git args` in `cwd` as the test identity and returns its standard output as written;
/// fails the test with git's error output when git fails.
pub fn git_out(cwd: &Path, args: &[&str]) -> String {
    let out = xcmd::Cmd::new("git", cwd)
        .args(["-c", "user.name=Test", "-c", "user.email=test@localhost"])
        .args(args)
        .to_std()
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        cwd.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`git_out`] trimmed: for commands that print one value (a hash, a ref).
pub fn git(cwd: &Path, args: &[&str]) -> String {
    git_out(cwd, args).trim().to_owned()
}
