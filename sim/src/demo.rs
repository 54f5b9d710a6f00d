//! The offline demo's world: a sample repository with labelled sample issues on the GitHub
//! simulator, and the scripted model answers that take each issue to a merged pull request (an
//! agent that writes the file the issue asks for, a triage, an approving review). Shared by
//! `backporcher-up` and the `backporcher-sims` service of the compose file's `sims` profile.

use crate::github::GitHubSim;
use crate::model::{ModelSim, Script};

/// The sample repository.
pub const REPO: &str = "demo/widgets";
/// The GitHub login that files the sample issues (the one allowed to trigger work).
pub const USER: &str = "demo";
/// The token the GitHub simulator accepts.
pub const GITHUB_TOKEN: &str = "ghs_demo_token";
/// The key the model simulator accepts.
pub const MODEL_KEY: &str = "sk-demo-model-key";

/// Sample issues: (title, body, file the agent writes, content). The bracketed tag in each body
/// selects the agent's script.
pub const SAMPLES: &[(&str, &str, &str, &str)] = &[
    (
        "Add a CONTRIBUTING guide",
        "We need a short CONTRIBUTING.md. [demo-1]",
        "/workspace/CONTRIBUTING.md",
        "# Contributing\n\nOpen an issue, label it `backporcher`.\n",
    ),
    (
        "Document the release steps",
        "Write docs/release.md. [demo-2]",
        "/workspace/docs/release.md",
        "# Releasing\n\n1. Tag.\n2. Push.\n",
    ),
    (
        "Add a health check script",
        "Add scripts/health.sh printing ok. [demo-3]",
        "/workspace/scripts/health.sh",
        "#!/bin/sh\necho ok\n",
    ),
];

/// Creates the sample repository (public, CI green) on `gh`.
pub fn sample_repo(gh: &GitHubSim) -> anyhow::Result<()> {
    gh.create_repo(
        REPO,
        "main",
        &[("README.md", "# widgets\n\nA demo repository.\n")],
    )?;
    gh.set_public(REPO);
    gh.set_default_ci("success");
    Ok(())
}

/// Files the sample issues, labelled as a person would (the webhook fires if one is set).
pub async fn file_samples(gh: &GitHubSim) -> Vec<u64> {
    let mut numbers = Vec::new();
    for (title, body, _, _) in SAMPLES {
        numbers.push(
            gh.open_issue(REPO, title, body, USER, &["backporcher"])
                .await,
        );
    }
    numbers
}

/// Scripts `model` with every answer the demo needs.
pub fn scripts(model: &ModelSim) {
    let says = |selector: &str, text: &str| Script::says(selector, &vec![text; 100]);
    model.add_script(says(
        "Classify this issue",
        "{\"model\": \"sonnet\", \"complexity\": \"simple\"}",
    ));
    model.add_script(says("Triage these issues", "[]"));
    model.add_script(says(
        "review this pull request",
        "The change does what the issue asks.\nVERDICT: APPROVE",
    ));
    model.add_script(says(
        "How the attempt ended",
        "Cause: unknown in the demo.\nNext: try again.",
    ));
    for (i, (_, _, path, content)) in SAMPLES.iter().enumerate() {
        model.add_script(Script::writes(&format!("[demo-{}]", i + 1), path, content));
    }
}
