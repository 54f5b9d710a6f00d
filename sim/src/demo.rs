//! The offline demo's world: a sample repository with labelled sample issues on the GitHub
//! simulator, and the scripted model answers that take each issue to a merged pull request (an
//! agent that writes the file the issue asks for, a triage, an approving review). Shared by
//! `backporcher-up` and the `backporcher-sims` service of the compose file's `sims` profile.
//!
//! The samples show what the system does beyond writing code: one's first commit fails CI (a
//! check rule on the simulator) and the agent fixes it from the failed job's log; one gets a
//! review the reviewer will not decide, so it waits for a person's approval. Any other issue
//! (one a person files) gets the fallback agent: a note quoting the issue, said to be written
//! by a scripted model.

use std::sync::Arc;
use std::time::Duration;

use crate::github::GitHubSim;
use crate::model::{ModelSim, Script};

/// The sample repository.
pub const REPO: &str = "demo/widgets";
/// The GitHub login that files the sample issues (the one allowed to trigger work).
pub const USER: &str = "demo";
/// The token the GitHub simulator accepts from the controller.
pub const GITHUB_TOKEN: &str = "ghs_demo_token";
/// The demo user's own token: issues filed with it are filed by [`USER`].
pub const USER_TOKEN: &str = "ghp_demo_user_token";
/// The key the model simulator accepts.
pub const MODEL_KEY: &str = "sk-demo-model-key";
/// The label that starts a task.
pub const LABEL: &str = "backporcher";

/// A sample issue and what the scripted agent does for it.
pub struct Sample {
    /// Issue title.
    pub title: &'static str,
    /// Issue body; its bracketed tag selects the agent's script.
    pub body: &'static str,
    /// The file the agent writes.
    pub path: &'static str,
    /// What it writes.
    pub content: &'static str,
    /// What the agent writes first when CI fails on it (fixed from the failed job's log).
    pub first_try: Option<&'static str>,
}

/// The health-check sample's script fails CI while it says this.
const CI_MARKER: &str = "TODO";
/// The failed CI job's log for it; the agent's fix is selected by its text.
const CI_LOG: &str = "lint: scripts/health.sh:2: the script still says TODO instead of printing ok\nlint: 1 problem\n";
/// Text only the held sample's change contains: its review is left to a person.
const HOLD_MARKER: &str = "Permission is hereby granted, free of charge";

/// Sample issues, in the order they are filed.
pub const SAMPLES: &[Sample] = &[
    Sample {
        title: "Add a CONTRIBUTING guide",
        body: "We need a short CONTRIBUTING.md. [demo-1]",
        path: "/workspace/CONTRIBUTING.md",
        content: "# Contributing\n\nOpen an issue, label it `backporcher`.\n",
        first_try: None,
    },
    Sample {
        title: "Add a health check script",
        body: "Add scripts/health.sh printing ok. CI lints it. [demo-2]",
        path: "/workspace/scripts/health.sh",
        content: "#!/bin/sh\necho ok\n",
        first_try: Some("#!/bin/sh\n# TODO print ok\n"),
    },
    Sample {
        title: "Add an MIT LICENSE",
        body: "The project needs a LICENSE file (MIT). A maintainer signs off on licences. [demo-3]",
        path: "/workspace/LICENSE",
        content: "MIT License\n\nCopyright (c) the widgets authors\n\nPermission is hereby granted, free of charge, to any person obtaining a copy of this software.\n",
        first_try: None,
    },
    Sample {
        title: "Document the release steps",
        body: "Write docs/release.md. [demo-4]",
        path: "/workspace/docs/release.md",
        content: "# Releasing\n\n1. Tag.\n2. Push.\n",
        first_try: None,
    },
];

/// Creates the sample repository (public, CI green except the health-check rule) on `gh`, and
/// accepts [`USER_TOKEN`] as [`USER`]'s.
pub fn sample_repo(gh: &GitHubSim) -> anyhow::Result<()> {
    gh.create_repo(
        REPO,
        "main",
        &[("README.md", "# widgets\n\nA demo repository.\n")],
    )?;
    configure(gh);
    Ok(())
}

/// What the simulator needs besides the repository (also after its state is loaded again).
pub fn configure(gh: &GitHubSim) {
    gh.set_public(REPO);
    gh.set_default_ci("success");
    gh.add_user_token(USER_TOKEN, USER);
    gh.set_ci_rule(Arc::new(|git_dir, sha| {
        let out = xcmd::Cmd::new("git", git_dir)
            .args(["show", &format!("{sha}:scripts/health.sh")])
            .to_std()
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        (out.status.success() && text.contains(CI_MARKER)).then(|| CI_LOG.to_owned())
    }));
}

/// Files the sample issues, labelled as a person would (the webhook fires if one is set), the
/// first at once and each next one `interval` later.
pub async fn file_samples(gh: &GitHubSim, interval: Duration) -> Vec<u64> {
    let mut numbers = Vec::new();
    for (i, s) in SAMPLES.iter().enumerate() {
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        numbers.push(gh.open_issue(REPO, s.title, s.body, USER, &[LABEL]).await);
    }
    numbers
}

/// Scripts `model` with every answer the demo needs.
pub fn scripts(model: &ModelSim) {
    let says = |selector: &str, text: &str| Script::says(selector, &vec![text; 100]);
    model.add_script(says(
        "Classify this issue",
        "{\"model\": \"sonnet\", \"complexity\": \"simple\", \"bug\": false}",
    ));
    model.add_script(says("Triage these issues", "[]"));
    // The held sample's diff: the reviewer gives no verdict, so a person must approve.
    model.add_script(says(
        HOLD_MARKER,
        "Choosing a licence is the maintainers' decision, not a reviewer's: I leave this one to a person.",
    ));
    model.add_script(says(
        "review this pull request",
        "The change does what the issue asks.\nVERDICT: APPROVE",
    ));
    model.add_script(says(
        "How the attempt ended",
        "Cause: unknown in the demo.\nNext: try again.",
    ));
    for (i, s) in SAMPLES.iter().enumerate() {
        let tag = format!("[demo-{}]", i + 1);
        model.add_script(match s.first_try {
            Some(first) => {
                Script::writes_then_fixes(&tag, s.path, first, "still says TODO", s.content)
            }
            None => Script::writes(&tag, s.path, s.content),
        });
    }
    model.set_fallback_agent("You are working non-interactively");
}

/// Files an issue labelled [`LABEL`] on the demo repository of the simulator at `sim_url`, as
/// [`USER`] (through GitHub's REST call, as `curl` would); returns its number and web page.
pub async fn file_issue(sim_url: &str, title: &str, body: &str) -> anyhow::Result<(u64, String)> {
    anyhow::ensure!(
        !title.trim().is_empty(),
        "the issue needs a title: file-issue \"<title>\" \"<body>\""
    );
    let url = format!("{}/repos/{REPO}/issues", sim_url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .header("authorization", format!("token {USER_TOKEN}"))
        .json(&serde_json::json!({"title": title, "body": body, "labels": [LABEL]}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the demo's GitHub simulator at {sim_url} ({e}); is backporcher-up running? (--sim-url names another address)"
            )
        })?;
    let status = response.status();
    let v: serde_json::Value = response.json().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "the simulator refused the issue ({status}): {}",
        v["message"].as_str().unwrap_or("no message")
    );
    let number = v["number"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("the simulator's answer has no issue number: {v}"))?;
    Ok((
        number,
        v["html_url"].as_str().unwrap_or_default().to_owned(),
    ))
}
