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

fn show(dir: &std::path::Path, file: &str, env: &[(&str, &str)]) -> (i32, String) {
    std::fs::write(dir.join("c.toml"), file).unwrap();
    let mut cmd = xcmd::Cmd::new(env!("CARGO_BIN_EXE_backporcher-controller"), dir).args([
        "check-config",
        "--show",
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

/// Every variable of the reference's table works under its name, in the environment and as a
/// key of the file; the environment wins over the file; bad values are named.
#[tokio::test]
async fn the_reference_settings_work_under_their_names() {
    let (_store, url) = crate::store_and_url().await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "database_url = \"{url}\"\ndata_dir = \"state\"\nallowed_users = [\"alice\"]\nwebhook_secret = \"s\"\n"
    );
    let tail = "[github]\ntoken = \"ghp_x\"\n[model]\napi_key = \"sk-x\"\n";
    // Defaults: the reference's where they still make sense.
    let (code, out) = show(dir.path(), &format!("{base}{tail}"), &[]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "approval_mode = (not set",
        "default_model = sonnet",
        "coordinator_model = sonnet",
        "navigation_enabled = true",
        "max_ci_retries = 3",
        "max_task_retries = 3",
        "ci_check_interval = 10",
        "poll_interval = 60",
        "listen = 127.0.0.1:8080",
        "webhook_events = hold,failed,reverted",
        "cleanup.failed_days = 7",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    // The file's keys.
    let file = format!(
        "{base}approval_mode = \"review-all\"\ndefault_model = \"opus\"\ncoordinator_model = \"haiku\"\nnavigation_enabled = false\nmax_ci_retries = 5\nmax_task_retries = 1\nci_check_interval = 60\npoll_interval = 30\ndashboard_host = \"0.0.0.0\"\ndashboard_port = 9090\nwebhook_url = \"https://chat.example/hook\"\nwebhook_events = \"hold,failed,completed,paused\"\nsecure_cookies = true\n[cleanup]\nfailed_days = 0\n{tail}"
    );
    let (code, out) = show(dir.path(), &file, &[]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "approval_mode = review-all",
        "default_model = opus",
        "coordinator_model = haiku",
        "navigation_enabled = false",
        "max_ci_retries = 5",
        "max_task_retries = 1",
        "ci_check_interval = 60",
        "poll_interval = 30",
        "listen = 0.0.0.0:9090",
        "webhook_urls = 1",
        "webhook_events = hold,failed,completed,paused",
        "cleanup.failed_days = never",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    // The environment, under the reference's names, wins over the file.
    let env = [
        ("BACKPORCHER_APPROVAL_MODE", "full-auto"),
        ("BACKPORCHER_DEFAULT_MODEL", "haiku"),
        ("BACKPORCHER_COORDINATOR_MODEL", "opus"),
        ("BACKPORCHER_NAVIGATION_ENABLED", "1"),
        ("BACKPORCHER_MAX_CI_RETRIES", "2"),
        ("BACKPORCHER_MAX_TASK_RETRIES", "4"),
        ("BACKPORCHER_CI_CHECK_INTERVAL", "15"),
        ("BACKPORCHER_POLL_INTERVAL", "45"),
        ("BACKPORCHER_DASHBOARD_HOST", "127.0.0.1"),
        ("BACKPORCHER_DASHBOARD_PORT", "8181"),
        ("BACKPORCHER_WEBHOOK_URL", "https://other.example/hook"),
        ("BACKPORCHER_WEBHOOK_EVENTS", "failed"),
    ];
    let (code, out) = show(dir.path(), &file, &env);
    assert_eq!(code, 0, "{out}");
    for want in [
        "approval_mode = full-auto",
        "default_model = haiku",
        "coordinator_model = opus",
        "navigation_enabled = true",
        "max_ci_retries = 2",
        "max_task_retries = 4",
        "ci_check_interval = 15",
        "poll_interval = 45",
        "listen = 127.0.0.1:8181",
        // The variable replaces the file's `webhook_url` (`notify_urls` would be kept beside it).
        "webhook_urls = 1",
        "webhook_events = failed",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    // Bad values are errors that name the variable and what it takes.
    for (env, want) in [
        (
            ("BACKPORCHER_APPROVAL_MODE", "sometimes"),
            "approval mode `sometimes` (BACKPORCHER_APPROVAL_MODE",
        ),
        (
            ("BACKPORCHER_WEBHOOK_EVENTS", "hold,merges"),
            "webhook event `merges` is not one of: hold, failed, completed, paused, settings",
        ),
        (
            ("BACKPORCHER_MAX_CI_RETRIES", "50"),
            "BACKPORCHER_MAX_CI_RETRIES / `max_ci_retries` = 50 is outside 0–20",
        ),
        (
            ("BACKPORCHER_CI_CHECK_INTERVAL", "0"),
            "BACKPORCHER_CI_CHECK_INTERVAL / `ci_check_interval` = 0 is outside 1–3600",
        ),
        (
            ("BACKPORCHER_DASHBOARD_HOST", "example.com"),
            "dashboard host `example.com`",
        ),
        (("BACKPORCHER_DEFAULT_MODEL", "gpt"), "default model `gpt`"),
        (
            ("BACKPORCHER_REVIEW_MODEL", "sonnet"),
            "and BACKPORCHER_COORDINATOR_MODEL (its reference name) = `opus` differ",
        ),
    ] {
        let mut e = vec![env];
        if env.0 == "BACKPORCHER_REVIEW_MODEL" {
            e.push(("BACKPORCHER_COORDINATOR_MODEL", "opus"));
        }
        let (code, out) = check(dir.path(), &format!("{base}{tail}"), &e);
        assert_eq!(code, 1, "{env:?}: {out}");
        assert!(out.contains(want), "{want}: {out}");
    }
    // The navigation model is accepted with a warning saying navigation uses none; the task
    // timeout is the runner's.
    let (code, out) = check(
        dir.path(),
        &format!("{base}{tail}"),
        &[
            ("BACKPORCHER_NAVIGATION_MODEL", "sonnet"),
            ("BACKPORCHER_TASK_TIMEOUT", "1800"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: BACKPORCHER_NAVIGATION_MODEL")
            && out.contains("calls no model")
            && out.contains("warning: BACKPORCHER_TASK_TIMEOUT")
            && out.contains("runner setting"),
        "{out}"
    );
    // A configured approval mode that someone changed at run time since: check-config says the
    // run-time one stays.
    let store = controller::store::Store::connect(&url, 2).await.unwrap();
    store
        .apply_configured_approval_mode(Some("review-all"))
        .await
        .unwrap();
    store
        .set_approval_mode("full-auto", "user:olga")
        .await
        .unwrap();
    let (code, out) = check(
        dir.path(),
        &format!("{base}{tail}"),
        &[("BACKPORCHER_APPROVAL_MODE", "review-all")],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("the configured `review-all` was applied at an earlier start and user:olga changed it to `full-auto`"),
        "{out}"
    );
}

/// The configured approval mode against one changed at run time: a new or changed configured
/// value applies at a start; an unchanged one does not undo a run-time change.
#[tokio::test]
async fn a_run_time_approval_mode_survives_restarts_until_the_configuration_changes() {
    use controller::store::settings::ConfiguredMode;
    let store = crate::store().await;
    let mode = |s: &controller::store::Store| {
        let s = s.clone();
        async move { s.settings().await.unwrap().approval_mode }
    };
    assert!(matches!(
        store.apply_configured_approval_mode(None).await.unwrap(),
        ConfiguredMode::NotSet { ref mode, by: None } if mode == "review-merge"
    ));
    assert_eq!(
        store
            .apply_configured_approval_mode(Some("review-all"))
            .await
            .unwrap(),
        ConfiguredMode::Applied {
            old: "review-merge".into(),
            new: "review-all".into()
        }
    );
    assert_eq!(mode(&store).await, "review-all");
    let (old, s) = store
        .set_approval_mode("full-auto", "user:olga")
        .await
        .unwrap();
    assert_eq!(
        (old.as_str(), s.approval_mode_by.as_deref()),
        ("review-all", Some("user:olga"))
    );
    // Restart with the same configuration: the run-time value stays.
    assert_eq!(
        store
            .apply_configured_approval_mode(Some("review-all"))
            .await
            .unwrap(),
        ConfiguredMode::RunTimeWins {
            configured: "review-all".into(),
            mode: "full-auto".into(),
            by: Some("user:olga".into())
        }
    );
    assert_eq!(mode(&store).await, "full-auto");
    // The configuration changes: it applies.
    assert!(matches!(
        store
            .apply_configured_approval_mode(Some("review-merge"))
            .await
            .unwrap(),
        ConfiguredMode::Applied { .. }
    ));
    assert_eq!(mode(&store).await, "review-merge");
    // Unset, then set again to the same value: it applies again.
    store
        .set_approval_mode("full-auto", "user:olga")
        .await
        .unwrap();
    store.apply_configured_approval_mode(None).await.unwrap();
    assert_eq!(
        mode(&store).await,
        "full-auto",
        "unset: the stored one stays"
    );
    store
        .apply_configured_approval_mode(Some("review-merge"))
        .await
        .unwrap();
    assert_eq!(mode(&store).await, "review-merge");
    assert!(
        store
            .apply_configured_approval_mode(Some("yolo"))
            .await
            .is_err()
    );
}
