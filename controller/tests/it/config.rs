//! `backporcher-controller check-config`: a TOML file under environment variables and flags,
//! unknown keys named, every problem explained, exit status 1 only for errors.

fn check(dir: &std::path::Path, file: &str, env: &[(&str, &str)]) -> (i32, String) {
    std::fs::write(dir.join("c.toml"), file).unwrap();
    let mut cmd = xcmd::Cmd::new(env!("CARGO_BIN_EXE_backporcher-controller"), dir).args([
        "check-config",
        "--config",
        "c.toml",
    ]);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    let out = cmd.to_std().output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn check_config_explains_each_problem() {
    let (_store, url) = crate::store_and_url().await;
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = check(
        dir.path(),
        "listen = \"127.0.0.1:9\"\ncolour = \"blue\"\n",
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("colour"), "the unknown key is named: {out}");

    let good = format!(
        "database_url = \"{url}\"\ndata_dir = \"state\"\nallowed_users = [\"alice\"]\nwebhook_secret = \"s\"\nnotify_urls = [\"ftp://chat\"]\n[github]\ntoken = \"ghp_x\"\n[model]\napi_key = \"sk-x\"\n"
    );
    let (code, out) = check(dir.path(), &good, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: notification URL `ftp://chat`"),
        "{out}"
    );
    assert!(
        !out.contains("no GitHub credentials") && !out.contains("no allowed users"),
        "{out}"
    );

    // The environment wins over the file; a broken database is an error that says what to check.
    let fixed = good.replace("ftp://chat", "https://chat.example/hook");
    let (code, out) = check(dir.path(), &fixed, &[]);
    assert_eq!((code, out.trim()), (0, "configuration OK"), "{out}");
    let (code, out) = check(
        dir.path(),
        &fixed,
        &[("DATABASE_URL", "postgres://nobody:wrong@127.0.0.1:1/none")],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DATABASE_URL"), "{out}");
    // Budgets are dollars; a task budget of nothing or a negative daily budget is named.
    let budgets = fixed.replace(
        "[github]",
        "task_budget_usd = 0\ndaily_budget_usd = -5\n[github]",
    );
    let (code, out) = check(dir.path(), &budgets, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("task_budget_usd = 0 would refuse every model call")
            && out.contains("`daily_budget_usd = -5` is not an amount"),
        "{out}"
    );
    let budgets = fixed.replace(
        "[github]",
        "task_budget_usd = 2.5\ndaily_budget_usd = 40\n[github]",
    );
    let (code, out) = check(dir.path(), &budgets, &[]);
    assert_eq!((code, out.trim()), (0, "configuration OK"), "{out}");
    // Retention in days (0: forever); a value that is not a number of days is named.
    let kept = fixed.replace(
        "[github]",
        "metrics_seconds = 0\n[retention]\nlogs_days = -3\naudit_days = 0\n[github]",
    );
    let (code, out) = check(dir.path(), &kept, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("`[retention] logs_days = -3` is not a number of days")
            && out.contains("`metrics_seconds = 0` is outside 1–3600")
            && !out.contains("audit_days"),
        "{out}"
    );
    let (code, out) = check(
        dir.path(),
        &fixed.replace("[github]", "[retention]\nlog_days = 3\n[github]"),
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("log_days"), "the unknown key is named: {out}");
    // HTTPS: a certificate needs its key; the controller's CA and your certificate exclude each other.
    for (extra, want) in [
        (
            "tls_cert = \"c.pem\"\n",
            "`tls_cert` and `tls_key` go together",
        ),
        (
            "tls_own_ca = true\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
            "`tls_own_ca` and `tls_cert`/`tls_key` exclude each other",
        ),
    ] {
        let (code, out) = check(
            dir.path(),
            &fixed.replace("[github]", &format!("{extra}[github]")),
            &[],
        );
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(want), "{want}: {out}");
    }
    // The price table is the operator's to set; a price that is not one is named.
    let (code, out) = check(
        dir.path(),
        &format!("{fixed}[prices]\nopus = [5, 25]\nmystery = [-1, 3]\n"),
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("`[prices] mystery = [-1, 3]`"), "{out}");
    let (code, out) = check(
        dir.path(),
        &format!("{fixed}[prices]\nopus = [5, 25]\nsonnet = [3, 15]\n"),
        &[],
    );
    assert_eq!((code, out.trim()), (0, "configuration OK"), "{out}");
    // Warnings alone do not fail.
    let (code, out) = check(dir.path(), &format!("database_url = \"{url}\"\n"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: no GitHub credentials") && out.contains("warning: no allowed users"),
        "{out}"
    );
}
