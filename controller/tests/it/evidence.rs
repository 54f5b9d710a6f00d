//! Evidence records at the pipeline: a pushed attempt gets a signed record that the PR names
//! and the reviewer reads; a task whose record is missing, changed or re-signed is never
//! approved (the review stage does not ask the reviewer and a person must look).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use controller::forge::{Forge, labels};
use controller::pipeline::review::ReviewError;
use controller::pipeline::{Pipeline, ReviewInput, Reviewer, Verdict};
use controller::store::Status;

use crate::forge::{Env, REPO, drive, env, full_auto, pipeline, task_at_pushing};

/// Approves everything, and keeps what it was shown.
#[derive(Default, Clone)]
struct Watching(Arc<Mutex<Vec<ReviewInput>>>);

#[async_trait]
impl Reviewer for Watching {
    async fn review(&self, input: &ReviewInput) -> Result<Verdict, ReviewError> {
        self.0.lock().unwrap().push(input.clone());
        Ok(Verdict {
            approve: true,
            reasons: "fine".into(),
        })
    }
}

fn watched(env: &Env) -> (Pipeline, Watching) {
    let w = Watching::default();
    let mut p = pipeline(env, vec![]);
    p.reviewer = Arc::new(w.clone());
    (p, w)
}

#[tokio::test]
async fn a_pushed_attempt_has_a_signed_record_the_pr_names_and_the_reviewer_reads() {
    let env = env().await;
    full_auto(&env).await;
    let n = env
        .sim
        .create_issue(REPO, "Add two", "add fn two", "alice", &[labels::TRIGGER])
        as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() -> u32 { 2 }\n")]).await;
    let (p, seen) = watched(&env);
    let t = drive(&env, &p, task.id, Status::PrOpen).await;
    let stored = env
        .store
        .evidence(t.id, t.attempt)
        .await
        .unwrap()
        .expect("a record for the pushed attempt");
    let signer = controller::evidence::Signer::load(&env.store)
        .await
        .unwrap();
    let head = t.head_sha.clone().unwrap();
    let record = controller::evidence::valid(&signer, &t, &head, &stored).expect("valid");
    assert_eq!(record["schema"], "backporcher.evidence/1");
    assert_eq!(record["repo"], REPO);
    assert!(stored.announced, "the PR names it");
    let pr = env.forge.pull(REPO, t.pr_number.unwrap()).await.unwrap();
    assert!(pr.body.contains("### Evidence (attempt 1"), "{}", pr.body);
    assert!(
        pr.body
            .contains(&format!("backporcher evidence verify {}", t.id)),
        "{}",
        pr.body
    );
    let ledger = record["model_calls"]["ledger"].as_array().unwrap().len();
    assert_eq!(ledger, 0, "no model call yet: {record}");

    drive(&env, &p, task.id, Status::CiWait).await;
    let inputs = seen.0.lock().unwrap().clone();
    assert_eq!(inputs.len(), 1);
    let ev = inputs[0]
        .evidence
        .as_ref()
        .expect("the reviewer gets the record");
    assert!(ev.figures.contains("Verify after"), "{}", ev.figures);
    let t = env.store.task(task.id).await.unwrap();
    assert_eq!(t.review.unwrap().0["approve"], true);
}

/// Pushes a task to `pr_open`, lets `spoil` change its stored record, reviews it: the
/// reviewer reads the diff without a record, its approval does not count, and the review needs a
/// person, saying why.
async fn refused_review(env: &Env, n: i64, spoil: &'static str) -> String {
    let task = task_at_pushing(env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let (p, seen) = watched(env);
    drive(env, &p, task.id, Status::PrOpen).await;
    let spoiled = sqlx::query(spoil)
        .bind(task.id)
        .execute(env.store.pool())
        .await
        .unwrap();
    assert_eq!(spoiled.rows_affected(), 1, "{spoil}");
    let t = drive(env, &p, task.id, Status::CiWait).await;
    let inputs = seen.0.lock().unwrap().clone();
    assert!(!inputs.is_empty(), "the reviewer read the diff");
    assert!(
        inputs.iter().all(|i| i.evidence.is_none()),
        "the reviewer was shown an invalid record"
    );
    let review = t.review.unwrap().0;
    assert_eq!(review["approve"], false, "{review}");
    let why = review["human_required"].as_str().unwrap().to_owned();
    assert!(why.contains("no valid evidence record"), "{why}");
    let events = env.store.timeline(task.id).await.unwrap();
    let e = events
        .iter()
        .rfind(|e| e.reason == "review_needs_human")
        .expect("a timeline entry says a person must look");
    assert_eq!(e.data.as_ref().unwrap().0["no_evidence"], true);
    why
}

#[tokio::test]
async fn a_task_without_a_valid_record_is_never_approved() {
    let env = env().await;
    full_auto(&env).await;
    let issue = |t: &str| {
        env.sim
            .create_issue(REPO, t, "add fn two", "alice", &[labels::TRIGGER]) as i64
    };

    let why = refused_review(
        &env,
        issue("none"),
        "DELETE FROM evidence_records WHERE task_id = $1",
    )
    .await;
    assert!(why.contains("has no evidence record"), "{why}");

    // One byte of one field changed.
    let why = refused_review(
        &env,
        issue("changed"),
        "UPDATE evidence_records SET record = replace(record, '\"runner_reported\":false', '\"runner_reported\":true') WHERE task_id = $1 AND record LIKE '%\"runner_reported\":false%'",
    )
    .await;
    assert!(why.contains("signature does not match"), "{why}");

    // The record intact, the signature substituted.
    let why = refused_review(
        &env,
        issue("resigned"),
        "UPDATE evidence_records SET signature = decode(repeat('00', 64), 'hex') WHERE task_id = $1",
    )
    .await;
    assert!(why.contains("signature does not match"), "{why}");
}
